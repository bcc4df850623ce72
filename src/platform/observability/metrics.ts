import { totalmem } from 'node:os';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { AuthzTally, DECISION_LABELS, DENIAL_REASONS } from './authz-tally.js';
import { clusterMetricsText, inCluster, joinClusterMetrics } from './cluster-metrics.js';
import { WindowedHistogram } from './windowed-histogram.js';

/**
 * Prometheus metrics. Process-wide ones (money, jobs, queries, the runtime) live in one registry
 * fed from wherever they happen; each app instance adds its own (requests, cache, pools, queue)
 * and `/metrics` serves both. No user data in labels: routes are patterns, never ids.
 */
export const processRegistry = new Registry();
collectDefaultMetrics({ register: processRegistry, prefix: 'velro_' });

/** The denominator of the memory rule: the cgroup limit when there is one, else the machine's memory. */
new Gauge({
  name: 'velro_process_memory_limit_bytes',
  help: 'Memory this process may use: its container (cgroup) limit, or the machine total without one',
  registers: [processRegistry],
  collect() {
    const constrained = process.constrainedMemory?.() ?? 0;
    this.set(constrained > 0 && constrained < Number.MAX_SAFE_INTEGER ? constrained : totalmem());
  },
});

export const creditsMoved = new Counter({
  name: 'velro_credits_total',
  help: 'Credits moved, by ledger reason (generation_charge, generation_refund, admin_grant, signup)',
  labelNames: ['reason'],
  registers: [processRegistry],
});

/** Password sign-ins by result (the dashboard's sign-in panel, as Grafana draws it). */
export const signIns = new Counter({
  name: 'velro_sign_ins_total',
  help: 'Password sign-ins: result=ok, or failed (unknown email, wrong password, deactivated account)',
  labelNames: ['result'],
  registers: [processRegistry],
});
// Both series exist from the start (a panel or rule reading them has data before the first sign-in).
signIns.inc({ result: 'ok' }, 0);
signIns.inc({ result: 'failed' }, 0);

export const jobOutcomes = new Counter({
  name: 'velro_generation_jobs_total',
  help: 'Generation outcomes: completed, failed, cancelled, requeued',
  labelNames: ['outcome'],
  registers: [processRegistry],
});

// The two outcomes every dashboard draws exist from the start (at 0).
jobOutcomes.inc({ outcome: 'completed' }, 0);
jobOutcomes.inc({ outcome: 'failed' }, 0);

export const dbQueryDuration = new Histogram({
  name: 'velro_db_query_duration_seconds',
  help: 'Database query time by typed pool, as seen by the client (round trip included)',
  labelNames: ['pool'],
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [processRegistry],
});

export const dbPoolWait = new Histogram({
  name: 'velro_db_pool_wait_seconds',
  help: 'Time a request waited for a connection of the typed pool (0 when one was idle)',
  labelNames: ['pool'],
  buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [processRegistry],
});

/**
 * The same waits for the in-process tracker (rule db_pool_wait_high), over 1 min, 5 min and 1 h:
 * every typed pool of this process together.
 */
export const poolWaitWindows = new WindowedHistogram();

export const dbErrors = new Counter({
  name: 'velro_db_errors_total',
  help: 'Database failures by pool: kind=acquire (no connection within the timeout, or refused), kind=query',
  labelNames: ['pool', 'kind'],
  registers: [processRegistry],
});

export interface AppMetricSources {
  cache: () => {
    l1: { hits: number; misses: number; evictions: number; expired: number; bytes: number; entries: number };
    /** `breaker` is there when L2 is configured: its circuit breaker's state. */
    l2: { hits: number; misses: number; errors: number; breaker?: string };
    database_loads: number;
  };
  pools: () => Record<string, { total: number; idle: number; waiting: number }>;
  queueDepth: () => Promise<number | null>;
}

export function createAppMetrics(sources: AppMetricSources) {
  const registry = new Registry();
  const httpDuration = new Histogram({
    name: 'velro_http_request_duration_seconds',
    help: 'HTTP request duration by route pattern, method, status and route class',
    labelNames: ['route', 'method', 'status', 'route_class'],
    // 75 ms and 150 ms are the authorization alert thresholds: a bucket edge on each makes the
    // rules' p95 comparison exact instead of interpolated.
    buckets: [
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5,
    ],
    registers: [registry],
  });
  new Gauge({
    name: 'velro_cache_lookups',
    help: 'Cache lookups since start, by layer and result (hit, miss, eviction, expiry, error)',
    labelNames: ['layer', 'result'],
    registers: [registry],
    collect() {
      const c = sources.cache();
      this.set({ layer: 'l1', result: 'hit' }, c.l1.hits);
      this.set({ layer: 'l1', result: 'miss' }, c.l1.misses);
      this.set({ layer: 'l1', result: 'eviction' }, c.l1.evictions);
      this.set({ layer: 'l1', result: 'expiry' }, c.l1.expired);
      this.set({ layer: 'l2', result: 'hit' }, c.l2.hits);
      this.set({ layer: 'l2', result: 'miss' }, c.l2.misses);
      this.set({ layer: 'l2', result: 'error' }, c.l2.errors);
      this.set({ layer: 'database', result: 'load' }, c.database_loads);
    },
  });
  new Gauge({
    name: 'velro_circuit_breaker_open',
    help:
      'Circuit breakers by dependency: 1 while open (calls bypass it), 0 while closed or half-open, ' +
      'or when the dependency is not configured (no Redis: no breaker to open)',
    labelNames: ['breaker'],
    registers: [registry],
    collect() {
      // Always a sample, so the alert rule and a dashboard see the series with or without Redis.
      const state = sources.cache().l2.breaker;
      this.set({ breaker: 'l2_redis' }, state === 'open' ? 1 : 0);
    },
  });
  new Gauge({
    name: 'velro_cache_l1_bytes',
    help: 'Bytes held by the in-process fact cache',
    registers: [registry],
    collect() {
      this.set(sources.cache().l1.bytes);
    },
  });
  new Gauge({
    name: 'velro_db_pool_connections',
    help: 'Connections per typed pool: total, idle, and requests waiting for one',
    labelNames: ['pool', 'state'],
    registers: [registry],
    collect() {
      for (const [pool, s] of Object.entries(sources.pools())) {
        this.set({ pool, state: 'total' }, s.total);
        this.set({ pool, state: 'idle' }, s.idle);
        this.set({ pool, state: 'waiting' }, s.waiting);
      }
    },
  });
  new Gauge({
    name: 'velro_queue_depth',
    help: 'Generation jobs waiting in the queue',
    registers: [registry],
    async collect() {
      const depth = await sources.queueDepth().catch(() => null);
      if (depth !== null) this.set(depth);
    },
  });
  // Authorization decisions, counted on the warm path by the tally (a typed-array increment) and
  // handed to prom-client at scrape time as deltas, through label children bound once each.
  const authz = new AuthzTally();
  const reportedDecisions = new Float64Array(authz.decisions.length);
  let decisionChildren: { inc(value: number): void }[] | null = null;
  new Counter({
    name: 'velro_authz_decisions_total',
    help:
      'Authorization decisions by result (allow, deny), how the caller authenticated (session, ' +
      'service_key) and where the facts came from (l1, l2, db)',
    labelNames: ['result', 'method', 'layer'],
    registers: [registry],
    collect() {
      decisionChildren ??= DECISION_LABELS.map((l) => this.labels(l.result, l.method, l.layer));
      flushDeltas(authz.decisions, reportedDecisions, decisionChildren);
    },
  });
  const reportedDenials = new Float64Array(authz.denials.length);
  let denialChildren: { inc(value: number): void }[] | null = null;
  new Counter({
    name: 'velro_authz_denials_total',
    help:
      'Authorization denials by reason: not_found, deleted, no_access (all three answer 404) and ' +
      'lacks_permission (visible, 403)',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      denialChildren ??= DENIAL_REASONS.map((reason) => this.labels(reason));
      flushDeltas(authz.denials, reportedDenials, denialChildren);
    },
  });
  new Gauge({
    name: 'velro_authz_denials_subject_max',
    help:
      'The most denials of resources it cannot see (404) that any single subject had over the window ' +
      '(probing for ids); per-subject figures stay in the process',
    labelNames: ['window'],
    // Several processes of one instance: the worst subject of any of them.
    aggregator: 'max',
    registers: [registry],
    collect() {
      this.set({ window: '1m' }, authz.probing(60_000).maxPerSubject);
      this.set({ window: '5m' }, authz.probing(300_000).maxPerSubject);
    },
  });
  if (inCluster()) joinClusterMetrics([processRegistry, registry]);
  return {
    registry,
    httpDuration,
    authz,
    async text(): Promise<{ contentType: string; body: string }> {
      const merged = Registry.merge([processRegistry, registry]);
      if (inCluster()) return { contentType: merged.contentType, body: await clusterMetricsText() };
      return { contentType: merged.contentType, body: await merged.metrics() };
    },
  };
}

export type AppMetrics = ReturnType<typeof createAppMetrics>;

/** Adds to each child what its counter gained since the previous scrape (0 on the first: the series exists). */
function flushDeltas(counts: Float64Array, reported: Float64Array, children: { inc(value: number): void }[]) {
  for (let i = 0; i < counts.length; i++) {
    const delta = (counts[i] as number) - (reported[i] as number);
    reported[i] = counts[i] as number;
    children[i]?.inc(delta);
  }
}
