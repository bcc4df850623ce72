import { createRequire } from 'node:module';
import { Ajv, type Options } from 'ajv';
import type { FormatsPlugin } from 'ajv-formats';
import type { FastifyInstance } from 'fastify';

// ajv-formats is CommonJS whose typings describe an ES default export; load the callable directly.
const addFormats = createRequire(import.meta.url)('ajv-formats') as FormatsPlugin;

/**
 * Bodies are validated exactly as sent: `{"password": 12345678}` is a type error, not a string.
 * Query strings and path params arrive as text, so they are coerced (`?limit=20` is a number).
 * Unknown properties are dropped rather than rejected, so clients can send extra fields.
 */
export function installValidation(app: FastifyInstance) {
  const common: Options = { useDefaults: true, removeAdditional: true, allErrors: true, strict: false };
  const bodies = addFormats(new Ajv({ ...common, coerceTypes: false }));
  const text = addFormats(new Ajv({ ...common, coerceTypes: 'array' }));
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? bodies : text).compile(schema));
}
