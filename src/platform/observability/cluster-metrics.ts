import cluster from 'node:cluster';
import { randomUUID } from 'node:crypto';
import { AggregatorRegistry, type Registry } from 'prom-client';

/**
 * /metrics under WEB_CONCURRENCY > 1. A scrape lands on one server process, but Prometheus must see
 * the whole instance: that process asks the primary, which collects every process's registries
 * (prom-client's AggregatorRegistry: counters and histograms summed, and gauges summed unless the
 * metric names another aggregator) and answers with one exposition.
 */
const REQUEST = 'velro:metrics-request';
const RESPONSE = 'velro:metrics-response';
const TIMEOUT_MS = 5_000;

interface MetricsResponse {
  type: typeof RESPONSE;
  id: string;
  body?: string;
  error?: string;
}

/** In the primary: answers the server processes' requests for the aggregated metrics. */
export function serveClusterMetrics(): void {
  const aggregator = new AggregatorRegistry();
  cluster.on('message', (worker, message: { type?: unknown; id?: unknown }) => {
    if (message?.type !== REQUEST || typeof message.id !== 'string') return;
    const id = message.id;
    aggregator.clusterMetrics().then(
      (body) => worker.isConnected() && worker.send({ type: RESPONSE, id, body } satisfies MetricsResponse),
      (error: Error) =>
        worker.isConnected() &&
        worker.send({ type: RESPONSE, id, error: error.message } satisfies MetricsResponse),
    );
  });
}

/** In a server process: offers these registries to the primary's collection. */
export function joinClusterMetrics(registries: Registry[]): void {
  AggregatorRegistry.setRegistries(registries);
  // The constructor installs the listener that answers the primary's collection requests.
  new AggregatorRegistry();
}

export const inCluster = (): boolean => cluster.isWorker;

/** In a server process: the whole instance's metrics, from the primary. */
export function clusterMetricsText(): Promise<string> {
  const id = randomUUID();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      process.off('message', onMessage);
      reject(new Error('the cluster primary did not answer with metrics'));
    }, TIMEOUT_MS);
    const onMessage = (message: MetricsResponse) => {
      if (message?.type !== RESPONSE || message.id !== id) return;
      clearTimeout(timer);
      process.off('message', onMessage);
      if (message.error !== undefined) reject(new Error(message.error));
      else resolve(message.body ?? '');
    };
    process.on('message', onMessage);
    process.send?.({ type: REQUEST, id });
  });
}
