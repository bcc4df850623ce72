import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { badRequest } from '../../platform/http/errors.js';
import { errors } from '../../platform/http/schemas.js';

const MAX_REQUESTS = 20;
/** Headers of the caller that sub-requests carry: its credentials and its consistency token. */
const FORWARDED = ['authorization', 'velro-consistency-token', 'accept-language'] as const;
/** Headers of each sub-response worth returning (no hop-by-hop, no security boilerplate). */
const RETURNED = [
  'content-type',
  'etag',
  'x-cache',
  'x-route-class',
  'velro-consistency-token',
  'retry-after',
];

const SubRequest = Type.Object(
  {
    method: Type.Literal('GET', { description: 'Only GET: a batch reads, it never writes' }),
    url: Type.String({ minLength: 1, maxLength: 2048, pattern: '^/api/v1/' }),
  },
  { additionalProperties: false },
);

/**
 * `POST /batch`: the seeds' client-side batching, done on the server. Each sub-request goes
 * through the whole app again (authentication, authorization, validation, rate limits) exactly as
 * if it had been sent alone, with the caller's own credentials, so a batch can never see what its
 * parts could not. Answers come back in order, each with its own status.
 */
export async function batchRoutes(fastify: FastifyInstance, opts: { root: FastifyInstance }) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  app.post(
    '/batch',
    {
      config: { scope: 'any', routeClass: 'heavy' },
      schema: {
        operationId: 'batch',
        summary: `Up to ${MAX_REQUESTS} GET requests in one, answered in order`,
        tags: ['batch'],
        security: [{ bearerAuth: [] }],
        body: Type.Object(
          { requests: Type.Array(SubRequest, { minItems: 1, maxItems: MAX_REQUESTS }) },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({
            responses: Type.Array(
              Type.Object({
                status: Type.Integer(),
                headers: Type.Record(Type.String(), Type.String()),
                body: Type.Unknown(),
              }),
            ),
          }),
          ...errors(400, 401, 413),
        },
      },
    },
    async (request) => {
      const parsed = request.body.requests.map(({ url }, i) => {
        if (/^\/api\/v1\/batch(?:[/?#]|$)/.test(url)) {
          throw badRequest('A batch cannot contain a batch', [
            { field: `body.requests.${i}.url`, message: 'is the batch route' },
          ]);
        }
        return url;
      });
      const headers: Record<string, string> = {};
      for (const name of FORWARDED) {
        const value = request.headers[name];
        if (typeof value === 'string') headers[name] = value;
      }
      const responses = await Promise.all(
        parsed.map(async (url) => {
          const res = await opts.root.inject({
            method: 'GET',
            url,
            headers: { ...headers, 'x-request-id': `${request.id}.b` },
            remoteAddress: request.ip,
          });
          const picked: Record<string, string> = {};
          for (const name of RETURNED) {
            const value = res.headers[name];
            if (typeof value === 'string') picked[name] = value;
          }
          const type = String(res.headers['content-type'] ?? '');
          let body: unknown = res.body;
          if (type.includes('json')) {
            try {
              body = res.json();
            } catch {
              body = res.body;
            }
          }
          return { status: res.statusCode, headers: picked, body };
        }),
      );
      return { responses };
    },
  );
}
