import { join } from 'node:path';
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { serviceUrls, startupBanner, withoutPassword } from './banner.js';
import { loadConfig } from './config.js';
import { createLogger, prettyDestination, wantsPrettyLogs } from './logger.js';
import { createWorker, openRuntime } from './runtime.js';

const config = loadConfig();
const pretty = wantsPrettyLogs(config);
const logger = createLogger(config, pretty ? await prettyDestination() : undefined);

const runtime = await openRuntime(config, logger);
const worker = config.WORKER_ENABLED ? createWorker(config, runtime.pools, runtime.pipeline, logger) : null;
const app = await buildApp({
  ...runtime.deps,
  ...(worker ? { onGenerationQueued: () => worker.nudge() } : {}),
});

closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS, logger }, async ({ signal, err }) => {
  if (err) logger.error({ err }, 'stopping after an unexpected error');
  else logger.info({ signal }, 'stopping: no new connections, finishing in-flight requests and jobs');
  // Stop taking jobs first (running ones go back to the queue), then drain HTTP, then the rest.
  await worker?.stop();
  await app.close();
  await runtime.close();
  logger.info('stopped');
});

try {
  await app.listen({ host: config.HOST, port: config.PORT, backlog: config.LISTEN_BACKLOG });
  await worker?.start();
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.PORT;
  const urls = serviceUrls(config, port);
  const database = withoutPassword(runtime.databaseUrl);
  const databaseKind = config.DATABASE_URL
    ? 'DATABASE_URL'
    : `embedded, data in ${join(config.DATA_DIR, 'pg')}; velro status shows its full URL`;
  const redis = config.REDIS_URL ? withoutPassword(config.REDIS_URL) : null;
  const listening = `${config.HOST}:${port}`;
  if (pretty) {
    logger.info(`\n${startupBanner({ urls, database, databaseKind, redis, listening })}`);
  } else {
    logger.info(
      { api: urls.api, docs: urls.docs, dashboard: urls.dashboard, database, redis, listening },
      `ready: API ${urls.api}, docs ${urls.docs}, dashboard ${urls.dashboard}, database ${database}`,
    );
  }
} catch (error) {
  logger.fatal({ err: error }, 'could not start');
  await runtime.close();
  process.exit(1);
}
