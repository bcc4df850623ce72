import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { createWorker, openRuntime } from './runtime.js';

const config = loadConfig();
const logger = createLogger(config);

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
} catch (error) {
  logger.fatal({ err: error }, 'could not start');
  await runtime.close();
  process.exit(1);
}
