import cluster from 'node:cluster';
import { loadConfig, webConcurrency } from './config.js';

/**
 * `npm start`: one server process, or with WEB_CONCURRENCY above 1 a primary that runs that many
 * server processes on one port (node:cluster) and restarts any that crash.
 */
const config = loadConfig();
const processes = webConcurrency(config);
if (processes > 1 && cluster.isPrimary) {
  const { runPrimary } = await import('./cluster.js');
  await runPrimary(config, processes);
} else {
  const { runServer } = await import('./server.js');
  await runServer(config, { clusterWorker: cluster.isWorker });
}
