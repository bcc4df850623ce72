import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { badRequest } from '../../platform/http/errors.js';
import { errors } from '../../platform/http/schemas.js';
import { BatchAnswer, BatchBody, MAX_REQUESTS } from './schemas.js';

/** A batch answers within this long: a sub-request still running then answers 504 in its slot. */
const DEADLINE_MS = 10_000;
/** Routes that stream (event streams) never end on their own: not for a batch. */
const STREAMING = /^\/api\/v1\/generations\/[^/?#]+\/events(?:[/?#]|$)/;
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

/** The URL's path with percent-escapes undone, so `%65vents` cannot slip past a check. */
function decodedPath(url: string): string {
  const end = url.search(/[?#]/);
  const path = end < 0 ? url : url.slice(0, end);
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

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
        body: BatchBody,
        response: {
          200: BatchAnswer,
          ...errors(400, 401, 413),
        },
      },
    },
    async (request) => {
      const parsed = request.body.requests.map(({ url }, i) => {
        const path = decodedPath(url);
        if (/^\/api\/v1\/batch(?:[/?#]|$)/.test(path)) {
          throw badRequest('A batch cannot contain a batch', [
            { field: `body.requests.${i}.url`, message: 'is the batch route' },
          ]);
        }
        if (STREAMING.test(path)) {
          throw badRequest('A batch cannot contain an event stream', [
            { field: `body.requests.${i}.url`, message: 'streams; open it on its own' },
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
          let timer: NodeJS.Timeout | undefined;
          const deadline = new Promise<null>((resolve) => {
            timer = setTimeout(() => resolve(null), DEADLINE_MS);
          });
          const res = await Promise.race([
            opts.root.inject({
              method: 'GET',
              url,
              headers: { ...headers, 'x-request-id': `${request.id}.b` },
              remoteAddress: request.ip,
            }),
            deadline,
          ]).finally(() => clearTimeout(timer));
          if (res === null) {
            return {
              status: 504,
              headers: { 'content-type': 'application/json; charset=utf-8' },
              body: {
                error: {
                  code: 'deadline_exceeded',
                  message: `Not answered within the batch's ${DEADLINE_MS / 1000} s`,
                  request_id: request.id,
                },
              },
            };
          }
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
