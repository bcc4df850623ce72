/**
 * Database health as an operator sees it: statements over SLOW_QUERY_MS are logged (without their
 * values), failed statements and failed acquisitions are counted per pool, and the time spent
 * waiting for a pool connection is a histogram.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { Pools, type SlowQuery } from '../src/platform/db/pools.js';
import { ALERT_RULES, type AlertRule } from '../src/platform/observability/alert-rules.js';
import { dbErrors, dbPoolWait } from '../src/platform/observability/metrics.js';
import { PerformanceTracker } from '../src/platform/observability/tracker.js';
import { WindowedHistogram } from '../src/platform/observability/windowed-histogram.js';
import { createTestDatabase, TEST_ENV, type TestDatabase } from './helpers/app.js';

let db: TestDatabase;
let pools: Pools;
const slow: SlowQuery[] = [];

interface Sample {
  labels: Record<string, unknown>;
  value: number;
  metricName?: string;
}

async function samplesMatching(metric: typeof dbErrors | typeof dbPoolWait, labels: Record<string, string>) {
  const { values } = (await metric.get()) as { values: Sample[] };
  return values.filter((v) => Object.entries(labels).every(([k, value]) => v.labels[k] === value));
}

beforeAll(async () => {
  db = await createTestDatabase();
  const config = loadConfig({ ...TEST_ENV, DATABASE_URL: db.url, DB_POOL_BACKGROUND_MAX: '1' });
  pools = new Pools({
    url: db.url,
    pools: config.pools,
    connectTimeoutMs: 300,
    onError: () => {},
    slowQueryMs: 80,
    onSlowQuery: (query) => slow.push(query),
  });
});

afterAll(async () => {
  await pools?.close();
  await db?.drop();
});

describe('the slow-query log', () => {
  it('reports a statement over the threshold with its pool and text, never its values', async () => {
    await pools.pg.background.query('SELECT 1');
    await pools.pg.background.query('SELECT pg_sleep(0.15), $1::text AS secret', ['hunter2-personal']);
    expect(slow).toHaveLength(1);
    const [entry] = slow;
    expect(entry).toMatchObject({ pool: 'background', failed: false });
    expect(entry?.statement).toBe('SELECT pg_sleep(0.15), $1::text AS secret');
    expect(entry?.duration_ms).toBeGreaterThanOrEqual(150);
    expect(JSON.stringify(entry)).not.toContain('hunter2');
  });

  it('counts failed statements per pool, and reports a slow failure as failed', async () => {
    const before = (await samplesMatching(dbErrors, { pool: 'background', kind: 'query' }))[0]?.value ?? 0;
    await expect(pools.pg.background.query('SELECT 1/0')).rejects.toThrow(/division by zero/);
    // Fails after its sleep (a constant 1/0 would fail at planning, before any time passed).
    await expect(
      pools.pg.background.query("DO $$ BEGIN PERFORM pg_sleep(0.1); RAISE EXCEPTION 'failed late'; END $$"),
    ).rejects.toThrow(/failed late/);
    const after = (await samplesMatching(dbErrors, { pool: 'background', kind: 'query' }))[0]?.value ?? 0;
    expect(after - before).toBe(2);
    expect(slow.at(-1)).toMatchObject({ pool: 'background', failed: true });
  });
});

describe('pool waits', () => {
  it('times the wait for a connection, and counts an acquisition that timed out', async () => {
    const waitSum = async () =>
      (await samplesMatching(dbPoolWait, { pool: 'background' })).find((v) => v.metricName?.endsWith('_sum'))
        ?.value ?? 0;
    const sumBefore = await waitSum();
    // The pool holds one connection: a second user waits until the first gives it back.
    const held = await pools.pg.background.connect();
    const waiting = pools.pg.background.query('SELECT 1');
    await new Promise((resolve) => setTimeout(resolve, 150));
    held.release();
    await waiting;
    expect((await waitSum()) - sumBefore).toBeGreaterThanOrEqual(0.14);

    const failedBefore =
      (await samplesMatching(dbErrors, { pool: 'background', kind: 'acquire' }))[0]?.value ?? 0;
    const again = await pools.pg.background.connect();
    await expect(pools.pg.background.query('SELECT 1')).rejects.toThrow(/timeout/i);
    again.release();
    const failedAfter =
      (await samplesMatching(dbErrors, { pool: 'background', kind: 'acquire' }))[0]?.value ?? 0;
    expect(failedAfter - failedBefore).toBe(1);
  });
});

describe('the rule db_pool_wait_high, in process', () => {
  it('fires after two minutes of slow connection waits with enough of them, and not on a few', () => {
    let now = Date.parse('2026-12-07T00:00:00Z');
    const waits = new WindowedHistogram();
    const rule = ALERT_RULES.find((r) => r.name === 'db_pool_wait_high') as AlertRule;
    const fired: string[] = [];
    const tracker = new PerformanceTracker(
      { l1: () => ({ hits: 0, misses: 0 }), poolWaits: (window) => waits.stats(window, now) },
      [rule],
      (state) => fired.push(state.state),
      () => now,
    );
    // A few slow waits: too few to judge.
    for (let i = 0; i < 20; i++) waits.record(150_000, false, now);
    tracker.tick();
    expect(tracker.alertStates()[0]?.state).toBe('insufficient_data');
    // 200 slow waits every 10 s for three minutes.
    for (let step = 0; step < 18; step++) {
      now += 10_000;
      for (let i = 0; i < 200; i++) waits.record(150_000, false, now);
      tracker.tick();
    }
    expect(fired).toEqual(['firing']);
    expect(tracker.alertStates()[0]?.value).toBeGreaterThan(100);
  });
});
