import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { Type } from 'typebox';
import { accessContext, sendRevision } from '../../platform/http/context.js';
import { badRequest, tooManyRequests } from '../../platform/http/errors.js';
import { errors, IdParams, PageQuery, page, Uuid } from '../../platform/http/schemas.js';
import { principalOf } from '../auth/authenticate.js';
import type { CreateGenerationInput } from './create.js';
import { readMultipartCreate } from './multipart.js';
import {
  CreateBody,
  Generation,
  GenerationPermissions,
  MediaUrl,
  MultipartBody,
  read,
  STATUSES,
  tags,
  write,
} from './schemas.js';
import type { GenerationsService } from './service.js';

export interface GenerationCrudOptions {
  service: GenerationsService;
  createsPerMinute: number;
}

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** GET /generations/:id/authorize's body, with its X-Cache header (no closure per request). */
function permissionsAnswer(
  reply: FastifyReply,
  { value, cache }: Awaited<ReturnType<GenerationsService['permissions']>>,
) {
  reply.header('x-cache', cache);
  return value;
}

/**
 * Create (JSON or multipart), list, stats, get, delete, cancel, favourite, media URLs and the
 * permissions answer. Registered on the generation routes' own instance (not as a plugin of its
 * own), so it shares that instance's multipart parser.
 */
export function registerGenerationCrudRoutes(fastify: FastifyInstance, opts: GenerationCrudOptions) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service } = opts;

  const createsPerUser = app.createRateLimit({
    max: opts.createsPerMinute,
    timeWindow: 60_000,
    keyGenerator: (req) => `generation-create:${req.principal?.userId ?? req.ip}`,
  });

  app.post(
    '/generations',
    {
      config: { ...write, routeClass: 'heavy' },
      schema: {
        operationId: 'createGeneration',
        summary: 'Start a generation: charges its cost and queues it (202). Honours Idempotency-Key.',
        tags,
        headers: Type.Object({ 'idempotency-key': Type.Optional(Type.String({ maxLength: 255 })) }),
        body: {
          content: {
            'application/json': { schema: CreateBody },
            'multipart/form-data': { schema: MultipartBody },
          },
        },
        response: { 202: Generation, ...errors(400, 401, 402, 403, 404, 413, 415, 422, 429) },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const limit = await createsPerUser(request);
      if (!limit.isAllowed && limit.isExceeded) {
        throw tooManyRequests(
          Math.max(1, limit.ttlInSeconds),
          'Too many generations started; try again shortly',
        );
      }
      const key = request.headers['idempotency-key'];
      if (key !== undefined && !IDEMPOTENCY_KEY.test(key)) {
        throw badRequest('Idempotency-Key is not valid', [
          { field: 'headers.idempotency-key', message: 'must be 1–255 visible ASCII characters' },
        ]);
      }
      const input = request.isMultipart()
        ? await readMultipartCreate(request)
        : (request.body as Omit<CreateGenerationInput, 'idempotency_key'>);
      const { generation, replayed } = await service.create(
        principal.userId,
        { ...input, ...(key ? { idempotency_key: key } : {}) },
        accessContext(request),
      );
      if (replayed) reply.header('idempotent-replayed', 'true');
      reply.header('location', `/api/v1/generations/${generation.id}`);
      return reply.code(202).send(generation);
    },
  );

  app.get(
    '/generations',
    {
      config: read,
      schema: {
        operationId: 'listGenerations',
        summary: 'My generations, or all of a project I can view; newest first',
        tags,
        querystring: Type.Object({
          project_id: Type.Optional(Uuid),
          status: Type.Optional(Type.String({ enum: [...STATUSES] })),
          favorite: Type.Optional(Type.Boolean()),
          ...PageQuery,
        }),
        response: { 200: page(Generation), ...errors(400, 401, 403, 404) },
      },
    },
    async (request) =>
      service.list(
        principalOf(request).userId,
        {
          project_id: request.query.project_id,
          status: request.query.status as (typeof STATUSES)[number] | undefined,
          favorite: request.query.favorite,
          limit: request.query.limit ?? 20,
          cursor: request.query.cursor,
        },
        accessContext(request),
      ),
  );

  app.get(
    '/generations/stats',
    {
      config: read,
      schema: {
        operationId: 'generationStats',
        summary: 'Counts by status, favourites and credits spent over my generations',
        tags,
        response: {
          200: Type.Object({
            total: Type.Integer(),
            by_status: Type.Record(Type.String(), Type.Integer()),
            favorites: Type.Integer(),
            credits_spent: Type.Integer(),
          }),
          ...errors(401, 403),
        },
      },
    },
    async (request) => service.stats(principalOf(request).userId, accessContext(request)),
  );

  app.get(
    '/generations/:id',
    {
      config: read,
      schema: {
        operationId: 'getGeneration',
        summary: 'A generation I can view',
        tags,
        params: IdParams,
        response: { 200: Generation, ...errors(401, 403, 404) },
      },
    },
    async (request) => service.get(principalOf(request).userId, request.params.id, accessContext(request)),
  );

  app.delete(
    '/generations/:id',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'deleteGeneration',
        summary: 'Delete a generation (soft) and its media; a running one is cancelled and refunded',
        tags,
        params: IdParams,
        response: { 204: Type.Null(), ...errors(401, 403, 404) },
      },
    },
    async (request, reply) => {
      const done = await service.remove(
        principalOf(request).userId,
        request.params.id,
        accessContext(request),
      );
      await sendRevision(reply, done.revision);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/generations/:id/cancel',
    {
      config: write,
      schema: {
        operationId: 'cancelGeneration',
        summary: 'Stop a pending or running generation; its cost is refunded',
        tags,
        params: IdParams,
        response: { 200: Generation, ...errors(401, 403, 404, 409) },
      },
    },
    async (request) => service.cancel(principalOf(request).userId, request.params.id, accessContext(request)),
  );

  app.post(
    '/generations/:id/favorite',
    {
      config: write,
      schema: {
        operationId: 'favoriteGeneration',
        summary: 'Mark or unmark as favourite; without a body, flips it',
        tags,
        params: IdParams,
        // Only a JSON body is validated; a request without one flips the flag.
        body: {
          content: {
            'application/json': {
              schema: Type.Object(
                { favorite: Type.Optional(Type.Boolean()) },
                { additionalProperties: false },
              ),
            },
          },
        },
        response: { 200: Generation, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) =>
      service.favorite(
        principalOf(request).userId,
        request.params.id,
        (request.body as { favorite?: boolean } | undefined)?.favorite,
        accessContext(request),
      ),
  );

  app.get(
    '/generations/:id/media-urls',
    {
      config: { scope: 'media:read' },
      schema: {
        operationId: 'getMediaUrls',
        summary: 'Signed, expiring URLs for the generation’s images',
        tags: [...tags, 'media'],
        params: IdParams,
        response: { 200: Type.Object({ items: Type.Array(MediaUrl) }), ...errors(401, 403, 404) },
      },
    },
    async (request) =>
      service.mediaUrls(principalOf(request).userId, request.params.id, accessContext(request)),
  );

  app.get(
    '/generations/:id/authorize',
    {
      config: { ...read, routeClass: 'critical_auth', deferSession: true },
      schema: {
        operationId: 'authorizeGeneration',
        summary: 'What I may do with a generation (the seed’s GenerationPermissions)',
        tags: [...tags, 'authorization'],
        params: IdParams,
        response: { 200: GenerationPermissions, ...errors(401, 403, 404) },
      },
    },
    // Not async: a warm answer (facts in L1) goes out synchronously, with no promise.
    (request, reply) => {
      const answer = service.permissions(
        principalOf(request).userId,
        request.params.id,
        accessContext(request),
      );
      if (!(answer instanceof Promise)) return permissionsAnswer(reply, answer);
      return answer.then((settled) => permissionsAnswer(reply, settled));
    },
  );
}
