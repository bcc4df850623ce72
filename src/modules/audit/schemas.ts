import { type TSchema, Type } from 'typebox';
import { PageQuery, Uuid } from '../../platform/http/schemas.js';
import { SECURITY_ACTIONS } from './read.js';

/** The request and answer shapes of the audit routes (validation and the OpenAPI document). */

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);

export const AuditEventSchema = Type.Object(
  {
    id: Type.Integer({ description: 'Increases with insertion; pages are ordered by (at, id)' }),
    at: Type.String({ format: 'date-time' }),
    actor_id: Nullable(Uuid),
    action: Type.String({
      description: 'What happened, e.g. auth.login, service_key.revoke, generation.view',
    }),
    resource_type: Nullable(Type.String()),
    resource_id: Nullable(Type.String()),
    decision: Nullable(Type.Union([Type.Literal('allow'), Type.Literal('deny')])),
    reason: Nullable(Type.String()),
    request_id: Nullable(Type.String()),
    ip: Nullable(Type.String()),
    details: Nullable(Type.Record(Type.String(), Type.Unknown())),
  },
  { $id: 'AuditEvent' },
);

export const SecurityEventSchema = Type.Object(
  {
    id: Type.Integer(),
    at: Type.String({ format: 'date-time' }),
    action: Type.String({ enum: [...SECURITY_ACTIONS] }),
    decision: Nullable(Type.Union([Type.Literal('allow'), Type.Literal('deny')])),
    reason: Nullable(Type.String()),
    resource_type: Nullable(Type.String()),
    resource_id: Nullable(Type.String()),
    ip: Nullable(Type.String()),
    request_id: Nullable(Type.String()),
    details: Nullable(Type.Record(Type.String(), Type.Unknown())),
  },
  { $id: 'SecurityEvent' },
);

/** The named schemas the document references (`$ref: AuditEvent`, `$ref: SecurityEvent`). */
export const auditSchemas = [AuditEventSchema, SecurityEventSchema];

/** No control characters: PostgreSQL refuses NUL in text, and no recorded value has one. */
const PRINTABLE = '^[^\\u0000-\\u001f]+$';

export const AuditQuery = Type.Object({
  actor: Type.Optional(Uuid),
  action: Type.Optional(Type.String({ minLength: 1, maxLength: 100, pattern: PRINTABLE })),
  resource_type: Type.Optional(Type.String({ minLength: 1, maxLength: 50, pattern: '^[a-z_]+$' })),
  resource_id: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: PRINTABLE })),
  decision: Type.Optional(Type.Union([Type.Literal('allow'), Type.Literal('deny')])),
  from: Type.Optional(
    Type.String({ format: 'date-time', description: 'ISO 8601 with a zone; events at or after it' }),
  ),
  to: Type.Optional(
    Type.String({ format: 'date-time', description: 'ISO 8601 with a zone; events before it' }),
  ),
  ...PageQuery,
});
