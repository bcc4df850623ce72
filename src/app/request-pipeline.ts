import cors from '@fastify/cors';
import rateLimit from '@fastify/rate-limit';
import underPressure from '@fastify/under-pressure';
import type { FastifyInstance } from 'fastify';
import { AdmissionControl, admissionEnabled } from '../platform/http/admission.js';
import { sendError } from '../platform/http/error-handler.js';
import { redisWithLocalFallbackStore } from '../platform/http/rate-limit-store.js';
import { addRequestContext, decorateRequestContext } from '../platform/http/request-context.js';
import { RequestFrame } from '../platform/http/request-frame.js';
import { securityHeadersStep } from '../platform/http/security-headers.js';
import { createRequestObserver } from '../platform/observability/request-observer.js';
import type { AppDeps } from './deps.js';
import type { Server } from './fastify.js';
import type { Observability } from './observability.js';

/**
 * What every request goes through before its route: timing and request-id headers, security
 * headers, the closing answer and admission control as steps of one onRequest and one onSend hook
 * (each layer can be left out when measuring what it costs); then event-loop load shedding, CORS
 * and the rate limiter's store.
 */
export async function installRequestPipeline(
  server: Server,
  deps: AppDeps,
  observability: Observability,
): Promise<void> {
  const { app, off, builtAt } = server;
  const { config, redis } = deps;
  const { tracker, metrics, statusTally } = observability;
  const frame = new RequestFrame();
  decorateRequestContext(app);
  if (!off.has('request_context'))
    addRequestContext(
      frame,
      config.TRACKING_ENABLED ? createRequestObserver(tracker, metrics, statusTally) : undefined,
    );
  if (!off.has('security_headers')) frame.atStart(securityHeadersStep());
  if (!off.has('closing')) addClosing(app, frame, config.OVERLOAD_RETRY_AFTER_SECONDS);
  if (admissionEnabled(config)) {
    const admission = new AdmissionControl({
      retryAfterSeconds: config.OVERLOAD_RETRY_AFTER_SECONDS,
      registry: metrics.registry,
      ...(config.ADMISSION_LOOP_DELAY_TARGET_MS > 0
        ? { loop: { targetMs: config.ADMISSION_LOOP_DELAY_TARGET_MS } }
        : {}),
    });
    admission.install(frame);
    // A client that goes away before its answer releases its place too (released exactly once).
    app.addHook('onRequestAbort', (request, done) => {
      admission.release(request);
      done();
    });
    app.addHook('onReady', async () => admission.start());
    app.addHook('onClose', async () => admission.stop());
  }
  frame.install(app);

  // Shed load before the event loop collapses: 503 + Retry-After while it lags. Liveness stays
  // answered (a slow process is not a dead one); readiness sheds, taking the instance out.
  if (!off.has('under_pressure'))
    await app.register(underPressure, {
      maxEventLoopDelay: config.OVERLOAD_MAX_EVENT_LOOP_DELAY_MS,
      maxHeapUsedBytes: config.OVERLOAD_MAX_HEAP_BYTES,
      sampleInterval: 100,
      retryAfter: config.OVERLOAD_RETRY_AFTER_SECONDS,
      pressureHandler: (request, reply, type, value) => {
        // Liveness always answers; and the first seconds of a process (loading, warming) lag the
        // loop by nature: that is not overload.
        if (
          request.url === '/health' ||
          performance.now() - builtAt < config.OVERLOAD_STARTUP_GRACE_SECONDS * 1000
        )
          return;
        request.log.warn({ type, value }, 'shedding load');
        reply.header('retry-after', String(config.OVERLOAD_RETRY_AFTER_SECONDS));
        sendError(request, reply, 503, 'overloaded', 'The service is overloaded; retry shortly');
      },
    });
  if (config.CORS_ORIGINS.trim()) {
    await app.register(cors, {
      origin: config.CORS_ORIGINS.split(',')
        .map((o) => o.trim())
        .filter(Boolean),
      credentials: false,
      exposedHeaders: [
        'x-request-id',
        'x-response-time',
        'x-cache',
        'velro-consistency-token',
        'retry-after',
      ],
      maxAge: 600,
    });
  }
  await app.register(rateLimit, {
    global: false,
    ...(redis ? { store: redisWithLocalFallbackStore(redis, `${config.REDIS_KEY_PREFIX}rl:`) } : {}),
  });
}

/**
 * Graceful close: from the moment the app starts closing, new requests get our 503 (envelope,
 * Retry-After) and every response ends its connection, and connections left idle are closed until
 * the server is, so a client holding keep-alive connections cannot keep the process alive.
 */
function addClosing(app: FastifyInstance, frame: RequestFrame, retryAfterSeconds: number) {
  let closing = false;
  let sweeper: NodeJS.Timeout | null = null;
  app.addHook('preClose', (done) => {
    closing = true;
    sweeper = setInterval(() => app.server.closeIdleConnections?.(), 50);
    sweeper.unref();
    done();
  });
  app.addHook('onClose', (_instance, done) => {
    if (sweeper) clearInterval(sweeper);
    done();
  });
  frame.atStart((request, reply) => {
    if (!closing) return undefined;
    reply.header('connection', 'close');
    if (request.url === '/health') return undefined;
    reply.header('retry-after', String(retryAfterSeconds));
    sendError(request, reply, 503, 'service_unavailable', 'The service is shutting down; retry shortly');
    return true;
  });
  frame.beforeSend((_request, reply) => {
    if (closing) reply.header('connection', 'close');
  });
}
