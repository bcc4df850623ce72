import { type TSchema, Type } from 'typebox';

/** Shared pieces of the OpenAPI contract, so every route speaks the same shapes. */
export const ErrorEnvelope = Type.Object(
  {
    error: Type.Object({
      code: Type.String(),
      message: Type.String(),
      request_id: Type.String(),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { $id: 'ErrorEnvelope', description: 'Every error has this shape' },
);

/** Exactly the 8-4-4-4-12 hex form: ajv's `uuid` format also admits `urn:uuid:…`, which the database does not. */
export const Uuid = Type.String({
  pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$',
  description: 'uuid',
});
export const IdParams = Type.Object({ id: Uuid });

export const PageQuery = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20 })),
  cursor: Type.Optional(Type.String({ maxLength: 512 })),
};

export const page = <T extends TSchema>(item: T) =>
  Type.Object({ items: Type.Array(item), next_cursor: Type.Union([Type.String(), Type.Null()]) });

const ERROR_DESCRIPTIONS: Record<number, string> = {
  400: 'The request is not valid',
  401: 'Missing, invalid or revoked credentials',
  402: 'Not enough credits',
  403: 'Authenticated but not allowed',
  404: 'Not found, or not visible to the caller',
  409: 'Conflicts with existing state',
  410: 'Expired',
  413: 'Body too large',
  415: 'Unsupported content type',
  422: 'Cannot be processed',
  429: 'Rate limited; see Retry-After',
  503: 'Temporarily unavailable; see Retry-After',
};

/** Response schemas for the error statuses a route can answer. */
export function errors(...statuses: number[]): Record<number, TSchema> {
  const out: Record<number, TSchema> = {};
  for (const s of [...statuses, 503]) {
    out[s] = Type.Ref('ErrorEnvelope', { description: ERROR_DESCRIPTIONS[s] ?? 'Error' });
  }
  return out;
}
