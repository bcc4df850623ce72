import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { errors } from '../../platform/http/schemas.js';
import type { AppMetrics } from '../../platform/observability/metrics.js';
import type { PerformanceTracker } from '../../platform/observability/tracker.js';
import { Anything, AssetParams, WindowQuery } from './schemas.js';

export interface SelfTestDeps {
  /** One L1 read of a probe key, in µs. */
  l1Probe(): number;
  /** One L2 round trip, in µs; null when there is no L2 or it is away. */
  l2Probe(): Promise<number | null>;
  /** One database round trip (SELECT 1 on the authorization pool), in µs. */
  dbProbe(): Promise<number>;
  /** One authorization check from the database, then the same check again (warm), in µs each. */
  checkProbe(): Promise<{ cold: number; warm: number; warmLayer: string }>;
}

export interface PerformanceDeps {
  selfTest: SelfTestDeps;
  tracker: PerformanceTracker;
  metrics: AppMetrics;
  cache: () => Record<string, unknown>;
  pools: () => Record<string, { total: number; idle: number; waiting: number }>;
  queueDepth: () => Promise<number | null>;
  /**
   * The people's side of the dashboard: `activity` (per-minute sign-ins, generations, credits from
   * the database, fleet-wide; denials and 4xx/5xx of this process) and `db` (pool waits and errors of
   * this process). See platform/observability/activity.ts.
   */
  activity: () => Promise<{ activity: unknown; db: unknown }>;
}

const ops = { ops: true, routeClass: 'ultra_fast' as const };
const tags = ['performance'];

const WEB_DIR = fileURLToPath(new URL('../../../web/', import.meta.url));
const require = createRequire(import.meta.url);
const UPLOT_DIR = `${require.resolve('uplot/dist/uPlot.iife.min.js').replace(/uPlot\.iife\.min\.js$/, '')}`;
const ASSETS: Record<string, { file: string; type: string }> = {
  'dashboard.js': { file: `${WEB_DIR}dashboard.js`, type: 'text/javascript; charset=utf-8' },
  'dashboard.css': { file: `${WEB_DIR}dashboard.css`, type: 'text/css; charset=utf-8' },
  'uPlot.iife.min.js': { file: `${UPLOT_DIR}uPlot.iife.min.js`, type: 'text/javascript; charset=utf-8' },
  'uPlot.min.css': { file: `${UPLOT_DIR}uPlot.min.css`, type: 'text/css; charset=utf-8' },
};

/**
 * The performance API of SPEC §4 (under /api/v1/performance), Prometheus text at /metrics and the
 * live dashboard at /dashboard. Open by default; with OPS_TOKEN set they need it as a bearer.
 */
export async function performanceRoutes(fastify: FastifyInstance, deps: PerformanceDeps) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { tracker } = deps;

  const health = () => {
    const alerts = tracker.alertStates();
    const firing = alerts.filter((a) => a.state === 'firing');
    // An info alert is worth a look, not a degraded service.
    const status = firing.some((a) => a.rule.severity === 'critical')
      ? 'critical'
      : firing.some((a) => a.rule.severity === 'warning')
        ? 'degraded'
        : 'healthy';
    const memory = process.memoryUsage();
    return {
      status,
      firing_alerts: firing.map((a) => ({
        name: a.rule.name,
        severity: a.rule.severity,
        metric: a.rule.metric,
        threshold: a.rule.threshold,
        value: a.value,
        since: a.since,
      })),
      event_loop_p99_ms: tracker.metric('process:event_loop_p99_ms', '1m').value,
      memory: { rss_bytes: memory.rss, heap_used_bytes: memory.heapUsed },
      uptime_s: Math.round(process.uptime()),
    };
  };

  app.get(
    '/api/v1/performance/dashboard',
    {
      config: ops,
      schema: {
        operationId: 'performanceDashboard',
        summary: 'One summary for the dashboard: throughput, latency per class, cache, pools, queue, alerts',
        tags,
        response: { 200: Anything, ...errors(401) },
      },
    },
    async () => ({
      generated_at: new Date().toISOString(),
      requests: tracker.summary('1m'),
      cache: {
        ...deps.cache(),
        l1_hit_ratio_1m: tracker.cacheRatio('1m').ratio,
        l1_hit_ratio_5m: tracker.cacheRatio('5m').ratio,
      },
      pools: deps.pools(),
      queue_depth: await deps.queueDepth().catch(() => null),
      alerts: tracker.alertStates(),
      health: health().status,
      process: (({ event_loop_p99_ms, memory, uptime_s }) => ({ event_loop_p99_ms, ...memory, uptime_s }))(
        health(),
      ),
      ...(await deps.activity().catch(() => ({ activity: null, db: null }))),
    }),
  );

  app.get(
    '/api/v1/performance/metrics',
    {
      config: ops,
      schema: {
        operationId: 'performanceMetrics',
        summary:
          'p50/p95/p99/max, throughput and error rate per route class and endpoint, for 1 min, 5 min and 1 h',
        tags,
        response: { 200: Anything, ...errors(401) },
      },
    },
    async () => ({
      generated_at: new Date().toISOString(),
      windows: Object.fromEntries(tracker.windows().map((w) => [w, tracker.summary(w)])),
    }),
  );

  app.get(
    '/api/v1/performance/health',
    {
      config: ops,
      schema: {
        operationId: 'performanceHealth',
        summary: 'healthy / degraded / critical, from the alert rules',
        tags,
        response: { 200: Anything, ...errors(401) },
      },
    },
    async () => health(),
  );

  app.get(
    '/api/v1/performance/validate',
    {
      config: ops,
      schema: {
        operationId: 'performanceValidate',
        summary: 'Each target of SPEC §7 with its current figures and pass / fail / insufficient_data',
        tags,
        querystring: WindowQuery,
        response: { 200: Anything, ...errors(400, 401) },
      },
    },
    async (request) => {
      const window = (request.query.window ?? '5m') as '1m' | '5m' | '1h';
      const targets = tracker.validate(window);
      const judged = targets.filter((t) => t.status !== 'insufficient_data');
      return {
        generated_at: new Date().toISOString(),
        window,
        passing: judged.every((t) => t.status === 'pass'),
        targets,
      };
    },
  );

  app.get(
    '/api/v1/performance/test',
    {
      config: ops,
      schema: {
        operationId: 'performanceTest',
        summary: 'Self-test: one L1 get, one L2 round trip, one database round trip, a cold and a warm check',
        tags,
        response: { 200: Anything, ...errors(401) },
      },
    },
    async () => {
      const test = deps.selfTest;
      const started = performance.now();
      const l1 = test.l1Probe();
      const l2 = await test.l2Probe();
      const db = await test.dbProbe();
      const check = await test.checkProbe();
      // Levels against our aims (SPEC §6): µs warm, one round trip cold.
      const level =
        check.warm < 200 && check.cold < db * 3 + 2_000
          ? 'excellent'
          : check.warm < 2_000 && check.cold < 20_000
            ? 'good'
            : check.cold < 75_000
              ? 'acceptable'
              : 'degraded';
      const us = (v: number) => Math.round(v * 10) / 10;
      return {
        generated_at: new Date().toISOString(),
        performance_level: level,
        breakdown_us: {
          l1_get: us(l1),
          l2_round_trip: l2 === null ? null : us(l2),
          database_round_trip: us(db),
          authorization_check_cold: us(check.cold),
          authorization_check_warm: us(check.warm),
        },
        warm_check_layer: check.warmLayer,
        total_ms: Math.round((performance.now() - started) * 1000) / 1000,
        targets_ms: { authorization_p95: 75, l1_access: 5, l2_access: 20, database_query: 50 },
      };
    },
  );

  app.get('/metrics', { config: ops, schema: { hide: true } }, async (_request, reply) => {
    const { contentType, body } = await deps.metrics.text();
    return reply.type(contentType).send(body);
  });

  // The page holds no data (it fetches it, with `#token=` when one is set): anyone may load it.
  app.get(
    '/dashboard',
    { config: { public: true, routeClass: 'fast', page: true }, schema: { hide: true } },
    async (_request, reply) =>
      reply
        .type('text/html; charset=utf-8')
        .header('cache-control', 'no-store')
        .send(await readFile(`${WEB_DIR}dashboard.html`)),
  );

  app.get(
    '/dashboard/assets/:name',
    {
      config: { public: true, routeClass: 'fast', page: true },
      schema: { hide: true, params: AssetParams },
    },
    async (request, reply) => {
      const asset = ASSETS[request.params.name];
      if (!asset) return reply.callNotFound();
      return reply
        .type(asset.type)
        .header('cache-control', 'public, max-age=300')
        .send(await readFile(asset.file));
    },
  );
}
