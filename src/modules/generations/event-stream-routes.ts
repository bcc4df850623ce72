import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { InvalidationBus } from '../../platform/cache/bus.js';
import { accessContext } from '../../platform/http/context.js';
import { hijackAnswer } from '../../platform/http/request-frame.js';
import { errors, IdParams } from '../../platform/http/schemas.js';
import { principalOf } from '../auth/authenticate.js';
import { credentialKeys } from '../auth/credentials.js';
import { factKeys } from '../authz/facts.js';
import { type GenerationEvent, type GenerationEventHub, TERMINAL } from './events.js';
import { read, tags } from './schemas.js';
import type { GenerationsService } from './service.js';
import { guardStream } from './stream-guard.js';
import type { GenerationView } from './view.js';

export interface GenerationEventStreamOptions {
  service: GenerationsService;
  hub: GenerationEventHub;
  /** Invalidations: an open event stream ends as soon as its reader loses access. */
  bus: InvalidationBus;
  /** How often an open event stream re-reads the state, in case a notification was missed. */
  streamRefreshMs?: number;
}

/**
 * GET /generations/:id/events: a generation's status as Server-Sent Events until a terminal state,
 * ended early when the reader loses access or the server closes.
 */
export function registerGenerationEventStream(fastify: FastifyInstance, opts: GenerationEventStreamOptions) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service } = opts;

  // Open event streams end when the server closes (a handed-back generation would otherwise keep
  // its stream, and so the process, alive); clients reconnect to another instance.
  const openStreams = new Set<() => void>();
  app.addHook('preClose', (done) => {
    for (const finish of [...openStreams]) finish();
    done();
  });

  app.get(
    '/generations/:id/events',
    {
      config: read,
      schema: {
        operationId: 'generationEvents',
        summary: 'Server-Sent Events: `status` events with status and progress until a terminal state',
        tags,
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
      // No hook runs after a hijack: the frame's last steps run now (admission place given back,
      // request-id/timing/route-class headers, the request observed as opened).
      hijackAnswer(request, reply);
      const raw = reply.raw;
      raw.writeHead(200, {
        ...(reply.getHeaders() as Record<string, string>),
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        'x-accel-buffering': 'no',
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
