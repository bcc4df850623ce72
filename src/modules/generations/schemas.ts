import { Type } from 'typebox';
import { Uuid } from '../../platform/http/schemas.js';

/** The request and answer shapes of the generation routes (validation and the OpenAPI document). */

export const STATUSES = ['pending', 'processing', 'completed', 'failed', 'cancelled'] as const;

export const Generation = Type.Object({
  id: Uuid,
  user_id: Uuid,
  project_id: Type.Union([Uuid, Type.Null()]),
  model_id: Type.String(),
  prompt: Type.String(),
  negative_prompt: Type.Union([Type.String(), Type.Null()]),
  parameters: Type.Record(Type.String(), Type.Unknown()),
  status: Type.String({ enum: [...STATUSES] }),
  progress: Type.Integer({ minimum: 0, maximum: 100 }),
  error: Type.Union([Type.String(), Type.Null()]),
  cost_credits: Type.Integer(),
  is_favorite: Type.Boolean(),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  started_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  completed_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

export const CreateBody = Type.Object(
  {
    model_id: Type.String({ minLength: 1, maxLength: 100 }),
    prompt: Type.String({ minLength: 1, maxLength: 4000, pattern: '\\S' }),
    negative_prompt: Type.Optional(Type.Union([Type.String({ maxLength: 4000 }), Type.Null()])),
    project_id: Type.Optional(Type.Union([Uuid, Type.Null()])),
    parameters: Type.Optional(
      Type.Object(
        {},
        {
          additionalProperties: true,
          description: 'width, height (multiples of 8 within the model limits), seed, steps, guidance_scale',
        },
      ),
    ),
  },
  { additionalProperties: false },
);

/**
 * Documentation only: multipart bodies are read and checked in the handler (the file is streamed,
 * the fields are validated against CreateBody exactly as JSON is, see multipart.ts), so the schema
 * Fastify applies to this content type accepts anything.
 */
export const MultipartBody = Type.Unsafe<unknown>({
  description:
    'Multipart form: the fields of the JSON body (parameters as JSON text) plus an optional ' +
    '`reference_image` file (image/*, at most 20 MB).',
});

export const GenerationPermissions = Type.Object({
  generation_id: Uuid,
  user_id: Uuid,
  can_view: Type.Boolean(),
  can_download: Type.Boolean(),
  can_edit: Type.Boolean(),
  can_delete: Type.Boolean(),
  access_method: Type.String(),
});

export const MediaUrl = Type.Object({
  media_id: Uuid,
  url: Type.String({ description: 'Absolute path: /api/v1/media/<token>' }),
  mime: Type.String(),
  width: Type.Integer(),
  height: Type.Integer(),
  bytes: Type.Integer(),
  expires_at: Type.String({ format: 'date-time' }),
});

export const tags = ['generations'];
export const read = { scope: 'generations:read' as const };
export const write = { scope: 'generations:write' as const };
