import type { StatusTally } from './activity.js';
import type { AppMetrics } from './metrics.js';
import type { PerformanceTracker } from './tracker.js';

/**
 * What tracking costs each request: the tracker's HDR histograms (overall, route class, endpoint)
 * and the Prometheus duration histogram. Label sets repeat (routes are patterns), so each
 * combination's labelled child and endpoint name are made once and reused: resolving labels on
 * every observation cost more than the observation itself.
 */
export function createRequestObserver(
  tracker: PerformanceTracker,
  metrics: Pick<AppMetrics, 'httpDuration'>,
  /** Answers by status class, for the dashboard's 4xx/5xx panel. */
  statuses?: StatusTally,
) {
  const known = new Map<string, { endpoint: string; histogram: { observe(value: number): void } }>();
  return (route: string, method: string, routeClass: string, status: number, micros: number) => {
    const key = `${status} ${method} ${route}`;
    let entry = known.get(key);
    if (!entry) {
      entry = {
        endpoint: `${method} ${route}`,
        histogram: metrics.httpDuration.labels({
          route,
          method,
          status: String(status),
          route_class: routeClass,
        }),
      };
      known.set(key, entry);
    }
    tracker.record(routeClass, entry.endpoint, micros, status);
    statuses?.count(status);
    entry.histogram.observe(micros / 1e6);
  };
}
