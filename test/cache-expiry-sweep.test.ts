import { afterEach, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../src/config.js';
import { ExpirySchedule } from '../src/platform/cache/expiry-sweep.js';
import { FactCache, type Loaded } from '../src/platform/cache/fact-cache.js';
import { cacheKey } from '../src/platform/cache/keys.js';
import { factLifetimeSeconds, factLifetimes } from '../src/platform/cache/open.js';
import { TEST_ENV } from './helpers/app.js';

/**
 * Expired L1 entries are removed, a bounded batch at a time, instead of holding memory until the
 * byte budget pushes them out (lru-cache never serves them, but keeps them). Time is a hand-moved
 * clock: lifetimes here are minutes.
 */

const MINUTE = 60_000;

function cacheWithClock(
  options: { sweepEveryMs?: number; ttlMs?: (key: string, value: unknown) => number } = {},
) {
  const clock = { now: 1_000 };
  const cache = new FactCache({
    l1MaxBytes: 64 << 20,
    ttlMs: () => 10 * MINUTE,
    l2TtlSeconds: () => 600,
    l2: null,
    now: () => clock.now,
    ...options,
  });
  return { cache, clock };
}

const l1 = (cache: FactCache) => cache.snapshot().l1;

describe('ExpirySchedule', () => {
  it('hands out only keys whose slot has passed, at most `limit` at a time, and keeps the rest', () => {
    const schedule = new ExpirySchedule(10_000);
    for (let i = 0; i < 5; i++) schedule.add(`a${i}`, 0, 60_000); // slot ends at 60 s
    schedule.add('b', 0, 120_000); // slot ends at 120 s
    expect(schedule.size).toBe(6);
    expect(schedule.due(59_999, 100)).toEqual([]);
    const first = schedule.due(60_000, 3);
    expect(first).toHaveLength(3);
    const second = schedule.due(60_000, 3);
    expect(second).toHaveLength(2);
    expect(new Set([...first, ...second])).toEqual(new Set(['a0', 'a1', 'a2', 'a3', 'a4']));
    expect(schedule.size).toBe(1);
    expect(schedule.due(119_000, 10)).toEqual([]);
    expect(schedule.due(120_000, 10)).toEqual(['b']);
    expect(schedule.size).toBe(0);
  });

  it('lists a key stored again once, in the slot of its latest store', () => {
    const schedule = new ExpirySchedule(10_000);
    for (let at = 0; at < 50_000; at += 1_000) schedule.add('mems|u1', at, 60_000);
    expect(schedule.size).toBe(1);
    expect(schedule.due(100_000, 10)).toEqual([]); // the first stores' slots hold nothing any more
    expect(schedule.due(110_000, 10)).toEqual(['mems|u1']); // 49 s + 60 s, rounded up to its slot
    expect(schedule.size).toBe(0);
  });

  it('a key stored again with a shorter lifetime is handed out at the shorter end, once', () => {
    const schedule = new ExpirySchedule(10_000);
    schedule.add('svckey|k', 0, 86_400_000); // a valid key: a day
    schedule.add('svckey|k', 1_000, 3_600_000); // then unknown: an hour
    expect(schedule.due(3_610_000, 10)).toEqual(['svckey|k']);
    expect(schedule.due(86_400_000, 10)).toEqual([]);
    expect(schedule.size).toBe(0);
  });

  it('rounds a lifetime up to its slot, never down (a key is never handed out before it ends)', () => {
    const schedule = new ExpirySchedule(10_000);
    schedule.add('k', 1, 60_000); // ends at 60,001 ms: in the slot ending at 70 s
    expect(schedule.due(60_001, 10)).toEqual([]);
    expect(schedule.due(70_000, 10)).toEqual(['k']);
  });
});

describe('FactCache: expired L1 entries are swept', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('removes every expired entry and its bytes; without the sweep they stay in memory', () => {
    const { cache, clock } = cacheWithClock();
    for (let i = 0; i < 5_000; i++) cache.put(`gen:${i}`, { id: i, owner: 'u' }, 1);
    expect(l1(cache).entries).toBe(5_000);

    clock.now += 5 * MINUTE;
    expect(cache.sweepExpired()).toBe(0);
    expect(cache.peek('gen:1')?.v).toEqual({ id: 1, owner: 'u' });

    clock.now += 6 * MINUTE; // past the 10-minute lifetime and its slot
    expect(cache.peek('gen:2')).toBeUndefined(); // never served once expired (lru-cache's rule)
    // Expired, yet still held: this is what grew a long run's heap towards the byte budget.
    expect(l1(cache).entries).toBe(4_999);
    expect(l1(cache).bytes).toBeGreaterThan(0);

    let removed = 0;
    for (let sweep = 0; sweep < 10 && l1(cache).entries > 0; sweep++) removed += cache.sweepExpired();
    expect(removed).toBe(4_999);
    expect(l1(cache)).toMatchObject({ entries: 0, bytes: 0, expired: 4_999, awaiting_expiry: 0 });
  });

  it('a negative fact ("no such generation") lives NEGATIVE_FACT_TTL_SECONDS, a real one L1_TTL_SECONDS', () => {
    const config = loadConfig({ ...TEST_ENV, L1_TTL_SECONDS: '600', NEGATIVE_FACT_TTL_SECONDS: '60' });
    const { cache, clock } = cacheWithClock({
      ttlMs: (key, value) => factLifetimeSeconds(config, key, value, config.L1_TTL_SECONDS) * 1000,
    });
    const missing = cacheKey('gen', 'no-such-id');
    const real = cacheKey('gen', 'g-1');
    cache.put(missing, null, 1);
    cache.put(real, { deleted: false }, 1);
    expect(cache.peek(missing)).toEqual({ v: null, r: 1 }); // cached (SPEC rule 6)…
    clock.now += 61_000;
    expect(cache.peek(missing)).toBeUndefined(); // …for one minute
    expect(cache.peek(real)?.v).toEqual({ deleted: false });
    for (let sweep = 0; sweep < 5; sweep++) cache.sweepExpired();
    expect(l1(cache).entries).toBe(1);
    // In L2 the same rule caps the hour; service keys keep the seeds' lifetimes (unknown key 1 h).
    expect(factLifetimeSeconds(config, missing, null, 3600)).toBe(60);
    expect(factLifetimeSeconds(config, real, { deleted: false }, 3600)).toBe(3600);
    expect(factLifetimeSeconds(config, cacheKey('svckey', 'k'), null, 600)).toBe(3600);
  });

  it('facts stored together expire spread over CACHE_LIFETIME_SPREAD_PERCENT of their lifetime, never later', () => {
    const config = loadConfig({
      ...TEST_ENV,
      L1_TTL_SECONDS: '600',
      L2_TTL_SECONDS: '3600',
      NEGATIVE_FACT_TTL_SECONDS: '60',
      CACHE_LIFETIME_SPREAD_PERCENT: '20',
    });
    const real = cacheKey('gen', 'g-1');
    // The bounds, with the random draw at its ends: the full lifetime, and 80 % of it.
    const longest = factLifetimes(config, () => 0);
    const shortest = factLifetimes(config, () => 0.999_999);
    expect(longest.ttlMs(real, { deleted: false })).toBe(600_000);
    expect(shortest.ttlMs(real, { deleted: false })).toBe(480_000);
    expect(longest.l2TtlSeconds(real, { deleted: false })).toBe(3600);
    expect(shortest.l2TtlSeconds(real, { deleted: false })).toBe(2880);
    expect(shortest.l2TtlSeconds(cacheKey('gen', 'missing'), null)).toBe(48);
    // A start-up warm of 10,000 facts in one L1: they leave over two minutes, not in one second.
    const { cache, clock } = cacheWithClock({ ttlMs: factLifetimes(config).ttlMs });
    for (let i = 0; i < 10_000; i++) cache.put(cacheKey('gen', `g-${i}`), { deleted: false }, 1);
    const left = (afterMs: number) => {
      clock.now = afterMs;
      let held = 0;
      for (let i = 0; i < 10_000; i++) if (cache.peekUncounted(cacheKey('gen', `g-${i}`))) held += 1;
      return held;
    };
    expect(left(479_000)).toBe(10_000);
    const halfway = left(540_000);
    expect(halfway).toBeGreaterThan(4_000);
    expect(halfway).toBeLessThan(6_000);
    expect(left(601_001)).toBe(0);
    // Without the spread, every one of them lives exactly the configured ten minutes.
    const fixed = factLifetimes({ ...config, CACHE_LIFETIME_SPREAD_PERCENT: 0 });
    expect(fixed.ttlMs(real, { deleted: false })).toBe(600_000);
  });

  it('sweeps a bounded batch per call', () => {
    const { cache, clock } = cacheWithClock();
    for (let i = 0; i < 5_000; i++) cache.put(`gen:${i}`, { id: i }, 1);
    clock.now += 11 * MINUTE;
    expect(cache.sweepExpired(2_000)).toBe(2_000);
    expect(l1(cache).entries).toBe(3_000);
  });

  it('keeps an entry stored again since it was scheduled, until its new lifetime ends', () => {
    const { cache, clock } = cacheWithClock();
    cache.put('gen:a', { id: 'a', v: 1 }, 1);
    clock.now += 8 * MINUTE;
    cache.put('gen:a', { id: 'a', v: 2 }, 2); // a newer read: a new 10-minute lifetime
    clock.now += 3 * MINUTE; // the first lifetime is over, the second is not
    cache.sweepExpired();
    expect(cache.peek('gen:a')?.v).toEqual({ id: 'a', v: 2 });
    clock.now += 8 * MINUTE;
    cache.sweepExpired();
    expect(l1(cache).entries).toBe(0);
    expect(l1(cache).expired).toBe(1);
    expect(l1(cache).awaiting_expiry).toBe(0);
  });

  it('sweeps entries stored by a load, with the side-fills it brought', async () => {
    const { cache, clock } = cacheWithClock();
    const load = async (): Promise<Loaded> => ({
      rev: 3,
      entries: new Map<string, unknown>([
        ['gen:x', { id: 'x' }],
        ['proj:p', { id: 'p' }],
      ]),
    });
    const { layer } = await cache.get('gen:x', load);
    expect(layer).toBe('miss');
    expect(l1(cache).entries).toBe(2);
    clock.now += 11 * MINUTE;
    expect(cache.sweepExpired()).toBe(2);
    expect(l1(cache).entries).toBe(0);
  });

  it('leaves a key that is being loaded to its load (the load is not aborted and runs once)', async () => {
    const { cache, clock } = cacheWithClock();
    cache.put('gen:y', { id: 'y', v: 1 }, 1);
    clock.now += 11 * MINUTE;
    let loads = 0;
    let finish: (loaded: Loaded) => void = () => {};
    const pending = cache.get('gen:y', () => {
      loads += 1;
      return new Promise<Loaded>((resolve) => {
        finish = resolve;
      });
    });
    await vi.waitFor(() => expect(loads).toBe(1));
    cache.sweepExpired();
    finish({ rev: 5, entries: new Map([['gen:y', { id: 'y', v: 2 }]]) });
    const { entry } = await pending;
    expect(entry).toEqual({ v: { id: 'y', v: 2 }, r: 5 });
    expect(loads).toBe(1);
    expect(cache.peek('gen:y')?.v).toEqual({ id: 'y', v: 2 });
  });

  it('forgets the schedule when the cache is flushed', () => {
    const { cache } = cacheWithClock();
    for (let i = 0; i < 10; i++) cache.put(`gen:${i}`, { id: i }, 1);
    expect(l1(cache).awaiting_expiry).toBe(10);
    cache.flush(2, false);
    expect(l1(cache)).toMatchObject({ entries: 0, awaiting_expiry: 0 });
  });

  it('sweeps on its own every `sweepEveryMs`, and stops when closed', () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const { cache, clock } = cacheWithClock({ sweepEveryMs: 1_000 });
    for (let i = 0; i < 100; i++) cache.put(`gen:${i}`, { id: i }, 1);
    clock.now += 11 * MINUTE;
    vi.advanceTimersByTime(1_000);
    expect(l1(cache)).toMatchObject({ entries: 0, expired: 100 });

    for (let i = 0; i < 100; i++) cache.put(`gen:${i}`, { id: i }, 1);
    cache.close();
    clock.now += 11 * MINUTE;
    vi.advanceTimersByTime(5_000);
    expect(l1(cache).entries).toBe(100);
  });
});
