import cluster from 'node:cluster';
import { hostname } from 'node:os';
import { registerReplicaMetrics } from '../platform/db/read-routing.js';
import { Activity, StatusTally } from '../platform/observability/activity.js';
import {
  type EffectiveRule,
  effectiveRules,
  loadOverrides,
  type RuleChange,
  type RuleOverride,
  rulesToEvaluate,
  saveChanges,
} from '../platform/observability/alert-rule-store.js';
import type { AlertRule } from '../platform/observability/alert-rules.js';
import { AlertmanagerNotifier, alertmanagerUrls } from '../platform/observability/alertmanager.js';
import { type AppMetrics, createAppMetrics, poolWaitWindows } from '../platform/observability/metrics.js';
import {
  type CacheRatioSource,
  DEFAULT_ALERT_RULES,
  PerformanceTracker,
} from '../platform/observability/tracker.js';
import { GENERATION_QUEUE } from '../platform/queue/boss.js';
import type { AppDeps } from './deps.js';
import type { Server } from './fastify.js';

export interface Observability {
  metrics: AppMetrics;
  tracker: PerformanceTracker;
  statusTally: StatusTally;
  activity: Activity;
  queueDepth: () => Promise<number>;
  cacheStats: () => ReturnType<AppDeps['cache']['snapshot']>;
  alertRules: {
    defaults: readonly AlertRule[];
    effective: () => EffectiveRule[];
    save: (changes: RuleChange[], actorId: string | null) => Promise<number>;
    reload: () => Promise<void>;
  };
}

/**
 * Metrics, the in-process tracker and its alert rules (the code's, with the administrators'
 * overrides, re-read whenever a change is announced), alert delivery to Alertmanager, and the
 * dashboard's activity figures; started when the app is ready, stopped when it closes.
 */
export function createObservability(server: Server, deps: AppDeps): Observability {
  const { app } = server;
  const { config, pools } = deps;
  const queueDepth = () => deps.boss.getQueueSize(GENERATION_QUEUE);
  const cacheStats = () => deps.cache.snapshot();
  const metrics = createAppMetrics({
    cache: () => {
      const c = cacheStats();
      return { l1: c.l1, l2: c.l2, database_loads: c.database_loads };
    },
    pools: () => pools.stats(),
    queueDepth,
  });
  registerReplicaMetrics(metrics.registry, pools.reads);
  const trackerSources: CacheRatioSource = {
    l1: () => deps.cache.stats.l1,
    breakers: () => {
      const states: Record<string, 'open' | 'half_open' | 'closed'> = {};
      const l2 = deps.cache.l2;
      if (l2) states.l2_redis = l2.stats().breaker as 'open' | 'half_open' | 'closed';
      return states;
    },
    denials: (windowMs) => metrics.authz.probing(windowMs),
    poolWaits: (window) => poolWaitWindows.stats(window, Date.now()),
  };
  const alertmanager = alertmanagerUrls(config.ALERTMANAGER_URL);
  const notifier =
    alertmanager.length > 0
      ? new AlertmanagerNotifier({
          urls: alertmanager,
          // The port it listens on (PORT, or the one the system chose for PORT=0).
          instance: () => {
            const address = app.server.address();
            return `${hostname()}:${typeof address === 'object' && address ? address.port : config.PORT}`;
          },
          // Several server processes on one port (WEB_CONCURRENCY) each judge their own traffic:
          // one process's resolution must not close another's alert.
          ...(cluster.isWorker && cluster.worker ? { labels: { process: String(cluster.worker.id) } } : {}),
          resendSeconds: config.ALERTMANAGER_RESEND_SECONDS,
          runbookUrl: config.ALERT_RUNBOOK_URL,
          onError: (error, url) =>
            app.log.warn(
              { err: error, alertmanager: url },
              'could not post alerts to Alertmanager; retrying',
            ),
        })
      : null;
  const tracker = new PerformanceTracker(trackerSources, deps.alertRules ?? DEFAULT_ALERT_RULES, (alert) => {
    notifier?.notify(alert);
    const line = {
      alert: alert.rule.name,
      severity: alert.rule.severity,
      value: alert.value,
      threshold: alert.rule.threshold,
    };
    if (alert.state === 'firing') app.log.warn(line, 'alert firing');
    else app.log.info(line, 'alert resolved');
  });
  tracker.enabled = config.TRACKING_ENABLED;

  // Alert rules: the code's definitions with the administrators' overrides (alert-rule-store.ts),
  // read at start and again whenever a change is announced or the invalidation stream reconnects.
  const ruleDefaults = deps.alertRules ?? DEFAULT_ALERT_RULES;
  let ruleOverrides: RuleOverride[] = [];
  const reloadAlertRules = async () => {
    ruleOverrides = await loadOverrides(pools.pg.authorization);
    tracker.setRules(rulesToEvaluate(ruleDefaults, ruleOverrides));
  };
  const rulesAnnounced = () =>
    reloadAlertRules().catch((error: unknown) =>
      app.log.warn({ err: error }, 'could not read the alert rules; keeping the ones in force'),
    );
  deps.bus.on('rules', rulesAnnounced);

  // The dashboard's activity: fleet-wide figures from the database (analytics pool, cached a few
  // seconds), this process's denials, 4xx/5xx and pool health from counters (see activity.ts).
  const statusTally = new StatusTally();
  const activity = new Activity({
    db: () => pools.db.analytics,
    sources: { statuses: statusTally, denials: () => metrics.authz.denials },
  });

  app.addHook('onReady', async () => {
    await rulesAnnounced();
    activity.instance.start();
    tracker.start();
    notifier?.start();
    // The per-subject denial windows of the probing rule (authz_denial_spike) move on every 10 s.
    metrics.authz.start();
  });
  app.addHook('onClose', async () => {
    deps.bus.off('rules', rulesAnnounced);
    activity.instance.stop();
    tracker.stop();
    notifier?.stop();
    metrics.authz.stop();
  });

  return {
    metrics,
    tracker,
    statusTally,
    activity,
    queueDepth,
    cacheStats,
    alertRules: {
      defaults: ruleDefaults,
      effective: () => effectiveRules(ruleDefaults, ruleOverrides),
      save: (changes, actorId) => saveChanges(pools.pg.write_heavy, changes, actorId),
      reload: reloadAlertRules,
    },
  };
}
