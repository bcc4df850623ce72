import closeWithGrace from 'close-with-grace';
import { loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { createWorker, openRuntime } from './runtime.js';

/**
 * A generation worker without the HTTP server (`npm run worker`): same code and configuration as
 * the service, for running workers on machines of their own.
 */
const config = loadConfig();
const logger = createLogger(config);
const runtime = await openRuntime(config, logger);
const worker = createWorker(config, runtime.pools, runtime.pipeline, logger);

closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS, logger }, async ({ signal, err }) => {
  if (err) logger.error({ err }, 'worker stopping after an unexpected error');
  else logger.info({ signal }, 'worker stopping: running jobs go back to the queue');
  await worker.stop();
  await runtime.close();
});

await worker.start();
logger.info({ worker: worker.id, concurrency: config.WORKER_CONCURRENCY }, 'generation worker started');
