import { totalmem } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { ALERT_RULES, type AlertRule, ROUTE_GROUPS } from './alert-rules.js';
import { type Window, WindowedHistogram, type WindowStats } from './windowed-histogram.js';

export type { AlertRule } from './alert-rules.js';

/**
 * The seeds' PerformanceTracker: latency per route class and per endpoint over sliding windows,
 * targets evaluated continuously, and alert rules with firing/resolved state.
 */

export interface Target {
  name: string;
  description: string;
  /** What is measured: an endpoint group's p95, the L1 hit ratio, the error rate, throughput. */
  metric: string;
  comparison: 'lt' | 'gt';
  threshold: number;
  unit: string;
  /** Below this many samples in the window there is nothing to judge. */
  minSamples: number;
}

export interface AlertState {
  rule: AlertRule;
  /** `pending`: breached, but not yet for the rule's `forSeconds`. */
  state: 'firing' | 'pending' | 'ok' | 'insufficient_data';
  value: number | null;
  since: string | null;
  /** When the current breach began (pending or firing); null when not breached. */
  breached_since: string | null;
  last_fired_at: string | null;
  last_resolved_at: string | null;
}

function freshState(rule: AlertRule): AlertState {
  return {
    rule,
    state: 'insufficient_data',
    value: null,
    since: null,
    breached_since: null,
    last_fired_at: null,
    last_resolved_at: null,
  };
}

/** Endpoint groups of SPEC §7 over tracker endpoints (`METHOD /route`), from ROUTE_GROUPS. */
export const ENDPOINT_GROUPS: Record<string, (endpoint: string) => boolean> = Object.fromEntries(
  Object.entries(ROUTE_GROUPS).map(([name, group]) => {
    const route = new RegExp(`^(?:${group.route})$`);
    return [
      name,
      (endpoint: string) => {
        const space = endpoint.indexOf(' ');
        return (
          (group.method === undefined || endpoint.slice(0, space) === group.method) &&
          route.test(endpoint.slice(space + 1))
        );
      },
    ];
  }),
);

export const TARGETS: Target[] = [
  {
    name: 'auth',
    description: 'authentication p95 < 50 ms',
    metric: 'group:auth:p95_ms',
    comparison: 'lt',
    threshold: 50,
    unit: 'ms',
    minSamples: 5,
  },
  {
    name: 'authorization',
    description: 'authorization p95 < 75 ms',
    metric: 'group:authorization:p95_ms',
    comparison: 'lt',
    threshold: 75,
    unit: 'ms',
    minSamples: 5,
  },
  {
    name: 'generation_access',
    description: 'generation access p95 < 100 ms',
    metric: 'group:generation_access:p95_ms',
    comparison: 'lt',
    threshold: 100,
    unit: 'ms',
    minSamples: 5,
  },
  {
    name: 'media_url',
    description: 'media URL p95 < 200 ms',
    metric: 'group:media_url:p95_ms',
    comparison: 'lt',
    threshold: 200,
    unit: 'ms',
    minSamples: 5,
  },
  {
    name: 'team_ops',
    description: 'team operations p95 < 100 ms',
    metric: 'group:team_ops:p95_ms',
    comparison: 'lt',
    threshold: 100,
    unit: 'ms',
    minSamples: 5,
  },
  {
    name: 'l1_hit_ratio',
    description: 'L1 hit ratio > 95 %',
    metric: 'cache:l1_hit_ratio',
    comparison: 'gt',
    threshold: 0.95,
    unit: 'ratio',
    minSamples: 100,
  },
  {
    name: 'error_rate',
    description: 'error rate < 0.1 %',
    metric: 'all:error_rate',
    comparison: 'lt',
    threshold: 0.001,
    unit: 'ratio',
    minSamples: 100,
  },
  {
    name: 'throughput',
    description: 'more than 1,000 req/s (under load)',
    metric: 'all:throughput',
    comparison: 'gt',
    threshold: 1000,
    unit: 'req/s',
    minSamples: 60_000,
  },
];

/** The rules of alert-rules.ts: the same ones Prometheus is given. */
export const DEFAULT_ALERT_RULES: AlertRule[] = ALERT_RULES;

export interface CacheRatioSource {
  /** Cumulative L1 hits and misses. */
  l1(): { hits: number; misses: number };
  /** Waits for a database connection over a window (all pools); without it the pool rule waits for data. */
  poolWaits?(window: Window): WindowStats;
  /** Circuit breakers by name and state; without it the breaker rule waits for data. */
  breakers?(): Record<string, 'open' | 'half_open' | 'closed'>;
  /**
   * Authorization denials over the last `windowMs`: the most by one subject of resources it cannot
   * see, and all of them (the probing rule's value and sample count).
   */
  denials?(windowMs: number): { maxPerSubject: number; denials: number };
}

/** The process as the CPU and memory rules see it (injectable, so tests own the figures). */
export interface ProcessSource {
  /** CPU time used since start (user + system), in seconds. */
  cpuSeconds(): number;
  residentBytes(): number;
  /** What the process may use: its cgroup limit when it has one, else the machine's memory. */
  memoryLimitBytes(): number;
}

export const realProcess: ProcessSource = {
  cpuSeconds: () => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1e6;
  },
  residentBytes: () => process.memoryUsage.rss(),
  memoryLimitBytes: () => {
    const constrained = process.constrainedMemory?.() ?? 0;
    return constrained > 0 && constrained < Number.MAX_SAFE_INTEGER ? constrained : totalmem();
  },
};

interface ProcessSample {
  at: number;
  cpuSeconds: number;
  memoryRatio: number;
  loopP99Ms: number;
  breakersOpen: number | null;
}

const finiteOr0 = (v: number) => (Number.isFinite(v) ? v : 0);

const WINDOW_MS: Record<Window, number> = { '1m': 60_000, '5m': 300_000, '1h': 3_600_000 };

const WINDOWS: Window[] = ['1m', '5m', '1h'];

export class PerformanceTracker {
  private readonly classes = new Map<string, WindowedHistogram>();
  private readonly endpoints = new Map<string, WindowedHistogram>();
  private readonly all = new WindowedHistogram();
  private readonly alerts = new Map<string, AlertState>();
  private readonly loop = monitorEventLoopDelay({ resolution: 10 });
  /** Cache counters sampled every evaluation, to compute windowed hit ratios from cumulative ones. */
  private cacheSamples: { at: number; hits: number; misses: number }[] = [];
  /** One measurement of the process (CPU, memory, event loop, breakers) per evaluation tick. */
  private processSamples: ProcessSample[] = [];
  private timer: NodeJS.Timeout | null = null;
  enabled = true;

  constructor(
    private readonly cache: CacheRatioSource | null,
    rules: AlertRule[] = DEFAULT_ALERT_RULES,
    private readonly onAlert: (state: AlertState) => void = () => {},
    private readonly now: () => number = Date.now,
    private readonly proc: ProcessSource = realProcess,
  ) {
    this.current = rules;
    for (const rule of rules) this.alerts.set(rule.name, freshState(rule));
  }

  private current: AlertRule[];

  /** The rules evaluated now. */
  get rules(): AlertRule[] {
    return this.current;
  }

  /**
   * New settings for the rules (an administrator's change, PUT /admin/alert-rules): a rule kept
   * keeps its state (a firing alert stays firing until the new threshold says otherwise, judged at
   * the next evaluation); a rule no longer given (turned off) is resolved if it was firing, so
   * nothing downstream keeps it open; a rule newly given starts without data.
   */
  setRules(rules: AlertRule[]): void {
    const wanted = new Map(rules.map((rule) => [rule.name, rule]));
    const at = new Date(this.now()).toISOString();
    for (const [name, state] of this.alerts) {
      const rule = wanted.get(name);
      if (rule) {
        state.rule = rule;
        continue;
      }
      if (state.state === 'firing') {
        state.state = 'ok';
        state.since = at;
        state.last_resolved_at = at;
        state.breached_since = null;
        this.onAlert(state);
      }
      this.alerts.delete(name);
    }
    for (const rule of rules) if (!this.alerts.has(rule.name)) this.alerts.set(rule.name, freshState(rule));
    this.current = rules;
  }

  /** The hot path: one call per response. */
  record(routeClass: string, endpoint: string, micros: number, status: number): void {
    if (!this.enabled) return;
    const now = this.now();
    const isError = status >= 500;
    this.all.record(micros, isError, now);
    let c = this.classes.get(routeClass);
    if (!c) {
      c = new WindowedHistogram();
      this.classes.set(routeClass, c);
    }
    c.record(micros, isError, now);
    let e = this.endpoints.get(endpoint);
    if (!e) {
      e = new WindowedHistogram();
      this.endpoints.set(endpoint, e);
    }
    e.record(micros, isError, now);
  }

  start(everyMs = 5_000): void {
    this.loop.enable();
    this.sampleCache();
    this.timer = setInterval(() => this.tick(), everyMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.loop.disable();
  }

  /** What the timer does: measure the cache and the process, then evaluate every rule. */
  tick(): AlertState[] {
    this.sampleCache();
    this.sampleProcess();
    return this.evaluateAlerts();
  }

  private sampleProcess(): void {
    const at = this.now();
    const limit = this.proc.memoryLimitBytes();
    const breakers = this.cache?.breakers?.();
    this.processSamples.push({
      at,
      cpuSeconds: this.proc.cpuSeconds(),
      memoryRatio: limit > 0 ? this.proc.residentBytes() / limit : 0,
      // Each measurement covers the time since the previous one (as prom-client's lag metrics do).
      loopP99Ms: finiteOr0(this.loop.percentile(99) / 1e6),
      breakersOpen: breakers ? Object.values(breakers).filter((s) => s === 'open').length : null,
    });
    this.loop.reset();
    const horizon = at - WINDOW_MS['1h'] - 10_000;
    while (this.processSamples.length > 2 && (this.processSamples[0]?.at ?? at) < horizon)
      this.processSamples.shift();
  }

  /** Process measurements over a window: CPU as a rate between the first and last, others the last. */
  private processMetric(name: string, window: Window): { value: number | null; samples: number } {
    const from = this.now() - WINDOW_MS[window];
    const inWindow = this.processSamples.filter((s) => s.at >= from);
    const last = inWindow.at(-1);
    const first = inWindow[0];
    if (!last || !first) {
      // Before the first measurement, the event loop figure is the one since monitoring began.
      if (name === 'event_loop_p99_ms') return { value: this.loop.percentile(99) / 1e6, samples: 0 };
      return { value: null, samples: 0 };
    }
    const samples = inWindow.length;
    switch (name) {
      case 'cpu_ratio':
        return last.at > first.at
          ? { value: (last.cpuSeconds - first.cpuSeconds) / ((last.at - first.at) / 1000), samples }
          : { value: null, samples };
      case 'memory_ratio':
        return { value: last.memoryRatio, samples };
      case 'event_loop_p99_ms':
        return { value: last.loopP99Ms, samples };
      case 'open':
        return last.breakersOpen === null
          ? { value: null, samples: 0 }
          : { value: last.breakersOpen, samples: inWindow.filter((s) => s.breakersOpen !== null).length };
      default:
        return { value: null, samples: 0 };
    }
  }

  private sampleCache(): void {
    if (!this.cache) return;
    const { hits, misses } = this.cache.l1();
    const at = this.now();
    this.cacheSamples.push({ at, hits, misses });
    const horizon = at - 3_600_000 - 10_000;
    while (this.cacheSamples.length > 2 && (this.cacheSamples[0]?.at ?? at) < horizon)
      this.cacheSamples.shift();
  }

  /** L1 hit ratio over a window, from cumulative counters; null when there were no lookups. */
  cacheRatio(window: Window): { ratio: number | null; lookups: number } {
    if (!this.cache) return { ratio: null, lookups: 0 };
    const now = this.now();
    const current = this.cache.l1();
    const span = WINDOW_MS[window];
    const base = this.cacheSamples.find((s) => s.at >= now - span) ??
      this.cacheSamples[0] ?? { hits: 0, misses: 0 };
    const hits = current.hits - base.hits;
    const lookups = hits + (current.misses - base.misses);
    return { ratio: lookups === 0 ? null : hits / lookups, lookups };
  }

  /** Every endpoint in a group, merged by summing counts (percentiles: the worst endpoint's). */
  private group(name: string, window: Window): WindowStats {
    const matches = ENDPOINT_GROUPS[name];
    const parts = [...this.endpoints.entries()]
      .filter(([e]) => matches?.(e))
      .map(([, h]) => h.stats(window, this.now()));
    const count = parts.reduce((a, p) => a + p.count, 0);
    const errors = parts.reduce((a, p) => a + p.errors, 0);
    const worst = (k: 'p50_ms' | 'p95_ms' | 'p99_ms' | 'max_ms') =>
      parts.reduce((a, p) => (p.count > 0 ? Math.max(a, p[k]) : a), 0);
    return {
      count,
      errors,
      throughput: parts.reduce((a, p) => a + p.throughput, 0),
      error_rate: count === 0 ? 0 : errors / count,
      p50_ms: worst('p50_ms'),
      p95_ms: worst('p95_ms'),
      p99_ms: worst('p99_ms'),
      max_ms: worst('max_ms'),
    };
  }

  /** Resolves `metric` over a window to a value and its sample count. */
  metric(metric: string, window: Window): { value: number | null; samples: number } {
    const [scope, name, field] = metric.split(':');
    if (scope === 'cache' && name === 'l1_hit_ratio') {
      const { ratio, lookups } = this.cacheRatio(window);
      return { value: ratio, samples: lookups };
    }
    if ((scope === 'process' || scope === 'breaker') && name) return this.processMetric(name, window);
    if (scope === 'db' && name === 'pool_wait' && field) {
      const waits = this.cache?.poolWaits?.(window);
      if (!waits || !(field in waits)) return { value: null, samples: 0 };
      return { value: waits[field as keyof WindowStats], samples: waits.count };
    }
    if (scope === 'security' && name === 'denials_per_subject_max') {
      const denials = window === '1h' ? undefined : this.cache?.denials?.(WINDOW_MS[window]);
      return denials
        ? { value: denials.maxPerSubject, samples: denials.denials }
        : { value: null, samples: 0 };
    }
    let stats: WindowStats | undefined;
    let key: string | undefined = field ? undefined : name;
    if (scope === 'all') stats = this.all.stats(window, this.now());
    else if (scope === 'group' && name) {
      stats = this.group(name, window);
      key = field;
    } else if (scope === 'class' && name) {
      stats = this.classes.get(name)?.stats(window, this.now());
      key = field;
    }
    if (!stats || !key || !(key in stats)) return { value: null, samples: 0 };
    return { value: stats[key as keyof WindowStats], samples: stats.count };
  }

  /**
   * Judges every rule, as Prometheus does: a breach with enough samples is `pending` until it has
   * lasted the rule's `forSeconds`, then `firing` (notified once); back within the threshold, or
   * without enough samples, a pending alert is dropped silently and a firing one resolves.
   */
  evaluateAlerts(): AlertState[] {
    const nowMs = this.now();
    const at = new Date(nowMs).toISOString();
    for (const state of this.alerts.values()) {
      const { rule } = state;
      const { value, samples } = this.metric(rule.metric, rule.window);
      state.value = value;
      const judged = value !== null && samples >= rule.minSamples;
      const breached = judged && (rule.comparison === 'gt' ? value > rule.threshold : value < rule.threshold);
      if (breached) {
        if (state.breached_since === null) state.breached_since = at;
        if (state.state === 'firing') continue;
        const lastedMs = nowMs - Date.parse(state.breached_since);
        if (lastedMs >= (rule.forSeconds ?? 0) * 1000) {
          state.state = 'firing';
          state.since = at;
          state.last_fired_at = at;
          this.onAlert(state);
        } else if (state.state !== 'pending') {
          state.state = 'pending';
          state.since = at;
        }
        continue;
      }
      state.breached_since = null;
      if (state.state === 'firing') {
        state.state = 'ok';
        state.since = at;
        state.last_resolved_at = at;
        this.onAlert(state);
      } else if (!judged) {
        if (state.state === 'pending') {
          state.state = 'ok';
          state.since = at;
        } else if (state.state !== 'ok') state.state = 'insufficient_data';
      } else if (state.state !== 'ok') {
        state.state = 'ok';
        state.since = at;
      }
    }
    return [...this.alerts.values()];
  }

  alertStates(): AlertState[] {
    return [...this.alerts.values()];
  }

  /** Each target with its current figures (5-minute window) and pass / fail / insufficient data. */
  validate(window: Window = '5m') {
    return TARGETS.map((target) => {
      const { value, samples } = this.metric(target.metric, window);
      const judged = value !== null && samples >= target.minSamples;
      const pass =
        judged &&
        (target.comparison === 'lt'
          ? (value as number) < target.threshold
          : (value as number) > target.threshold);
      const [scope, group] = target.metric.split(':');
      const latency = scope === 'group' && group ? this.group(group, window) : null;
      return {
        name: target.name,
        description: target.description,
        threshold: target.threshold,
        unit: target.unit,
        value,
        samples,
        status: judged ? (pass ? 'pass' : 'fail') : 'insufficient_data',
        ...(latency ? { p50_ms: latency.p50_ms, p95_ms: latency.p95_ms, p99_ms: latency.p99_ms } : {}),
      };
    });
  }

  summary(window: Window = '1m') {
    const now = this.now();
    const byClass: Record<string, WindowStats> = {};
    for (const [name, h] of this.classes) byClass[name] = h.stats(window, now);
    const byEndpoint: Record<string, WindowStats> = {};
    for (const [name, h] of this.endpoints) {
      const stats = h.stats(window, now);
      if (stats.count > 0) byEndpoint[name] = stats;
    }
    return { window, overall: this.all.stats(window, now), by_class: byClass, by_endpoint: byEndpoint };
  }

  windows(): Window[] {
    return WINDOWS;
  }
}
