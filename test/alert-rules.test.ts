import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ALERT_RULES, type AlertRule, samplesOf } from '../src/platform/observability/alert-rules.js';
import { ALERTS_FILE } from '../src/platform/observability/generate-alerts.js';
import {
  forText,
  promqlOf,
  renderPrometheusRules,
  thresholdText,
} from '../src/platform/observability/prometheus-rules.js';
import {
  type AlertState,
  PerformanceTracker,
  type ProcessSource,
} from '../src/platform/observability/tracker.js';
import { signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const run = promisify(execFile);
const DEPLOY = new URL('../deploy/prometheus/', import.meta.url);
/** On every window's slot boundary, so window expiry is exact. */
const T0 = 1_800_000_000_000;
const SECOND = 1_000;
const MINUTE = 60 * SECOND;

describe('one definition, exported to Prometheus', () => {
  it('the committed deploy/prometheus/alerts.yml is what the definition generates', async () => {
    const committed = await readFile(ALERTS_FILE, 'utf8');
    expect(committed, 'deploy/prometheus/alerts.yml is stale: run `npm run generate:alerts`').toBe(
      renderPrometheusRules(),
    );
  });

  it('every rule has a unique name, a minimum sample count and a `for` of at least a minute', () => {
    expect(new Set(ALERT_RULES.map((r) => r.name)).size).toBe(ALERT_RULES.length);
    for (const rule of ALERT_RULES) {
      expect(rule.minSamples, rule.name).toBeGreaterThan(0);
      expect(rule.forSeconds ?? 0, rule.name).toBeGreaterThanOrEqual(60);
      expect(promqlOf(rule), rule.name).toContain(`>= ${rule.minSamples}`);
    }
  });

  it('the README table has every rule with its threshold, for, minimum samples and severity', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const section = readme.split('## Operating Velro: alert rules')[1]?.split('\n## ')[0] ?? '';
    const rows = section.split('\n').filter((line) => line.startsWith('| `'));
    expect(rows.map((row) => /^\| `([a-z0-9_]+)`/.exec(row)?.[1])).toEqual(ALERT_RULES.map((r) => r.name));
    for (const [k, rule] of ALERT_RULES.entries()) {
      const cells = (rows[k] ?? '').split(' | ').map((c) => c.trim());
      expect(cells.slice(2), rule.name).toEqual([
        thresholdText(rule),
        forText(rule.forSeconds ?? 0),
        `${rule.minSamples.toLocaleString('en')} ${samplesOf(rule)}`,
        `${rule.severity} |`,
      ]);
    }
  });

  it('a rule over a metric Prometheus cannot see is refused, not silently dropped', () => {
    const unknown: AlertRule = { ...(ALERT_RULES[0] as AlertRule), metric: 'process:open_files' };
    expect(() => renderPrometheusRules([unknown])).toThrow(/no Prometheus expression/);
  });
});

describe('the rules query metrics Velro really serves', () => {
  // With Redis, so the L2 circuit breaker exists and is reported.
  const fx = useTestApp({ redis: true });

  it('every metric name in alerts.yml is in /metrics, with bucket edges on the latency thresholds', async () => {
    const user = await signUp(fx.app);
    const check = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/authz/check',
      headers: { authorization: `Bearer ${user.accessToken}` },
      payload: { resource: { type: 'user', id: user.id }, permission: 'view' },
    });
    expect(check.statusCode).toBeLessThan(500);
    const res = await fx.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    const served = new Set(
      res.body
        .split('\n')
        .filter((line) => line !== '' && !line.startsWith('#'))
        .map((line) => line.split(/[{ ]/)[0]),
    );
    const rules = await readFile(ALERTS_FILE, 'utf8');
    const queried = new Set(
      rules
        .split('\n')
        .filter((line) => line.trim().startsWith('expr:'))
        .flatMap((line) => line.match(/velro_[a-z0-9_]+/g) ?? []),
    );
    expect(queried.size).toBeGreaterThanOrEqual(8);
    expect([...queried].filter((name) => !served.has(name))).toEqual([]);
    expect(res.body).toMatch(/velro_circuit_breaker_open\{breaker="l2_redis"\} 0/);
    expect(res.body).toMatch(
      /velro_http_request_duration_seconds_bucket\{le="0\.075",route="\/api\/v1\/authz\/check"/,
    );
    expect(res.body).toMatch(
      /velro_http_request_duration_seconds_bucket\{le="0\.15",route="\/api\/v1\/authz\/check"/,
    );
    const limit = res.body.match(/^velro_process_memory_limit_bytes (\d+)/m);
    expect(Number(limit?.[1])).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------------------------------------
// The in-process tracker with the shipped rules, on an injected clock and process.

function fakeProcess() {
  const p = { cpuSeconds: 0, residentBytes: 300e6, memoryLimitBytes: 1e9 };
  const source: ProcessSource = {
    cpuSeconds: () => p.cpuSeconds,
    residentBytes: () => p.residentBytes,
    memoryLimitBytes: () => p.memoryLimitBytes,
  };
  return { p, source };
}

function instance(rules: AlertRule[] = ALERT_RULES) {
  let clock = T0;
  const l1 = { hits: 0, misses: 0 };
  let breaker: 'open' | 'closed' = 'closed';
  const proc = fakeProcess();
  const notified: { name: string; state: AlertState['state']; at: number }[] = [];
  const tracker = new PerformanceTracker(
    { l1: () => ({ ...l1 }), breakers: () => ({ l2_redis: breaker }) },
    rules,
    (s) => notified.push({ name: s.rule.name, state: s.state, at: clock - T0 }),
    () => clock,
    proc.source,
  );
  const firing = () =>
    tracker
      .alertStates()
      .filter((a) => a.state === 'firing')
      .map((a) => a.rule.name)
      .sort();
  return {
    tracker,
    l1,
    proc: proc.p,
    notified,
    firing,
    elapsed: () => clock - T0,
    setBreaker: (s: 'open' | 'closed') => {
      breaker = s;
    },
    /**
     * Runs `ms` of time in 5-second evaluation ticks (as the service's timer does), calling
     * `each` before every tick, and returns every alert that was firing at any tick.
     */
    run(ms: number, each: (second: number) => void = () => {}) {
      const seen = new Set<string>();
      for (const end = clock + ms; clock < end; ) {
        clock += 5 * SECOND;
        each((clock - T0) / SECOND);
        tracker.tick();
        for (const name of firing()) seen.add(name);
      }
      return [...seen].sort();
    },
  };
}

/** What /api/v1/performance/health answers from the alert states. */
function healthOf(states: AlertState[]) {
  const firing = states.filter((a) => a.state === 'firing');
  if (firing.some((a) => a.rule.severity === 'critical')) return 'critical';
  return firing.some((a) => a.rule.severity === 'warning') ? 'degraded' : 'healthy';
}

/**
 * One developer trying Velro: the process starts (a CPU burst while it loads), signs up and signs
 * in a few times (argon2id makes those 60-120 ms), runs a dozen slow-ish cold authorization
 * checks, and keeps /dashboard open (a poll every 2 s) with a cold cache that mostly misses.
 */
function oneDeveloper(i: ReturnType<typeof instance>) {
  return (second: number) => {
    i.proc.cpuSeconds += second <= 10 ? 5 : 0.25;
    i.tracker.record('fast', 'GET /api/v1/performance/dashboard', 1_500, 200);
    i.tracker.record('fast', 'GET /api/v1/performance/dashboard', 1_200, 200);
    if (second % 15 === 0 && second <= 105)
      i.tracker.record('critical_auth', 'POST /api/v1/auth/login', 60_000 + second * 500, 200);
    if (second % 10 === 0 && second <= 120) {
      i.tracker.record('critical_auth', 'POST /api/v1/authz/check', 80_000 + second * 300, 200);
      i.l1.misses += 9;
      i.l1.hits += 1;
    }
    if (second === 30) i.tracker.record('standard', 'POST /api/v1/generations', 40_000, 500);
  };
}

/** The rules Velro shipped before this definition (what the dashboard turned DEGRADED with). */
const PREVIOUS_RULES: AlertRule[] = [
  {
    name: 'auth_slow',
    metric: 'group:auth:p95_ms',
    comparison: 'gt',
    threshold: 20,
    window: '5m',
    minSamples: 5,
    severity: 'warning',
  },
  {
    name: 'cache_hit_low',
    metric: 'cache:l1_hit_ratio',
    comparison: 'lt',
    threshold: 0.9,
    window: '5m',
    minSamples: 100,
    severity: 'critical',
  },
];

describe('a fresh instance used by one person', () => {
  it('never fires an alert and never reads DEGRADED in its first minutes', () => {
    const i = instance();
    const seen: string[] = [];
    const health = new Set<string>();
    const fired = i.run(3 * MINUTE, (second) => {
      oneDeveloper(i)(second);
      for (const name of i.firing()) seen.push(name);
      health.add(healthOf(i.tracker.alertStates()));
    });
    expect(fired).toEqual([]);
    expect(seen).toEqual([]);
    expect(healthOf(i.tracker.alertStates())).toBe('healthy');
    expect(i.notified).toEqual([]);
    expect([...health]).toEqual(['healthy']);
    // The quiet minutes after it: still nothing.
    expect(i.run(10 * MINUTE, (s) => i.tracker.record('fast', 'GET /health', 300 + (s % 7), 200))).toEqual(
      [],
    );
  });

  it('the same few minutes fired `auth_slow` and a critical `cache_hit_low` with the previous rules', () => {
    const i = instance(PREVIOUS_RULES);
    expect(i.run(2 * MINUTE, oneDeveloper(i))).toEqual(['auth_slow', 'cache_hit_low']);
    expect(healthOf(i.tracker.alertStates())).toBe('critical');
  });
});

describe('the shipped rules still fire on a real, sustained problem', () => {
  it('authorization p95 over 150 ms at 2 requests/s: critical after 2 minutes, warning after 5', () => {
    const i = instance();
    const slow = () => {
      for (let k = 0; k < 10; k++)
        i.tracker.record('critical_auth', 'POST /api/v1/authz/check', 160_000, 200);
    };
    i.run(60 * SECOND, slow);
    const pending = i.tracker.alertStates().find((a) => a.rule.name === 'authorization_p95_critical');
    expect(pending?.state).toBe('pending');
    i.run(2 * MINUTE, slow);
    expect(i.firing()).toEqual(['authorization_p95_critical']);
    const criticalAt = i.notified.find((n) => n.name === 'authorization_p95_critical')?.at ?? 0;
    // Judged from the first tick with 100 requests (50 s), firing 2 minutes later.
    expect(criticalAt).toBe(50 * SECOND + 2 * MINUTE);
    i.run(3 * MINUTE, slow);
    expect(i.firing()).toEqual(['authorization_p95_critical', 'authorization_p95_warning']);
    expect(healthOf(i.tracker.alertStates())).toBe('critical');

    // Fast again: both resolve once the slow requests leave the 5-minute window.
    i.run(6 * MINUTE, () => {
      for (let k = 0; k < 10; k++) i.tracker.record('critical_auth', 'POST /api/v1/authz/check', 2_000, 200);
    });
    expect(i.firing()).toEqual([]);
    expect(i.notified.map((n) => `${n.name} ${n.state}`)).toEqual([
      'authorization_p95_critical firing',
      'authorization_p95_warning firing',
      // Both resolve at the same evaluation, in the definition's order.
      'authorization_p95_warning ok',
      'authorization_p95_critical ok',
    ]);
  });

  it('a hit ratio of 70 % over 1,000+ lookups: every tier, but only after 10 minutes', () => {
    const i = instance();
    const lookups = () => {
      i.l1.hits += 70;
      i.l1.misses += 30;
    };
    expect(i.run(9 * MINUTE, lookups)).toEqual([]);
    i.run(3 * MINUTE, lookups);
    expect(i.firing()).toEqual([
      'cache_hit_ratio_below_80',
      'cache_hit_ratio_below_85',
      'cache_hit_ratio_below_90',
    ]);
  });

  it('a burst of first sights (a restart, a flush) does not fire: it leaves the window first', () => {
    const i = instance();
    expect(
      i.run(20 * MINUTE, (second) => {
        if (second <= 30) i.l1.misses += 500;
        i.l1.hits += 50;
      }),
    ).toEqual([]);
  });

  it('CPU over 70 % of a core and memory over 80 % of the limit: after 10 minutes; a breaker after 1', () => {
    const i = instance();
    i.setBreaker('open');
    i.proc.residentBytes = 900e6;
    const busy = () => {
      i.proc.cpuSeconds += 4.5; // 90 % of a core over each 5-second tick
    };
    i.run(55 * SECOND, busy);
    expect(i.firing()).toEqual([]);
    // Judged from the third measurement (15 s), firing a minute later.
    i.run(25 * SECOND, busy);
    expect(i.firing()).toEqual(['circuit_breaker_open']);
    i.run(10 * MINUTE, busy);
    expect(i.firing()).toEqual(['circuit_breaker_open', 'cpu_high', 'memory_high']);
    i.setBreaker('closed');
    i.run(5 * SECOND, busy);
    expect(i.firing()).toEqual(['cpu_high', 'memory_high']);
  });
});

// ---------------------------------------------------------------------------------------------
// promtool: the tool operators check rules with.

const promtool = await run('promtool', ['--version']).then(
  () => true,
  () => false,
);

describe('promtool', () => {
  if (!promtool) {
    it('is installed (Debian package `prometheus`)', () => {
      if (process.env.CI === 'true')
        throw new Error('promtool is missing: CI installs the Debian package `prometheus` (see .ci/run)');
      console.warn('promtool is not installed (apt-get install prometheus): the promtool checks are skipped');
    });
    return;
  }

  it('`promtool check rules` accepts deploy/prometheus/alerts.yml', async () => {
    const { stdout } = await run('promtool', ['check', 'rules', 'alerts.yml'], { cwd: DEPLOY });
    expect(stdout).toContain(`SUCCESS: ${ALERT_RULES.length} rules found`);
  });

  it('`promtool test rules` passes the unit tests of every rule', async () => {
    const result = await run('promtool', ['test', 'rules', 'alerts.test.yml'], { cwd: DEPLOY }).then(
      (r) => ({ ok: true, output: r.stdout + r.stderr }),
      (e: { stdout?: string; stderr?: string }) => ({ ok: false, output: `${e.stdout}${e.stderr}` }),
    );
    expect(result.ok, result.output).toBe(true);
    expect(result.output).toContain('SUCCESS');
    const tests = await readFile(new URL('alerts.test.yml', DEPLOY), 'utf8');
    for (const rule of ALERT_RULES)
      expect(tests, `no unit test for ${rule.name}`).toContain(`alertname: ${rule.name}`);
  });
});
