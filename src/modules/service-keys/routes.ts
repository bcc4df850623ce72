import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { sendRevision } from '../../platform/http/context.js';
import { errors, IdParams, PageQuery, page } from '../../platform/http/schemas.js';
import { userSessionOf } from '../auth/authenticate.js';
import { clientOf } from '../auth/routes.js';
import { CreateBody, CreatedServiceKey } from './schemas.js';
import type { ServiceKeyService } from './service.js';

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
