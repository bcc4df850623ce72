import { createRequire } from 'node:module';
import { Ajv, type Options } from 'ajv';
import type { FormatsPlugin } from 'ajv-formats';
import type { FastifyInstance } from 'fastify';

// ajv-formats is CommonJS whose typings describe an ES default export; load the callable directly.
const addFormats = createRequire(import.meta.url)('ajv-formats') as FormatsPlugin;

/**
 * Bodies are validated exactly as sent: `{"password": 12345678}` is a type error, not a string,
 * and an unknown field is a 400 naming it — never dropped in silence (a top-level `width` on a paid
 * route would otherwise be charged for and ignored). Query strings and path params arrive as text,
 * so they are coerced (`?limit=20` is a number), and unknown query parameters (cache busters) are
 * dropped.
 */
export function installValidation(app: FastifyInstance) {
  const common: Options = { useDefaults: true, allErrors: true, strict: false };
  const bodies = addFormats(new Ajv({ ...common, removeAdditional: false, coerceTypes: false }));
  const text = addFormats(new Ajv({ ...common, removeAdditional: true, coerceTypes: 'array' }));
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? bodies : text).compile(schema));
}
