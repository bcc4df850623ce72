import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { sendRevision } from '../../platform/http/context.js';
import { SCOPES, type Scope as ScopeName } from '../../platform/http/principal.js';
import { errors, IdParams, PageQuery, page } from '../../platform/http/schemas.js';
import { userSessionOf } from '../auth/authenticate.js';
import { clientOf } from '../auth/routes.js';
import type { ServiceKeyService } from './service.js';

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

const Scope = Type.Unsafe<ScopeName>({ type: 'string', enum: [...SCOPES] });

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
const ServiceKey = Type.Object(serviceKeyFields, { $id: 'ServiceKey' });
const CreatedServiceKey = Type.Object({
  ...serviceKeyFields,
  key: Type.String({ description: 'The secret. Shown only in this answer; store it now.' }),
});

const CreateBody = Type.Object(
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

const tags = ['service keys'];

/** Keys are managed from a signed-in session only: a key can never mint or revoke keys. */
export async function serviceKeyRoutes(fastify: FastifyInstance, opts: { service: ServiceKeyService }) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service } = opts;

  app.post(
    '/service-keys',
    {
      schema: {
        operationId: 'createServiceKey',
        summary: 'Create a service key (the secret is returned once)',
        tags,
        body: CreateBody,
        response: { 201: CreatedServiceKey, ...errors(400, 401, 403) },
      },
    },
    async (request, reply) => {
      const key = await service.create(userSessionOf(request).userId, request.body, clientOf(request));
      return reply.code(201).send(key);
    },
  );

  app.get(
    '/service-keys',
    {
      schema: {
        operationId: 'listServiceKeys',
        summary: 'List my service keys, newest first',
        tags,
        querystring: Type.Object(PageQuery),
        response: { 200: page(Type.Ref('ServiceKey')), ...errors(400, 401, 403) },
      },
    },
    async (request) =>
      service.list(userSessionOf(request).userId, {
        limit: request.query.limit ?? 20,
        cursor: request.query.cursor,
      }),
  );

  app.delete(
    '/service-keys/:id',
    {
      config: { consistencyToken: 'returns' },
      schema: {
        operationId: 'revokeServiceKey',
        summary: 'Revoke a service key; it is refused from the next request on',
        tags,
        params: IdParams,
        response: { 204: Type.Null(), ...errors(401, 403, 404) },
      },
    },
    async (request, reply) => {
      await sendRevision(
        reply,
        await service.revoke(userSessionOf(request).userId, request.params.id, clientOf(request)),
      );
      return reply.code(204).send(null);
    },
  );
}

export const serviceKeySchemas = [ServiceKey];
