import { validateMetricName } from 'prom-client';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type AlertRule,
  type AlertState,
  PerformanceTracker,
  TARGETS,
} from '../src/platform/observability/tracker.js';
import { WindowedHistogram } from '../src/platform/observability/windowed-histogram.js';
import { bearer, errorOf, type SignedUp, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

/** A start time on every window's slot boundary (10 s, 1 min, 5 min), so expiry times are exact. */
const T0 = 1_800_000_000_000;
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;

/** |actual − expected| within `relative` of expected. */
function near(actual: number, expected: number, relative: number) {
  expect(Math.abs(actual - expected), `${actual} vs ${expected}`).toBeLessThanOrEqual(expected * relative);
}

describe('WindowedHistogram percentiles against known distributions', () => {
  it('uniform 1..10,000 µs: p50 ≈ 5 ms, p95 ≈ 9.5 ms, p99 ≈ 9.9 ms within 1 %', () => {
    const h = new WindowedHistogram();
    for (let us = 1; us <= 10_000; us++) h.record(us, us % 100 === 0, T0);
    const s = h.stats('1m', T0 + 1_000);
    expect(s.count).toBe(10_000);
    expect(s.errors).toBe(100);
    expect(s.error_rate).toBeCloseTo(0.01, 10);
    expect(s.throughput).toBeCloseTo(10_000 / 60, 6);
    near(s.p50_ms, 5, 0.01);
    near(s.p95_ms, 9.5, 0.01);
    near(s.p99_ms, 9.9, 0.01);
    near(s.max_ms, 10, 0.01);
    // Percentiles are ordered.
    expect(s.p50_ms).toBeLessThanOrEqual(s.p95_ms);
    expect(s.p95_ms).toBeLessThanOrEqual(s.p99_ms);
    expect(s.p99_ms).toBeLessThanOrEqual(s.max_ms);
  });

  it('exponential with a 2 ms mean: p50 = 2·ln 2, p95 = 2·ln 20, p99 = 2·ln 100 within 2 %', () => {
    const h = new WindowedHistogram();
    const n = 20_000;
    // Deterministic quantiles of the distribution: the inverse CDF at evenly spaced points.
    for (let i = 0; i < n; i++) h.record(-2_000 * Math.log(1 - (i + 0.5) / n), false, T0);
    const s = h.stats('5m', T0);
    expect(s.count).toBe(n);
    near(s.p50_ms, 2 * Math.log(2), 0.02);
    near(s.p95_ms, 2 * Math.log(20), 0.02);
    near(s.p99_ms, 2 * Math.log(100), 0.02);
  });

  it('bimodal: 90 % at 1 ms and 10 % at 100 ms puts p50 on the fast mode and p95/p99 on the slow one', () => {
    const h = new WindowedHistogram();
    for (let i = 0; i < 1_000; i++) h.record(i % 10 === 0 ? 100_000 : 1_000, false, T0);
    const s = h.stats('1h', T0);
    near(s.p50_ms, 1, 0.01);
    near(s.p95_ms, 100, 0.01);
    near(s.p99_ms, 100, 0.01);
  });

  it('clamps out-of-range values instead of throwing', () => {
    const h = new WindowedHistogram();
    h.record(0, false, T0);
    h.record(10 * 60 * 1e6, false, T0);
    const s = h.stats('1m', T0);
    expect(s.count).toBe(2);
    near(s.max_ms, 120_000, 0.01);
  });

  it('each window forgets samples older than itself, and only those', () => {
    const h = new WindowedHistogram();
    for (let i = 0; i < 100; i++) h.record(1_000, false, T0);
    const count = (w: '1m' | '5m' | '1h', at: number) => h.stats(w, at).count;
    expect(count('1m', T0 + 59_999)).toBe(100);
    expect(count('1m', T0 + 60_000)).toBe(0);
    expect(count('5m', T0 + 299_999)).toBe(100);
    expect(count('5m', T0 + 300_000)).toBe(0);
    expect(count('1h', T0 + 3_599_999)).toBe(100);
    expect(count('1h', T0 + 3_600_000)).toBe(0);
    // A slot reused a lap later starts from zero.
    h.record(5_000, false, T0 + 60_000);
    const later = h.stats('1m', T0 + 60_000);
    expect(later.count).toBe(1);
    near(later.p50_ms, 5, 0.01);
  });

  it('counts every sample exactly once in each window across 70 minutes of 10-second slots', () => {
    const h = new WindowedHistogram();
    // One sample every second, each with its own value and every tenth an error, for 70 minutes.
    const at = (second: number) => T0 + second * 1_000;
    const seconds = 70 * 60;
    for (let t = 0; t < seconds; t++) h.record(1_000 + t, t % 10 === 0, at(t));
    const now = at(seconds - 1);
    // The reference: samples whose 10-second slot starts inside the window (slots are the unit).
    const expected = (lengthMs: number, slotMs: number) => {
      let count = 0;
      let errors = 0;
      for (let t = 0; t < seconds; t++) {
        const start = at(t) - (at(t) % slotMs);
        if (start > now - lengthMs) {
          count += 1;
          if (t % 10 === 0) errors += 1;
        }
      }
      return { count, errors };
    };
    for (const [w, lengthMs, slotMs] of [
      ['1m', 60_000, 10_000],
      ['5m', 300_000, 60_000],
      ['1h', 3_600_000, 300_000],
    ] as const) {
      const s = h.stats(w, now);
      expect({ w, count: s.count, errors: s.errors }).toEqual({ w, ...expected(lengthMs, slotMs) });
    }
    // The longest window holds the newest hour's values only: the largest is the last one recorded.
    near(h.stats('1h', now).max_ms, (1_000 + seconds - 1) / 1000, 0.01);
  });
});

describe('PerformanceTracker with an injected clock', () => {
  it('reports percentiles per route class and endpoint, and expires them with the clock', () => {
    let clock = T0;
    const tracker = new PerformanceTracker(
      null,
      [],
      () => {},
      () => clock,
    );
    for (let us = 1; us <= 10_000; us++) tracker.record('fast', 'GET /api/v1/things/:id', us, 200);
    for (let i = 0; i < 50; i++) tracker.record('heavy', 'POST /api/v1/things', 40_000, i < 5 ? 503 : 202);

    const summary = tracker.summary('1m');
    const fast = summary.by_class.fast;
    expect(fast?.count).toBe(10_000);
    near(fast?.p50_ms ?? 0, 5, 0.01);
    near(fast?.p95_ms ?? 0, 9.5, 0.01);
    near(fast?.p99_ms ?? 0, 9.9, 0.01);
    expect(summary.by_endpoint['GET /api/v1/things/:id']?.count).toBe(10_000);
    expect(summary.by_class.heavy).toMatchObject({ count: 50, errors: 5, error_rate: 0.1 });
    expect(summary.overall.count).toBe(10_050);
    expect(tracker.metric('class:fast:p95_ms', '1m').value).toBe(fast?.p95_ms);
    expect(tracker.metric('class:heavy:error_rate', '1m')).toEqual({ value: 0.1, samples: 50 });
    expect(tracker.metric('class:nothing:p95_ms', '1m')).toEqual({ value: null, samples: 0 });

    clock = T0 + 60_000;
    expect(tracker.summary('1m').overall.count).toBe(0);
    expect(tracker.summary('1m').by_endpoint).toEqual({});
    expect(tracker.summary('5m').overall.count).toBe(10_050);
    clock = T0 + 300_000;
    expect(tracker.summary('5m').overall.count).toBe(0);
    expect(tracker.summary('1h').by_class.fast?.count).toBe(10_000);
    clock = T0 + 3_600_000;
    expect(tracker.summary('1h').overall.count).toBe(0);
  });

  it('records nothing while disabled', () => {
    const tracker = new PerformanceTracker(
      null,
      [],
      () => {},
      () => T0,
    );
    tracker.enabled = false;
    tracker.record('fast', 'GET /x', 1_000, 200);
    expect(tracker.summary('1m').overall.count).toBe(0);
  });

  it('judges each target: pass, fail, or insufficient data below its minimum samples', () => {
    const tracker = new PerformanceTracker(
      null,
      [],
      () => {},
      () => T0,
    );
    for (let i = 0; i < 5; i++) tracker.record('critical_auth', 'POST /api/v1/auth/login', 8_000, 200);
    for (let i = 0; i < 5; i++) tracker.record('standard', 'PATCH /api/v1/teams/:id', 150_000, 200);
    for (let i = 0; i < 4; i++) tracker.record('critical_auth', 'POST /api/v1/authz/check', 1_000, 200);
    const byName = Object.fromEntries(tracker.validate('5m').map((t) => [t.name, t]));
    expect(Object.keys(byName).sort()).toEqual(TARGETS.map((t) => t.name).sort());
    expect(byName.auth).toMatchObject({ status: 'pass', samples: 5 });
    near(byName.auth?.p95_ms ?? 0, 8, 0.01);
    expect(byName.team_ops).toMatchObject({ status: 'fail', samples: 5 });
    expect(byName.authorization).toMatchObject({ status: 'insufficient_data', samples: 4 });
    expect(byName.throughput?.status).toBe('insufficient_data');
    expect(byName.l1_hit_ratio?.status).toBe('insufficient_data');
  });
});

describe('alert rules', () => {
  const slowFast: AlertRule = {
    name: 'fast_slow',
    metric: 'class:fast:p95_ms',
    comparison: 'gt',
    threshold: 20,
    window: '1m',
    minSamples: 5,
    severity: 'warning',
  };
  const hitsLow: AlertRule = {
    name: 'hits_low',
    metric: 'cache:l1_hit_ratio',
    comparison: 'lt',
    threshold: 0.9,
    window: '5m',
    minSamples: 100,
    severity: 'critical',
  };

  function setup(rules: AlertRule[]) {
    let clock = T0;
    const l1 = { hits: 0, misses: 0 };
    const notified: { name: string; state: AlertState['state'] }[] = [];
    const tracker = new PerformanceTracker(
      { l1: () => ({ ...l1 }) },
      rules,
      (state) => notified.push({ name: state.rule.name, state: state.state }),
      () => clock,
    );
    const stateOf = (name: string) => tracker.evaluateAlerts().find((a) => a.rule.name === name);
    return {
      tracker,
      l1,
      notified,
      stateOf,
      advance: (ms: number) => {
        clock += ms;
      },
    };
  }

  it('waits for minSamples, fires once on a breach, and resolves on recovery', () => {
    const { tracker, notified, stateOf, advance } = setup([slowFast]);
    expect(tracker.alertStates()[0]?.state).toBe('insufficient_data');

    for (let i = 0; i < 4; i++) tracker.record('fast', 'GET /a', 50_000, 200);
    const waiting = stateOf('fast_slow');
    expect(waiting?.state).toBe('insufficient_data');
    near(waiting?.value ?? 0, 50, 0.01);
    expect(notified).toEqual([]);

    tracker.record('fast', 'GET /a', 50_000, 200);
    advance(1_000);
    const fired = stateOf('fast_slow');
    expect(fired?.state).toBe('firing');
    expect(fired?.last_fired_at).toBe(new Date(T0 + 1_000).toISOString());
    expect(fired?.since).toBe(fired?.last_fired_at);
    expect(notified).toEqual([{ name: 'fast_slow', state: 'firing' }]);

    // Still breached: no second notification.
    advance(1_000);
    expect(stateOf('fast_slow')?.state).toBe('firing');
    expect(notified).toHaveLength(1);

    // Enough fast requests bring p95 under the threshold.
    for (let i = 0; i < 200; i++) tracker.record('fast', 'GET /a', 2_000, 200);
    advance(1_000);
    const resolved = stateOf('fast_slow');
    expect(resolved?.state).toBe('ok');
    expect(resolved?.last_resolved_at).toBe(new Date(T0 + 3_000).toISOString());
    expect(resolved?.last_fired_at).toBe(new Date(T0 + 1_000).toISOString());
    expect(notified).toEqual([
      { name: 'fast_slow', state: 'firing' },
      { name: 'fast_slow', state: 'ok' },
    ]);

    // A new breach fires again.
    for (let i = 0; i < 400; i++) tracker.record('fast', 'GET /a', 90_000, 200);
    advance(1_000);
    expect(stateOf('fast_slow')?.state).toBe('firing');
    expect(notified).toHaveLength(3);
  });

  it('resolves a firing alert when its window runs out of samples', () => {
    const { tracker, notified, stateOf, advance } = setup([slowFast]);
    for (let i = 0; i < 10; i++) tracker.record('fast', 'GET /a', 50_000, 200);
    expect(stateOf('fast_slow')?.state).toBe('firing');
    advance(60_000);
    expect(stateOf('fast_slow')?.state).toBe('ok');
    expect(notified.map((n) => n.state)).toEqual(['firing', 'ok']);
  });

  it('judges the L1 hit ratio only past minSamples lookups, and over its window', () => {
    const { l1, notified, stateOf, advance } = setup([hitsLow]);
    l1.hits = 50;
    l1.misses = 40;
    expect(stateOf('hits_low')).toMatchObject({ state: 'insufficient_data' });
    l1.misses = 60;
    expect(stateOf('hits_low')).toMatchObject({ state: 'firing', value: 50 / 110 });
    l1.hits += 10_000;
    advance(5_000);
    expect(stateOf('hits_low')?.state).toBe('ok');
    expect(notified).toEqual([
      { name: 'hits_low', state: 'firing' },
      { name: 'hits_low', state: 'ok' },
    ]);
  });

  it('computes the hit ratio from counters sampled at start, not since the process began', () => {
    let clock = T0;
    const l1 = { hits: 100_000, misses: 0 };
    const tracker = new PerformanceTracker(
      { l1: () => ({ ...l1 }) },
      [],
      () => {},
      () => clock,
    );
    tracker.start(3_600_000);
    try {
      clock += 10_000;
      l1.misses += 300;
      l1.hits += 100;
      expect(tracker.cacheRatio('1m')).toEqual({ ratio: 0.25, lookups: 400 });
    } finally {
      tracker.stop();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Prometheus text format

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

function parseValue(raw: string, where: string): number {
  if (raw === '+Inf') return Number.POSITIVE_INFINITY;
  if (raw === '-Inf') return Number.NEGATIVE_INFINITY;
  if (raw === 'NaN') return Number.NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(raw)) throw new Error(`${where}: bad value ${raw}`);
  return Number(raw);
}

function parseLabels(src: string, where: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < src.length) {
    const key = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(src.slice(i));
    if (!key?.[1]) throw new Error(`${where}: bad label at ${src.slice(i)}`);
    i += key[0].length;
    let value = '';
    for (;;) {
      const c = src[i];
      if (c === undefined) throw new Error(`${where}: unterminated label value`);
      if (c === '\\') {
        const next = src[i + 1];
        if (next !== '\\' && next !== '"' && next !== 'n') throw new Error(`${where}: bad escape \\${next}`);
        value += next === 'n' ? '\n' : next;
        i += 2;
        continue;
      }
      i += 1;
      if (c === '"') break;
      value += c;
    }
    if (key[1] in labels) throw new Error(`${where}: duplicate label ${key[1]}`);
    labels[key[1]] = value;
    if (src[i] === ',') i += 1;
    else if (i < src.length) throw new Error(`${where}: expected , after a label`);
  }
  return labels;
}

/** Families of a samples' name: a histogram's _bucket/_sum/_count, a summary's _sum/_count. */
function familyOf(families: Map<string, Family>, name: string): Family | undefined {
  const exact = families.get(name);
  if (exact) return exact;
  const suffix = /_(bucket|sum|count)$/.exec(name);
  if (!suffix?.[1]) return undefined;
  const base = families.get(name.slice(0, -suffix[0].length));
  if (base?.type === 'histogram') return base;
  if (base?.type === 'summary' && suffix[1] !== 'bucket') return base;
  return undefined;
}

/**
 * A strict reader of the Prometheus text exposition format (0.0.4): every sample belongs to a family
 * declared by # TYPE before it, names and labels are well formed, values are numbers, histograms
 * have cumulative buckets ending in +Inf equal to their _count.
 */
function parsePrometheus(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const lines = text.split('\n');
  lines.forEach((line, index) => {
    const where = `line ${index + 1}`;
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) ?(.*)$/.exec(line);
      if (!meta) return; // a plain comment
      const [, kind, name = '', rest = ''] = meta;
      let family = families.get(name);
      if (!family) {
        family = { name, type: 'untyped', help: '', samples: [] };
        families.set(name, family);
      }
      if (kind === 'HELP') family.help = rest;
      else {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest))
          throw new Error(`${where}: bad type ${rest}`);
        if (family.samples.length > 0) throw new Error(`${where}: TYPE after samples of ${name}`);
        family.type = rest;
      }
      return;
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nameMatch) throw new Error(`${where}: bad sample ${line}`);
    const name = nameMatch[0];
    let rest = line.slice(name.length);
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) {
      let i = 1;
      let quoted = false;
      for (; i < rest.length; i++) {
        const c = rest[i];
        if (quoted && c === '\\') i += 1;
        else if (c === '"') quoted = !quoted;
        else if (c === '}' && !quoted) break;
      }
      if (i >= rest.length) throw new Error(`${where}: unterminated labels`);
      labels = parseLabels(rest.slice(1, i), where);
      rest = rest.slice(i + 1);
    }
    const fields = rest.trim().split(/\s+/);
    if (fields.length < 1 || fields.length > 2 || !rest.startsWith(' '))
      throw new Error(`${where}: bad sample ${line}`);
    if (fields[1] !== undefined && !/^-?\d+$/.test(fields[1])) throw new Error(`${where}: bad timestamp`);
    const family = familyOf(families, name);
    if (!family) throw new Error(`${where}: sample ${name} of no declared family`);
    family.samples.push({ name, labels, value: parseValue(fields[0] ?? '', where) });
  });

  for (const family of families.values()) {
    if (!validateMetricName(family.name)) throw new Error(`bad metric name ${family.name}`);
    if (family.type !== 'histogram') continue;
    const series = new Map<string, { buckets: [number, number][]; count?: number }>();
    for (const s of family.samples) {
      const { le, ...rest } = s.labels;
      const key = JSON.stringify(Object.entries(rest).sort());
      const entry = series.get(key) ?? { buckets: [] };
      series.set(key, entry);
      if (s.name.endsWith('_bucket')) {
        if (le === undefined) throw new Error(`${family.name}: bucket without le`);
        entry.buckets.push([parseValue(le, family.name), s.value]);
      } else if (s.name.endsWith('_count')) entry.count = s.value;
    }
    for (const [key, { buckets, count }] of series) {
      const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < sorted.length; i++) {
        if ((sorted[i]?.[1] ?? 0) < (sorted[i - 1]?.[1] ?? 0))
          throw new Error(`${family.name}${key}: buckets not cumulative`);
      }
      const inf = sorted.at(-1);
      if (!inf || inf[0] !== Number.POSITIVE_INFINITY || inf[1] !== count)
        throw new Error(`${family.name}${key}: +Inf bucket missing or unequal to _count`);
    }
  }
  return families;
}

describe('the Prometheus reader itself', () => {
  it('reads escapes and refuses malformed text', () => {
    const ok = parsePrometheus(
      '# HELP x_total things\n# TYPE x_total counter\nx_total{a="q\\"uo,te}",b="back\\\\slash\\n"} 3 1700000000\n',
    );
    expect(ok.get('x_total')?.samples[0]).toEqual({
      name: 'x_total',
      labels: { a: 'q"uo,te}', b: 'back\\slash\n' },
      value: 3,
    });
    expect(() => parsePrometheus('orphan 1\n')).toThrow(/no declared family/);
    expect(() => parsePrometheus('# TYPE g gauge\ng{a="1} 1\n')).toThrow();
    expect(() => parsePrometheus('# TYPE g gauge\ng one\n')).toThrow(/bad value/);
    expect(() =>
      parsePrometheus('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\n'),
    ).toThrow(/cumulative/);
  });
});

// ---------------------------------------------------------------------------------------------
// Through the real app

describe('metrics and performance endpoints after real traffic', () => {
  const fx = useTestApp({ redis: true, worker: true });
  let users: SignedUp[];
  let generationId: string;

  beforeAll(async () => {
    users = await Promise.all([signUp(fx.app), signUp(fx.app), signUp(fx.app)]);
    const [owner, other] = users as [SignedUp, SignedUp, SignedUp];
    const get = (url: string, who: SignedUp = owner) =>
      fx.app.inject({ method: 'GET', url, headers: bearer(who.accessToken) });
    const post = (url: string, payload: object, who: SignedUp = owner) =>
      fx.app.inject({ method: 'POST', url, headers: bearer(who.accessToken), payload });

    for (const u of users) {
      const login = await fx.app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        payload: { email: u.email, password: u.password },
      });
      expect(login.statusCode).toBe(200);
      expect((await get('/api/v1/auth/me', u)).statusCode).toBe(200);
    }
    const project = await post('/api/v1/projects', { name: 'observed' });
    expect(project.statusCode).toBe(201);
    const projectId = project.json().id as string;
    const created = await post('/api/v1/generations', {
      model_id: 'velro-sketch',
      prompt: 'a metered lighthouse',
      project_id: projectId,
    });
    expect(created.statusCode, created.body).toBe(202);
    generationId = created.json().id;
    for (let i = 0; i < 3; i++) {
      await post('/api/v1/authz/check', { resource: { type: 'project', id: projectId }, permission: 'view' });
      await post(
        '/api/v1/authz/check',
        { resource: { type: 'generation', id: generationId }, permission: 'view' },
        other,
      );
      await get(`/api/v1/projects/${projectId}`);
      await get(`/api/v1/generations/${generationId}/authorize`);
    }
    await fx.app.inject({ method: 'GET', url: '/api/v1/models' });
    await fx.app.inject({ method: 'GET', url: '/health' });
    // Wait (bounded) for the worker to finish the job, so that job outcomes are counted.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const status = (await get(`/api/v1/generations/${generationId}`)).json().status;
      if (status === 'completed') break;
      if (Date.now() > deadline) throw new Error(`generation still ${status}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }, 60_000);

  it('/metrics is valid exposition text with every family of the issue and no ids in labels', async () => {
    const res = await fx.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const families = parsePrometheus(res.body);
    const family = (name: string) => {
      const f = families.get(name);
      expect(f, `${name} is exposed`).toBeDefined();
      return f as Family;
    };
    const valuesOf = (name: string, label: string) =>
      new Set(
        family(name)
          .samples.map((s) => s.labels[label])
          .filter((v) => v !== undefined),
      );

    const http = family('velro_http_request_duration_seconds');
    expect(http.type).toBe('histogram');
    const routes = http.samples.filter((s) => s.name.endsWith('_count'));
    for (const s of routes)
      expect(Object.keys(s.labels).sort()).toEqual(['method', 'route', 'route_class', 'status']);
    const routeKeys = new Set(routes.map((s) => `${s.labels.method} ${s.labels.route}`));
    expect(routeKeys).toContain('POST /api/v1/generations');
    expect(routeKeys).toContain('GET /api/v1/generations/:id');
    expect(routeKeys).toContain('GET /api/v1/generations/:id/authorize');
    expect(valuesOf('velro_http_request_duration_seconds', 'route_class')).toEqual(
      new Set(['critical_auth', 'standard', 'heavy', 'fast', 'ultra_fast']),
    );
    const registers = routes.find((s) => s.labels.route === '/api/v1/auth/register');
    expect(registers).toMatchObject({ value: 3, labels: { method: 'POST', status: '201' } });

    expect(family('velro_cache_lookups').type).toBe('gauge');
    expect(valuesOf('velro_cache_lookups', 'layer')).toEqual(new Set(['l1', 'l2', 'database']));
    const l1Hits = family('velro_cache_lookups').samples.find(
      (s) => s.labels.layer === 'l1' && s.labels.result === 'hit',
    );
    expect(l1Hits?.value).toBeGreaterThan(0);
    expect(valuesOf('velro_cache_lookups', 'result')).toEqual(
      new Set(['hit', 'miss', 'eviction', 'expiry', 'error', 'load']),
    );

    expect(valuesOf('velro_db_pool_connections', 'pool')).toEqual(
      new Set(['authorization', 'generation', 'write_heavy', 'background', 'analytics']),
    );
    expect(valuesOf('velro_db_pool_connections', 'state')).toEqual(new Set(['total', 'idle', 'waiting']));
    const queryCounts = family('velro_db_query_duration_seconds').samples.filter((s) =>
      s.name.endsWith('_count'),
    );
    expect(queryCounts.reduce((a, s) => a + s.value, 0)).toBeGreaterThan(0);
    expect(family('velro_db_query_duration_seconds').type).toBe('histogram');

    const depth = family('velro_queue_depth').samples;
    expect(depth).toHaveLength(1);
    expect(depth[0]?.value).toBeGreaterThanOrEqual(0);
    expect(
      family('velro_generation_jobs_total').samples.find((s) => s.labels.outcome === 'completed')?.value,
    ).toBeGreaterThanOrEqual(1);
    expect(
      family('velro_credits_total').samples.find((s) => s.labels.reason === 'generation_charge')?.value,
    ).toBe(5);
    expect(family('velro_credits_total').type).toBe('counter');
    expect(family('velro_nodejs_eventloop_lag_seconds').samples[0]?.value).toBeGreaterThanOrEqual(0);
    expect(family('velro_nodejs_eventloop_lag_p99_seconds').samples).toHaveLength(1);
    expect(family('velro_process_resident_memory_bytes').samples[0]?.value).toBeGreaterThan(1_000_000);

    // No user data in labels: routes are patterns, and no label value anywhere is an id.
    for (const f of families.values()) {
      for (const s of f.samples) {
        for (const [label, value] of Object.entries(s.labels)) {
          expect(UUID.test(value), `${s.name}{${label}="${value}"}`).toBe(false);
        }
      }
    }
    expect(res.body).not.toContain(generationId);
    for (const u of users) {
      expect(res.body).not.toContain(u.id);
      expect(res.body).not.toContain(u.email);
    }
  });

  it('/api/v1/performance/validate lists every target with pass, fail or insufficient_data', async () => {
    const res = await fx.app.inject({ method: 'GET', url: '/api/v1/performance/validate' });
    expect(res.statusCode).toBe(200);
    const body = res.json() as {
      window: string;
      passing: boolean;
      targets: { name: string; status: string; samples: number; threshold: number; p95_ms?: number }[];
    };
    expect(body.window).toBe('5m');
    expect(typeof body.passing).toBe('boolean');
    expect(body.targets.map((x) => x.name).sort()).toEqual(TARGETS.map((x) => x.name).sort());
    for (const target of body.targets) {
      expect(['pass', 'fail', 'insufficient_data'], target.name).toContain(target.status);
      expect(typeof target.threshold).toBe('number');
    }
    const byName = Object.fromEntries(body.targets.map((x) => [x.name, x]));
    // Enough auth and authorization requests happened to judge them (how fast is not asserted here).
    expect(byName.auth?.status).not.toBe('insufficient_data');
    expect(byName.auth?.samples).toBeGreaterThanOrEqual(6);
    expect(byName.authorization?.status).not.toBe('insufficient_data');
    expect(byName.authorization?.p95_ms).toBeGreaterThan(0);
    expect(byName.throughput?.status).toBe('insufficient_data');
    expect(body.passing).toBe(
      body.targets.filter((x) => x.status !== 'insufficient_data').every((x) => x.status === 'pass'),
    );

    const hour = await fx.app.inject({ method: 'GET', url: '/api/v1/performance/validate?window=1h' });
    expect(hour.json().window).toBe('1h');
    const bad = await fx.app.inject({ method: 'GET', url: '/api/v1/performance/validate?window=2m' });
    expect(bad.statusCode).toBe(400);
  });

  it('the dashboard summary carries what the page draws', async () => {
    const res = await fx.app.inject({ method: 'GET', url: '/api/v1/performance/dashboard' });
    expect(res.statusCode).toBe(200);
    const d = res.json();
    expect(d.requests.overall.count).toBeGreaterThan(20);
    expect(Object.keys(d.requests.by_class)).toEqual(
      expect.arrayContaining(['critical_auth', 'standard', 'heavy', 'fast', 'ultra_fast']),
    );
    expect(d.requests.by_class.critical_auth).toMatchObject({
      p50_ms: expect.any(Number),
      p95_ms: expect.any(Number),
      p99_ms: expect.any(Number),
      throughput: expect.any(Number),
    });
    expect(d.cache.l1).toMatchObject({ hits: expect.any(Number), misses: expect.any(Number) });
    expect(d.cache.l2).toMatchObject({ hits: expect.any(Number), misses: expect.any(Number) });
    expect(d.pools.authorization).toMatchObject({
      total: expect.any(Number),
      idle: expect.any(Number),
      waiting: expect.any(Number),
    });
    expect(typeof d.queue_depth).toBe('number');
    expect(d.alerts.length).toBeGreaterThan(0);
    expect(['healthy', 'degraded', 'critical']).toContain(d.health);
  });

  it('/dashboard is a page of local assets only, under the default CSP', async () => {
    const page = await fx.app.inject({ method: 'GET', url: '/dashboard' });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toContain('text/html');
    expect(page.headers['content-security-policy']).toContain("script-src 'self'");
    const html = page.body;
    const sources = [...html.matchAll(/<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]*)"/g)].map((m) => m[1]);
    expect(sources).toEqual(
      expect.arrayContaining([
        '/dashboard/assets/uPlot.iife.min.js',
        '/dashboard/assets/dashboard.js',
        '/dashboard/assets/uPlot.min.css',
        '/dashboard/assets/dashboard.css',
      ]),
    );
    for (const src of sources) expect(src).toMatch(/^(\/dashboard\/assets\/|data:)/);
    // No inline script (blocked by script-src 'self') and no inline event handler.
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).not.toMatch(/\son[a-z]+=/i);
    for (const [name, type] of [
      ['dashboard.js', 'text/javascript'],
      ['dashboard.css', 'text/css'],
      ['uPlot.iife.min.js', 'text/javascript'],
      ['uPlot.min.css', 'text/css'],
    ] as const) {
      const asset = await fx.app.inject({ method: 'GET', url: `/dashboard/assets/${name}` });
      expect(asset.statusCode, name).toBe(200);
      expect(asset.headers['content-type']).toContain(type);
      // Our files name no other host; uPlot only in its licence banner (the browser test checks requests).
      const urls = asset.body.match(/https?:\/\/[^\s"'()]+/g) ?? [];
      const allowed = name.startsWith('uPlot') ? ['https://github.com/leeoniya/uPlot'] : [];
      for (const url of urls) expect(allowed, `${name} names ${url}`).toContain(url);
    }
    const missing = await fx.app.inject({ method: 'GET', url: '/dashboard/assets/..%2Fpackage.json' });
    expect(missing.statusCode).toBe(404);
  });
});

describe('OPS_TOKEN guards the operational endpoints', () => {
  const OPS_TOKEN = 'an-operations-token-of-some-length';
  const fx = useTestApp({ env: { OPS_TOKEN } });
  let user: SignedUp;

  beforeAll(async () => {
    user = await signUp(fx.app);
  });

  const GUARDED = [
    '/metrics',
    '/api/v1/performance/dashboard',
    '/api/v1/performance/metrics',
    '/api/v1/performance/health',
    '/api/v1/performance/validate',
    '/api/v1/performance/test',
  ];

  it.each(GUARDED)('%s: 401 without it, with a user token or a wrong one; 200 with it', async (url) => {
    const anonymous = await fx.app.inject({ method: 'GET', url });
    expect(anonymous.statusCode).toBe(401);
    expect(errorOf(anonymous).code).toBe('invalid_token');
    const asUser = await fx.app.inject({ method: 'GET', url, headers: bearer(user.accessToken) });
    expect(asUser.statusCode).toBe(401);
    const wrong = await fx.app.inject({ method: 'GET', url, headers: bearer(OPS_TOKEN.replace(/.$/, 'X')) });
    expect(wrong.statusCode).toBe(401);
    const ops = await fx.app.inject({ method: 'GET', url, headers: bearer(OPS_TOKEN) });
    expect(ops.statusCode).toBe(200);
  });

  it('/health and /ready stay open for load balancers; the page and its assets hold no data and stay open', async () => {
    expect((await fx.app.inject({ method: 'GET', url: '/health' })).statusCode).toBe(200);
    expect((await fx.app.inject({ method: 'GET', url: '/ready' })).statusCode).toBe(200);
    // A browser opening the address cannot send a bearer; the page sends #token=… on its data calls.
    expect((await fx.app.inject({ method: 'GET', url: '/dashboard' })).statusCode).toBe(200);
    expect((await fx.app.inject({ method: 'GET', url: '/dashboard/assets/dashboard.js' })).statusCode).toBe(
      200,
    );
  });

  it('the operations token is not a user credential', async () => {
    const res = await fx.app.inject({ method: 'GET', url: '/api/v1/auth/me', headers: bearer(OPS_TOKEN) });
    expect(res.statusCode).toBe(401);
  });
});
