import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import sharp from 'sharp';
import { Type } from 'typebox';
import { Value } from 'typebox/value';
import type { InvalidationBus } from '../../platform/cache/bus.js';
import { accessContext, sendRevision } from '../../platform/http/context.js';
import { AppError, badRequest, tooManyRequests } from '../../platform/http/errors.js';
import { errors, IdParams, PageQuery, page, Uuid } from '../../platform/http/schemas.js';
import { principalOf } from '../auth/authenticate.js';
import { credentialKeys } from '../auth/credentials.js';
import { factKeys } from '../authz/facts.js';
import type { CreateGenerationInput } from './create.js';
import { type GenerationEvent, type GenerationEventHub, TERMINAL } from './events.js';
import type { GenerationsService } from './service.js';
import { guardStream } from './stream-guard.js';
import type { GenerationView } from './view.js';

const STATUSES = ['pending', 'processing', 'completed', 'failed', 'cancelled'] as const;

export const Generation = Type.Object({
  id: Uuid,
  user_id: Uuid,
  project_id: Type.Union([Uuid, Type.Null()]),
  model_id: Type.String(),
  prompt: Type.String(),
  negative_prompt: Type.Union([Type.String(), Type.Null()]),
  parameters: Type.Record(Type.String(), Type.Unknown()),
  status: Type.String({ enum: [...STATUSES] }),
  progress: Type.Integer({ minimum: 0, maximum: 100 }),
  error: Type.Union([Type.String(), Type.Null()]),
  cost_credits: Type.Integer(),
  is_favorite: Type.Boolean(),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  started_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  completed_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

const CreateBody = Type.Object(
  {
    model_id: Type.String({ minLength: 1, maxLength: 100 }),
    prompt: Type.String({ minLength: 1, maxLength: 4000, pattern: '\\S' }),
    negative_prompt: Type.Optional(Type.Union([Type.String({ maxLength: 4000 }), Type.Null()])),
    project_id: Type.Optional(Type.Union([Uuid, Type.Null()])),
    parameters: Type.Optional(
      Type.Object(
        {},
        {
          additionalProperties: true,
          description: 'width, height (multiples of 8 within the model limits), seed, steps, guidance_scale',
        },
      ),
    ),
  },
  { additionalProperties: false },
);

/**
 * Documentation only: multipart bodies are read and checked in the handler (the file is streamed,
 * the fields are validated against CreateBody exactly as JSON is), so the schema Fastify applies
 * to this content type accepts anything.
 */
const MultipartBody = Type.Unsafe<unknown>({
  description:
    'Multipart form: the fields of the JSON body (parameters as JSON text) plus an optional ' +
    '`reference_image` file (image/*, at most 20 MB).',
});

const GenerationPermissions = Type.Object({
  generation_id: Uuid,
  user_id: Uuid,
  can_view: Type.Boolean(),
  can_download: Type.Boolean(),
  can_edit: Type.Boolean(),
  can_delete: Type.Boolean(),
  access_method: Type.String(),
});

const MediaUrl = Type.Object({
  media_id: Uuid,
  url: Type.String({ description: 'Absolute path: /api/v1/media/<token>' }),
  mime: Type.String(),
  width: Type.Integer(),
  height: Type.Integer(),
  bytes: Type.Integer(),
  expires_at: Type.String({ format: 'date-time' }),
});

const tags = ['generations'];
const security = [{ bearerAuth: [] }];
const read = { scope: 'generations:read' as const };
const write = { scope: 'generations:write' as const };

export interface GenerationRouteOptions {
  service: GenerationsService;
  create: (
    userId: string,
    input: CreateGenerationInput,
    ctx: ReturnType<typeof accessContext>,
  ) => Promise<{
    generation: GenerationView;
    replayed: boolean;
  }>;
  hub: GenerationEventHub;
  /** Invalidations: an open event stream ends as soon as its reader loses access. */
  bus: InvalidationBus;
  createsPerMinute: number;
  referenceImageMaxBytes: number;
  /** How often an open event stream re-reads the state, in case a notification was missed. */
  streamRefreshMs?: number;
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

export async function generationRoutes(fastify: FastifyInstance, opts: GenerationRouteOptions) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service } = opts;

  await app.register(import('@fastify/multipart'), {
    limits: { fileSize: opts.referenceImageMaxBytes, files: 1, fields: 10, fieldSize: 64 * 1024, parts: 12 },
  });

  // Open event streams end when the server closes (a handed-back generation would otherwise keep
  // its stream, and so the process, alive); clients reconnect to another instance.
  const openStreams = new Set<() => void>();
  app.addHook('preClose', (done) => {
    for (const finish of [...openStreams]) finish();
    done();
  });

  const createsPerUser = app.createRateLimit({
    max: opts.createsPerMinute,
    timeWindow: 60_000,
    keyGenerator: (req) => `generation-create:${req.principal?.userId ?? req.ip}`,
  });

  /** Multipart fields and file, checked against the same rules as the JSON body. */
  async function readMultipart(
    request: FastifyRequest,
  ): Promise<Omit<CreateGenerationInput, 'idempotency_key'>> {
    const fields: Record<string, unknown> = {};
    let reference: CreateGenerationInput['reference_image'];
    for await (const part of request.parts()) {
      if (part.type === 'file') {
        if (part.fieldname !== 'reference_image') {
          throw badRequest('Unexpected file', [
            { field: `body.${part.fieldname}`, message: 'only reference_image takes a file' },
          ]);
        }
        if (!part.mimetype.startsWith('image/')) {
          throw new AppError(415, 'unsupported_media_type', 'reference_image must be an image (image/*)');
        }
        const data = await part.toBuffer();
        // The declared type is the client's word; the bytes must really decode as an image.
        const decodable = await sharp(data, { failOn: 'error' })
          .metadata()
          .then((m) => Boolean(m.width && m.height))
          .catch(() => false);
        if (!decodable)
          throw new AppError(415, 'unsupported_media_type', 'reference_image is not a readable image');
        reference = { mime: part.mimetype, data };
      } else if (part.fieldname in CreateBody.properties) {
        // Unknown fields are dropped, as they are from JSON bodies.
        fields[part.fieldname] = part.value;
      }
    }
    if (typeof fields.parameters === 'string') {
      try {
        fields.parameters = JSON.parse(fields.parameters);
      } catch {
        throw badRequest('parameters is not JSON', [
          { field: 'body.parameters', message: 'must be a JSON object' },
        ]);
      }
    }
    if (fields.project_id === '') delete fields.project_id;
    const issues = [...Value.Errors(CreateBody, fields)].map((e) => {
      const path = ['body', ...e.instancePath.split('/').filter(Boolean)];
      // A missing property is named by the error's parameters, not its path (as ajv does for JSON).
      const missing = (e.params as { requiredProperties?: string[] }).requiredProperties?.[0];
      if (missing) path.push(missing);
      return { field: path.join('.'), message: e.message };
    });
    if (issues.length > 0) throw badRequest('The request is not valid', issues);
    return {
      ...(fields as unknown as CreateGenerationInput),
      ...(reference ? { reference_image: reference } : {}),
    };
  }

  app.post(
    '/generations',
    {
      config: { ...write, routeClass: 'heavy' },
      schema: {
        operationId: 'createGeneration',
        summary: 'Start a generation: charges its cost and queues it (202). Honours Idempotency-Key.',
        tags,
        security,
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
        ? await readMultipart(request)
        : (request.body as Omit<CreateGenerationInput, 'idempotency_key'>);
      const { generation, replayed } = await opts.create(
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
        security,
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
        security,
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
        security,
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
        security,
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
        security,
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
        security,
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
        security,
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
        security,
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

  app.get(
    '/generations/:id/events',
    {
      config: read,
      schema: {
        operationId: 'generationEvents',
        summary: 'Server-Sent Events: `status` events with status and progress until a terminal state',
        tags,
        security,
        params: IdParams,
        response: {
          200: {
            description:
              'A stream of `status` events whose data is JSON `{id, status, progress, error}`; it ends after a ' +
              'terminal status (completed, failed or cancelled)',
            content: { 'text/event-stream': { schema: Type.String() } },
          },
          ...errors(401, 403, 404),
        },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const userId = principal.userId;
      const id = request.params.id;
      const ctx = accessContext(request);
      const queued: GenerationEvent[] = [];
      let write: ((event: GenerationEvent) => void) | null = null;
      let end: ((reason?: string) => void) | null = null;
      // Subscribe before reading the state, so nothing that happens in between is missed: events,
      // and invalidations that could take the reader's access away.
      const unsubscribe = opts.hub.subscribe(id, (event) => (write ? write(event) : queued.push(event)));
      let watched = new Set<string>();
      const watch = (view: GenerationView) => {
        watched = new Set([
          factKeys.generation(id.toLowerCase()),
          factKeys.memberships(userId),
          credentialKeys.user(userId),
          ...(view.project_id ? [factKeys.project(view.project_id)] : []),
          ...(principal.kind === 'user' ? [credentialKeys.session(principal.sessionId)] : []),
        ]);
      };
      let revoked = false;
      const unguard = guardStream({
        bus: opts.bus,
        watched: () => watched,
        recheck: async (minRevision) => {
          if (!(await request.server.stillAuthenticated(request, minRevision))) return false;
          const view = await service.openForEvents(userId, id, {
            requestId: request.id,
            ip: ctx.ip,
            minRevision,
          });
          watch(view);
          return true;
        },
        onLost: () => {
          revoked = true;
          end?.('access_revoked');
        },
      });
      let current: GenerationView;
      try {
        current = await service.openForEvents(userId, id, ctx);
        watch(current);
      } catch (error) {
        unsubscribe();
        unguard();
        throw error;
      }
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, {
        ...(reply.getHeaders() as Record<string, string>),
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        'x-accel-buffering': 'no',
        'x-request-id': request.id,
        'x-route-class': 'fast',
      });
      let seq = 0;
      let last = '';
      let lastStatus = '';
      let lastProgress = -1;
      let timer: NodeJS.Timeout | null = null;
      const finish = () => {
        if (timer) clearInterval(timer);
        timer = null;
        unsubscribe();
        unguard();
        openStreams.delete(finish);
        if (!raw.writableEnded) raw.end();
      };
      openStreams.add(finish);
      // The reader lost the view or the credential: say so, then close (a client reconnecting gets
      // the 401 or 404 a new request would).
      end = (reason) => {
        if (!raw.writableEnded)
          raw.write(`event: error\ndata: ${JSON.stringify({ code: reason ?? 'access_revoked' })}\n\n`);
        finish();
      };
      if (revoked) {
        end('access_revoked');
        return;
      }
      write = (event) => {
        if (raw.writableEnded) return;
        const data = JSON.stringify({
          id: event.id,
          status: event.status,
          progress: event.progress,
          error: event.error,
        });
        if (data === last) return;
        // Events queued while the state was read can be older than it: never step progress back
        // within one status (a retry goes back through 'pending', which is a change of status).
        if (event.status === lastStatus && event.progress < lastProgress) return;
        last = data;
        lastStatus = event.status;
        lastProgress = event.progress;
        seq += 1;
        raw.write(`id: ${seq}\nevent: status\ndata: ${data}\n\n`);
        if (TERMINAL.has(event.status)) finish();
      };
      request.raw.on('close', finish);
      write({
        id,
        status: current.status as GenerationEvent['status'],
        progress: current.progress,
        error: current.error,
      });
      for (const event of queued.splice(0)) write(event);
      if (raw.writableEnded) return;
      // A notification can be lost (listener reconnecting): re-read the state now and then, which
      // also keeps idle proxies from closing the stream. (Access is re-checked on invalidations.)
      timer = setInterval(() => {
        service.get(userId, id, { requestId: request.id, ip: ctx.ip }).then(
          (g) => {
            raw.write(': keep-alive\n\n');
            write?.({
              id,
              status: g.status as GenerationEvent['status'],
              progress: g.progress,
              error: g.error,
            });
          },
          () => finish(),
        );
      }, opts.streamRefreshMs ?? 5_000);
    },
  );
}
