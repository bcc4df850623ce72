import type { MultipartFile } from '@fastify/multipart';
import type { FastifyRequest } from 'fastify';
import sharp from 'sharp';
import { Value } from 'typebox/value';
import { AppError, badRequest } from '../../platform/http/errors.js';
import type { CreateGenerationInput } from './create.js';
import { CreateBody } from './schemas.js';

/**
 * A multipart create: its fields and its optional reference image, checked against the same rules
 * as the JSON body (unknown fields dropped, the same 400 answers), the image against its bytes.
 */
export async function readMultipartCreate(
  request: FastifyRequest,
): Promise<Omit<CreateGenerationInput, 'idempotency_key'>> {
  const fields: Record<string, unknown> = {};
  let reference: CreateGenerationInput['reference_image'];
  for await (const part of request.parts()) {
    if (part.type === 'file') {
      if (part.fieldname !== 'reference_image') {
        throw badRequest('Unexpected file', [
          { field: `body.${part.fieldname}`, message: 'only reference_image takes a file' },
        ]);
      }
      reference = await readReferenceImage(part);
    } else if (part.fieldname in CreateBody.properties) {
      // Unknown fields are dropped, as they are from JSON bodies.
      fields[part.fieldname] = part.value;
    }
  }
  return { ...checkFields(fields), ...(reference ? { reference_image: reference } : {}) };
}

/** The declared type is checked before the file is read; then the bytes must really decode as an image. */
async function readReferenceImage(
  part: MultipartFile,
): Promise<NonNullable<CreateGenerationInput['reference_image']>> {
  if (!part.mimetype.startsWith('image/')) {
    throw new AppError(415, 'unsupported_media_type', 'reference_image must be an image (image/*)');
  }
  const data = await part.toBuffer();
  // The declared type is the client's word; the bytes must really decode as an image.
  const decodable = await sharp(data, { failOn: 'error' })
    .metadata()
    .then((m) => Boolean(m.width && m.height))
    .catch(() => false);
  if (!decodable)
    throw new AppError(415, 'unsupported_media_type', 'reference_image is not a readable image');
  return { mime: part.mimetype, data };
}

/** The text fields, validated against CreateBody with the field names ajv gives a JSON body. */
function checkFields(fields: Record<string, unknown>): Omit<CreateGenerationInput, 'idempotency_key'> {
  if (typeof fields.parameters === 'string') {
    try {
      fields.parameters = JSON.parse(fields.parameters);
    } catch {
      throw badRequest('parameters is not JSON', [
        { field: 'body.parameters', message: 'must be a JSON object' },
      ]);
    }
  }
  if (fields.project_id === '') delete fields.project_id;
  const issues = [...Value.Errors(CreateBody, fields)].map((e) => {
    const path = ['body', ...e.instancePath.split('/').filter(Boolean)];
    // A missing property is named by the error's parameters, not its path (as ajv does for JSON).
    const missing = (e.params as { requiredProperties?: string[] }).requiredProperties?.[0];
    if (missing) path.push(missing);
    return { field: path.join('.'), message: e.message };
  });
  if (issues.length > 0) throw badRequest('The request is not valid', issues);
  return fields as unknown as Omit<CreateGenerationInput, 'idempotency_key'>;
}
