import Fastify, { type FastifyInstance, LogController } from 'fastify';
import { installErrorHandling, sendError } from '../platform/http/error-handler.js';
import { layersOff } from '../platform/http/measurement.js';
import { requestIdFrom } from '../platform/http/request-context.js';
import { API_HEADERS } from '../platform/http/security-headers.js';
import { installValidation } from '../platform/http/validation.js';
import { lazyRequestLogger } from '../platform/observability/request-logger.js';
import type { AppDeps } from './deps.js';

export interface Server {
  app: FastifyInstance;
  /** Per-request layers switched off for measurement (MEASURE_WITHOUT); empty in production. */
  off: ReadonlySet<string>;
  /** When the app was built (the overload shedder's start-up grace counts from here). */
  builtAt: number;
}

/** The Fastify instance with Velro's server options, validation and error envelope. */
export function createServer(deps: AppDeps): Server {
  const { config } = deps;
  const builtAt = performance.now();
  const app = Fastify({
    // Request loggers become pino children only when they write a line (most never do).
    ...(deps.logger
      ? { loggerInstance: deps.logger, childLoggerFactory: lazyRequestLogger }
      : { logger: false }),
    bodyLimit: config.BODY_LIMIT_BYTES,
    trustProxy: config.TRUST_PROXY,
    genReqId: requestIdFrom,
    logController: new LogController({ requestIdLogLabel: 'request_id' }),
    // Our own closing answer (envelope, Retry-After) and connection handling: see request-pipeline.ts.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    frameworkErrors: (error, request, reply) => {
      // A malformed URL (bad percent-encoding) fails before routing: still the envelope and headers.
      const status = (error as { statusCode?: number }).statusCode ?? 400;
      reply.headers(API_HEADERS);
      reply.header('x-request-id', request.id);
      sendError(request, reply, status, status === 400 ? 'bad_request' : 'error', error.message);
    },
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 2048 },
  });

  // Measurement only (`npm run bench -- --attribution`): layers switched off to see what each costs.
  const off = layersOff(config.MEASURE_WITHOUT);
  if (off.size > 0) {
    app.addHook('onReady', async () =>
      app.log.warn(
        { layers: [...off] },
        'MEASURE_WITHOUT: per-request layers are OFF; never do this in production',
      ),
    );
  }
  if (off.has('response_schema'))
    app.addHook('onRoute', (route) => {
      if (route.schema?.response) route.schema = { ...route.schema, response: undefined };
    });
  app.decorate('readsConsistencyTokens', !off.has('consistency_token'));

  installValidation(app);
  installErrorHandling(app, config.DB_RETRY_AFTER_SECONDS);
  return { app, off, builtAt };
}
