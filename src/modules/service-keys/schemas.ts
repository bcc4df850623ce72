import { type Static, Type } from 'typebox';
import { SCOPES, type Scope as ScopeName } from '../../platform/http/principal.js';

/** The request and answer shapes of the service-key routes (validation, the OpenAPI document and the types). */

/**
 * What each scope lets a key do; the README's table says the same. A key acts as its user, so a
 * scope never grants more than the user has. Routes no scope opens (managing keys, sessions,
 * password, profile) are for a signed-in user only.
 */
export const SCOPE_MEANINGS: Record<ScopeName, string> = {
  'projects:read':
    'read projects and teams: GET /projects, /projects/{id}, /teams, /teams/{id}, /teams/{id}/members',
  'projects:write': 'create, change and delete projects and teams, and manage team members',
  'generations:read':
    'read generations: GET /generations, /generations/stats, /generations/{id}, its events (SSE) and /authorize',
  'generations:write': 'create (spends credits), cancel, favourite and delete generations',
  'media:read':
    'signed media URLs: GET /generations/{id}/media-urls; needed to fetch a generation’s images with a key (the URLs themselves need no bearer)',
  'authz:check':
    'the authorization API: /authz/check, /check-bulk, /lookup, /explain; about another subject only with an administrator’s key',
  admin:
    'the operator routes under /admin (cache, flags, credit grants), only for a key whose user is an administrator',
};

const SCOPES_DESCRIPTION = [
  'What the key may do, one or more of:',
  ...SCOPES.map((scope) => `- \`${scope}\`: ${SCOPE_MEANINGS[scope]}`),
  'Any live key, whatever its scopes, may call GET /auth/me, GET /credits/balance, GET /credits/transactions and POST /batch (each sub-request needs its own scope).',
].join('\n');

export const Scope = Type.Unsafe<ScopeName>({ type: 'string', enum: [...SCOPES] });

const serviceKeyFields = {
  id: Type.String({ format: 'uuid' }),
  name: Type.String(),
  prefix: Type.String({ description: 'The first characters of the key, to tell keys apart' }),
  scopes: Type.Array(Scope),
  expires_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  revoked_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  last_used_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
};
export const ServiceKey = Type.Object(serviceKeyFields, { $id: 'ServiceKey' });
export type ServiceKey = Static<typeof ServiceKey>;
export const CreatedServiceKey = Type.Object({
  ...serviceKeyFields,
  key: Type.String({ description: 'The secret. Shown only in this answer; store it now.' }),
});

export const CreateBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 100, pattern: '\\S' }),
    scopes: Type.Array(Scope, {
      minItems: 1,
      maxItems: SCOPES.length,
      uniqueItems: true,
      description: SCOPES_DESCRIPTION,
    }),
    expires_at: Type.Optional(Type.String({ format: 'date-time' })),
  },
  { additionalProperties: false },
);

/** The named schemas the document references (`$ref: ServiceKey`). */
export const serviceKeySchemas = [ServiceKey];
