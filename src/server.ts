import { join } from 'node:path';
import closeWithGrace from 'close-with-grace';
import type { FastifyBaseLogger } from 'fastify';
import { buildApp } from './app.js';
import { serviceUrls, startupBanner, withoutPassword } from './banner.js';
import type { Config } from './config.js';
import { createLogger, prettyDestination, wantsPrettyLogs } from './logger.js';
import { describeRedisTopology, redisTopology } from './platform/redis-topology.js';
import { createWorker, openRuntime } from './runtime.js';

/** Messages between the cluster primary and its server processes (src/cluster.ts). */
export const SHUTDOWN_MESSAGE = 'velro:shutdown';
export const READY_MESSAGE = 'velro:ready';

/**
 * One server process: the runtime, the HTTP app, the generation worker when enabled, and the
 * graceful shutdown. Alone (`npm start` with WEB_CONCURRENCY=1) it owns its signals; as a cluster
 * worker the primary decides when to stop and says so over IPC (a terminal's Ctrl-C reaches every
 * process of the group, and a second signal would cut the drain short).
 */
export async function runServer(config: Config, options: { clusterWorker: boolean }): Promise<void> {
  const { clusterWorker } = options;
  const pretty = !clusterWorker && wantsPrettyLogs(config);
  const logger = createLogger(config, pretty ? await prettyDestination() : undefined);

  const runtime = await openRuntime(config, logger);
  const worker = config.WORKER_ENABLED ? createWorker(config, runtime.pools, runtime.pipeline, logger) : null;
  const app = await buildApp({
    ...runtime.deps,
    ...(worker ? { onGenerationQueued: () => worker.nudge() } : {}),
  });

  const closer = closeWithGrace(
    {
      delay: config.SHUTDOWN_GRACE_MS,
      logger,
      ...(clusterWorker ? { skip: ['SIGINT', 'SIGTERM', 'SIGHUP'] as const } : {}),
    },
    async ({ signal, err }) => {
      if (err) logger.error({ err }, 'stopping after an unexpected error');
      else logger.info({ signal }, 'stopping: no new connections, finishing in-flight requests and jobs');
      // Stop taking jobs first (running ones go back to the queue), then drain HTTP, then the rest.
      await worker?.stop();
      await app.close();
      await runtime.close();
      logger.info('stopped');
    },
  );
  if (clusterWorker) stopWhenThePrimarySays(closer.close);

  try {
    await app.listen({ host: config.HOST, port: config.PORT, backlog: config.LISTEN_BACKLOG });
    await worker?.start();
    const address = app.server.address();
    const port = typeof address === 'object' && address ? address.port : config.PORT;
    if (clusterWorker) {
      logger.info({ port }, 'server process ready');
      process.send?.({ type: READY_MESSAGE, port });
    } else {
      announceReady(logger, config, port, runtime.databaseUrl, pretty);
    }
  } catch (error) {
    logger.fatal({ err: error }, 'could not start');
    await runtime.close();
    process.exit(1);
  }
}

/**
 * A cluster worker stops once: on the primary's message, on SIGTERM sent to it alone, or when the
 * primary is gone (the IPC channel closes). SIGINT and SIGHUP are the primary's to act on.
 */
function stopWhenThePrimarySays(close: () => unknown): void {
  let stopping = false;
  const stopOnce = () => {
    if (stopping) return;
    stopping = true;
    close();
  };
  process.on('message', (message) => {
    if ((message as { type?: unknown } | null)?.type === SHUTDOWN_MESSAGE) stopOnce();
  });
  process.on('disconnect', stopOnce);
  process.on('SIGTERM', stopOnce);
  process.on('SIGINT', () => undefined);
  process.on('SIGHUP', () => undefined);
}

/** The one "ready" line (or banner at a terminal) with the addresses a person uses. */
export function announceReady(
  logger: FastifyBaseLogger,
  config: Config,
  port: number,
  databaseUrl: string,
  pretty: boolean,
  processes = 1,
): void {
  const urls = serviceUrls(config, port);
  const database = withoutPassword(databaseUrl);
  const databaseKind = config.DATABASE_URL
    ? 'DATABASE_URL'
    : `embedded, data in ${join(config.DATA_DIR, 'pg')}; velro status shows its full URL`;
  const topology = redisTopology(config);
  const redis = topology ? describeRedisTopology(topology) : null;
  const listening =
    processes > 1 ? `${config.HOST}:${port} (${processes} processes)` : `${config.HOST}:${port}`;
  if (pretty) {
    logger.info(`\n${startupBanner({ urls, database, databaseKind, redis, listening })}`);
  } else {
    logger.info(
      { api: urls.api, docs: urls.docs, dashboard: urls.dashboard, database, redis, listening, processes },
      `ready: API ${urls.api}, docs ${urls.docs}, dashboard ${urls.dashboard}, database ${database}`,
    );
  }
}
