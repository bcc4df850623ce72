import { describe, expect, it } from 'vitest';
import { isOverloaded } from '../bench/lib/loadtest-http.js';
import { parseLoadOptions, parseServiceEnv, parseSweep } from '../bench/lib/loadtest-options.js';
import { type EndpointStats, newHistogram, Recorder, recordMs } from '../bench/lib/loadtest-stats.js';
import {
  CLASS_TARGET_P95_MS,
  capacityPoint,
  classOf,
  isWrite,
  type StageSummary,
  summarizeStage,
  sweepChartSvg,
  sweepMarkdown,
  writeShares,
} from '../bench/lib/loadtest-sweep.js';

/**
 * The load test's sweep (`npm run loadtest -- --sweep …`) without a service: which class each of
 * the scenarios' endpoints belongs to, the arithmetic of a stage (errors, refusals, starvation), the
 * choice of the capacity point, and the chart drawn from a fixed set of stages.
 */

const API = '/api/v1';

/** Every endpoint the scenarios call, and the class a user would file it under. */
const SCENARIO_ENDPOINTS: [string, string][] = [
  [`GET ${API}/auth/me`, 'auth_token'],
  [`POST ${API}/auth/refresh`, 'auth_token'],
  [`POST ${API}/auth/logout`, 'auth_token'],
  [`POST ${API}/auth/login`, 'other'],
  [`POST ${API}/auth/register`, 'other'],
  [`POST ${API}/authz/check`, 'authorization'],
  [`POST ${API}/authz/check-bulk`, 'authorization'],
  [`POST ${API}/authz/lookup`, 'authorization'],
  [`GET ${API}/generations/:id/authorize`, 'authorization'],
  [`GET ${API}/generations/:id`, 'generation_access'],
  [`GET ${API}/generations`, 'generation_access'],
  [`GET ${API}/generations/:id/media-urls`, 'generation_access'],
  [`GET ${API}/generations/:id/events`, 'generation_access'],
  [`GET ${API}/media/:token`, 'generation_access'],
  [`POST ${API}/generations`, 'other'],
  [`GET ${API}/teams`, 'team_ops'],
  [`POST ${API}/teams`, 'team_ops'],
  [`GET ${API}/teams/:id/members`, 'team_ops'],
  [`POST ${API}/teams/:id/members`, 'team_ops'],
  [`PATCH ${API}/teams/:id/members/:userId`, 'team_ops'],
  [`POST ${API}/projects`, 'team_ops'],
  [`GET ${API}/projects`, 'other'],
  [`GET ${API}/projects/:id`, 'other'],
  [`POST ${API}/admin/credits/grant`, 'other'],
];

interface FakeEndpoint {
  name: string;
  ok?: number;
  expected?: number;
  overloaded?: number;
  otherServerErrors?: number;
  timeouts?: number;
  /** Every answered request takes this long. */
  ms: number;
}

function endpoint(e: FakeEndpoint): EndpointStats {
  const histogram = newHistogram();
  const answered = (e.ok ?? 0) + (e.expected ?? 0) + (e.overloaded ?? 0) + (e.otherServerErrors ?? 0);
  for (let i = 0; i < answered; i++) recordMs(histogram, e.ms);
  return {
    name: e.name,
    histogram,
    outcomes: {
      ok: e.ok ?? 0,
      expected: e.expected ?? 0,
      unexpected: 0,
      server_error: (e.overloaded ?? 0) + (e.otherServerErrors ?? 0),
      timeout: e.timeouts ?? 0,
      network: 0,
    },
    statuses: new Map(),
    cache: new Map(),
    refused: e.overloaded ?? 0,
  };
}

function refusals(...latencies: number[]) {
  const h = newHistogram();
  for (const ms of latencies) recordMs(h, ms);
  return h;
}

/** A stage where every class answers in `ms` (authorization in `authzMs`), with `errors` 503s on checks. */
function stage(users: number, ms: number, options: { errors?: number; authzMs?: number } = {}): StageSummary {
  return summarizeStage(
    users,
    10,
    [
      endpoint({ name: `GET ${API}/auth/me`, ok: 1_000, ms }),
      endpoint({
        name: `POST ${API}/authz/check`,
        ok: 2_000,
        overloaded: options.errors ?? 0,
        ms: options.authzMs ?? ms,
      }),
      endpoint({ name: `GET ${API}/generations/:id`, ok: 1_000, ms }),
      endpoint({ name: `POST ${API}/teams`, ok: 500, ms }),
      endpoint({ name: `POST ${API}/auth/login`, ok: 100, ms: 400 }),
    ],
    refusals(...new Array(options.errors ?? 0).fill(3)),
  );
}

describe('endpoint classes', () => {
  it.each(SCENARIO_ENDPOINTS)('%s is %s', (name, expected) => {
    expect(classOf(name)).toBe(expected);
  });

  it('the four classes with targets carry the seeds’ p95 targets, other has none', () => {
    expect(CLASS_TARGET_P95_MS).toEqual({
      auth_token: 50,
      authorization: 75,
      generation_access: 100,
      team_ops: 100,
      other: null,
    });
  });

  it('writes are the state-changing requests; the POST authorization questions are reads', () => {
    const writes = SCENARIO_ENDPOINTS.map(([name]) => name).filter(isWrite);
    expect(writes.sort()).toEqual(
      [
        `POST ${API}/auth/refresh`,
        `POST ${API}/auth/logout`,
        `POST ${API}/auth/login`,
        `POST ${API}/auth/register`,
        `POST ${API}/generations`,
        `POST ${API}/teams`,
        `POST ${API}/teams/:id/members`,
        `PATCH ${API}/teams/:id/members/:userId`,
        `POST ${API}/projects`,
        `POST ${API}/admin/credits/grant`,
      ].sort(),
    );
  });
});

describe('starvation shares', () => {
  it('with no failures writes get exactly the share they asked for', () => {
    const shares = writeShares(300, 300, 1_000, 1_000);
    expect(shares.shareOfOffered).toBe(0.3);
    expect(shares.shareOfSuccesses).toBe(0.3);
    expect(shares.starved).toBe(false);
  });

  it('writes failing more than reads are starved; reads failing more leaves writes a larger share', () => {
    // 300 writes asked, 150 served; 700 reads asked, all served: 150 / 850 of the successes.
    const starved = writeShares(300, 150, 1_000, 850);
    expect(starved.shareOfSuccesses).toBeCloseTo(150 / 850, 12);
    expect(starved.starved).toBe(true);
    // Every write served, half the reads refused: 300 / 650 of the successes.
    const favoured = writeShares(300, 300, 1_000, 650);
    expect(favoured.shareOfSuccesses).toBeCloseTo(300 / 650, 12);
    expect(favoured.starved).toBe(false);
  });

  it('no writes, or nothing served, is not called starvation and divides by nothing', () => {
    expect(writeShares(0, 0, 500, 500)).toMatchObject({
      shareOfOffered: 0,
      shareOfSuccesses: 0,
      starved: false,
    });
    expect(writeShares(0, 0, 0, 0)).toMatchObject({ shareOfOffered: 0, shareOfSuccesses: 0, starved: false });
    expect(writeShares(10, 0, 10, 0).starved).toBe(true);
  });
});

describe('a stage summary', () => {
  it('counts offered load, throughput, refusals apart from other 5xx, timeouts and per-class percentiles', () => {
    const summary = summarizeStage(
      100,
      10,
      [
        endpoint({ name: `POST ${API}/authz/check`, ok: 900, overloaded: 80, ms: 20 }),
        endpoint({ name: `GET ${API}/generations/:id/authorize`, ok: 100, ms: 60 }),
        endpoint({ name: `POST ${API}/auth/logout`, ok: 90, otherServerErrors: 5, timeouts: 5, ms: 30 }),
        endpoint({ name: `GET ${API}/generations/:id`, ok: 150, expected: 50, ms: 40 }),
      ],
      refusals(2, 4, 6, 8),
    );
    expect(summary.attempted).toBe(980 + 100 + 100 + 200);
    expect(summary.attemptedPerSec).toBe(138);
    // A 404 the scenario asked for is a correct answer.
    expect(summary.succeeded).toBe(900 + 100 + 90 + 200);
    expect(summary.throughputPerSec).toBe(129);
    expect(summary.errors).toBe(80 + 5 + 5);
    expect(summary.errorRate).toBeCloseTo(90 / 1_380, 12);
    expect(summary.overloaded503).toBe(80);
    expect(summary.other5xx).toBe(5);
    expect(summary.timeouts).toBe(5);
    expect(summary.refusals).toMatchObject({ count: 4, fastestMs: 2, maxMs: 8 });
    const authz = summary.classes.find((c) => c.name === 'authorization')!;
    expect(authz.requests).toBe(1_080);
    expect(authz.p50Ms).toBeCloseTo(20, 1);
    expect(authz.p95Ms).toBeCloseTo(60, 1);
    expect(authz.withinTarget).toBe(true);
    expect(summary.classes.find((c) => c.name === 'team_ops')).toMatchObject({
      requests: 0,
      withinTarget: null,
    });
    // Logout (a write) lost 10 of 100 while the reads lost 80 of 1,280.
    expect(summary.writes.offered).toBe(100);
    expect(summary.writes.succeeded).toBe(90);
    expect(summary.writes.starved).toBe(true);
    expect(summary.qualifies).toBe(false);
    expect(summary.misses.join(' ')).toMatch(/errors/);
  });

  it('a class over its p95 target keeps the stage from qualifying and says which', () => {
    const slow = stage(1_000, 10, { authzMs: 80 });
    expect(slow.errorRate).toBe(0);
    expect(slow.qualifies).toBe(false);
    expect(slow.misses).toEqual([expect.stringMatching(/^authorization p95 80\.\d ms ≥ 75 ms$/)]);
    // Sign-ins (other) are slow on purpose and have no target.
    expect(stage(1_000, 10).qualifies).toBe(true);
  });

  it('errors just under 0.1 % qualify, at 0.1 % they do not', () => {
    // 4,600 requests per stage: 4 refusals is 0.087 %, 5 is 0.108 %.
    expect(stage(500, 10, { errors: 4 }).qualifies).toBe(true);
    expect(stage(500, 10, { errors: 5 }).qualifies).toBe(false);
  });
});

describe('the capacity point', () => {
  it('is the largest stage within every target, even when a smaller one missed by noise', () => {
    const stages = [
      stage(500, 10),
      stage(1_000, 90, { authzMs: 76 }),
      stage(2_000, 40),
      stage(3_000, 80),
      stage(4_000, 300, { errors: 400 }),
    ];
    expect(stages.map((s) => s.qualifies)).toEqual([true, false, true, false, false]);
    expect(capacityPoint(stages)?.users).toBe(2_000);
  });

  it('is none when no stage qualifies, and the report says so plainly', () => {
    const stages = [stage(500, 120), stage(1_000, 10, { errors: 50 })];
    expect(capacityPoint(stages)).toBeNull();
    const markdown = sweepMarkdown(
      {
        date: '2026-12-07T00:00:00.000Z',
        machine: { cpuCount: 2, cpuModel: 'test', totalMemoryGiB: 4, node: 'v20', os: 'linux' } as never,
        settings: { scenario: 'mixed', users: 1_000, durationSeconds: 30, rampSeconds: 3, seed: 1 },
        serviceEnv: { ADMISSION_CONTROL: 'false' },
        setup: null,
        stages,
        capacity: null,
        chart: { svg: 'x.svg', png: null, pngSkipped: 'no chromium' },
      },
      'x.svg',
    );
    expect(markdown).toContain('**No stage qualifies**');
    expect(markdown).toContain('`ADMISSION_CONTROL=false`');
    expect(markdown).toContain('PNG not rendered (no chromium)');
  });
});

describe('the chart', () => {
  const stages = [stage(500, 10), stage(1_000, 20), stage(2_000, 60), stage(4_000, 150, { errors: 100 })];

  it('draws throughput, error rate and p95 per class against users, with the capacity point marked', () => {
    const svg = sweepChartSvg(stages, 2_000, 'sweep <test>');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('sweep &lt;test&gt;');
    for (const series of [
      'successful req/s',
      'attempted req/s',
      'error rate %',
      'auth_token',
      'authorization',
      'generation_access',
      'team_ops',
      'other',
    ]) {
      expect(svg).toContain(`data-series="${series}"`);
    }
    for (const target of ['auth_token', 'authorization', 'generation_access', 'team_ops']) {
      expect(svg).toContain(`data-target="${target}"`);
    }
    // One capacity line per panel, at the same x as the 2,000-user points.
    const lines = [...svg.matchAll(/class="capacity" x1="([\d.]+)"/g)].map((m) => Number(m[1]));
    expect(lines).toHaveLength(2);
    const throughput = /data-series="successful req\/s" d="([^"]+)"/.exec(svg)![1]!;
    const points = throughput.split(' ').map((p) => Number(p.slice(1).split(',')[0]));
    expect(points).toHaveLength(4);
    expect(points[2]).toBeCloseTo(lines[0]!, 0);
    // Every coordinate is a number: nothing divided by zero.
    expect(svg).not.toMatch(/NaN|Infinity/);
  });

  it('marks nothing when no stage qualifies', () => {
    const svg = sweepChartSvg(stages, null, 'none');
    expect(svg).not.toContain('class="capacity"');
    expect(svg).not.toMatch(/NaN|Infinity/);
  });
});

describe('sweep options and the recorder', () => {
  it('parses --sweep into ascending distinct counts, --service-env into pairs, and per-stage 30 s', () => {
    expect(parseSweep('2000, 500,1000,500')).toEqual([500, 1_000, 2_000]);
    expect(() => parseSweep('500,,1000')).toThrow(/--sweep/);
    expect(() => parseSweep('0')).toThrow(/--sweep/);
    expect(parseServiceEnv(['ADMISSION_CONTROL=false', 'X=a=b'])).toEqual({
      ADMISSION_CONTROL: 'false',
      X: 'a=b',
    });
    expect(() => parseServiceEnv(['no-equals'])).toThrow(/KEY=VALUE/);
    const options = parseLoadOptions(['--sweep', '20,40', '--service-env', 'ADMISSION_CONTROL=false']);
    expect(options).toMatchObject({
      sweep: [20, 40],
      users: 40,
      durationSeconds: 30,
      rampSeconds: 3,
      serviceEnv: { ADMISSION_CONTROL: 'false' },
    });
    expect(parseLoadOptions([])).toMatchObject({
      sweep: null,
      users: 200,
      durationSeconds: 60,
      serviceEnv: {},
    });
    expect(() => parseLoadOptions(['--sweep', '20', '--users', '20'])).toThrow(/exclude/);
  });

  it('recognises the deliberate refusal by its code, not by its status alone', () => {
    const body = (code: string) => JSON.stringify({ error: { code, message: 'x' } });
    expect(isOverloaded(503, body('overloaded'))).toBe(true);
    expect(isOverloaded(503, body('service_unavailable'))).toBe(false);
    expect(isOverloaded(500, body('overloaded'))).toBe(false);
    expect(isOverloaded(503, 'not json')).toBe(false);
  });

  it('does not count what completes during a stage’s ramp, and counts refusals with their latency', () => {
    const warming = new Recorder();
    warming.start(performance.now(), 3_600_000);
    warming.record(`GET ${API}/auth/me`, 'ok', 200, 5, null);
    warming.noteRefusal(`GET ${API}/auth/me`, 2);
    expect(warming.total).toBe(0);
    expect(warming.refusals.totalCount).toBe(0);

    const counting = new Recorder();
    counting.start(performance.now());
    counting.record(`POST ${API}/teams`, 'server_error', 503, 4, null);
    counting.noteRefusal(`POST ${API}/teams`, 4);
    expect(counting.total).toBe(1);
    expect(counting.endpoints.get(`POST ${API}/teams`)?.refused).toBe(1);
    expect(counting.refusals.totalCount).toBe(1);
  });
});
