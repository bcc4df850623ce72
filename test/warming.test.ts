import { describe, expect, it } from 'vitest';
import { factKinds } from '../src/modules/authz/fact-kinds.js';
import { createFactsLoader, type FactsLoader } from '../src/modules/authz/facts.js';
import { createWarmer } from '../src/modules/authz/warming.js';
import { FactCache } from '../src/platform/cache/fact-cache.js';
import { signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

/**
 * Periodic warming (every CACHE_WARM_INTERVAL_SECONDS, and POST /admin/cache/warm) loads the hottest
 * facts that L1 does not hold. Reloading what it holds cost a burst of statements, L1 stores and L2
 * writes every 5 minutes, and the soaks' 503s and p95 spikes came at exactly those moments.
 */
describe('warming from the access-pattern views', () => {
  const fx = useTestApp();

  /** A warmer on an L1 of its own (no L2) whose loads are recorded: the resource ids asked for. */
  function watchedWarmer() {
    const pool = fx.t.pools.pg.authorization;
    const loads = { ids: [] as string[] };
    const real = createFactsLoader(pool);
    const loadFacts: FactsLoader = (requests, sessionId) => {
      for (const r of requests) loads.ids.push(r.resource.id);
      return real(requests, sessionId);
    };
    const cache = new FactCache({
      l1MaxBytes: 1 << 20,
      ttlMs: () => 60_000,
      l2TtlSeconds: () => 60,
      l2: null,
    });
    return { cache, loads, warmer: createWarmer({ pool, cache, loadFacts }) };
  }

  it('loads what L1 lacks, skips what it holds, and loads again a fact that was invalidated', async () => {
    const owner = await signUp(fx.app);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await insertGeneration(fx.sql, { userId: owner.id }));
    const { cache, loads, warmer } = watchedWarmer();
    expect(await warmer.refreshViews()).toBe(true);

    const first = await warmer.warmFromViews(100);
    expect(first.generations).toBeGreaterThanOrEqual(5);
    expect(first.subjects).toBeGreaterThanOrEqual(1);
    for (const id of ids) expect(cache.holds(factKinds.generation.key(id))).toBe(true);
    expect(cache.holds(factKinds.user.key(owner.id))).toBe(true);
    const loadedFirst = loads.ids.length;

    // Everything is held: nothing is loaded again.
    const second = await warmer.warmFromViews(100);
    expect(second).toMatchObject({ generations: 0, subjects: 0 });
    expect(loads.ids.length).toBe(loadedFirst);

    // A fact an invalidation removed is loaded on the next warm, and only that one.
    const { rows } = await fx.sql.query<{ rev: number }>('SELECT rev FROM authz_revision');
    cache.invalidate(factKinds.generation.key(ids[0] as string), Number(rows[0]?.rev));
    expect(cache.holds(factKinds.generation.key(ids[0] as string))).toBe(false);
    const third = await warmer.warmFromViews(100);
    expect(third).toMatchObject({ generations: 1, subjects: 0 });
    expect(loads.ids.length).toBe(loadedFirst + 1);
    expect(cache.holds(factKinds.generation.key(ids[0] as string))).toBe(true);
    cache.close();
  });

  it('the periodic pass loads what is new to the views, not what an earlier pass chose and L1 let go', async () => {
    const owner = await signUp(fx.app);
    const old: string[] = [];
    for (let i = 0; i < 3; i++) old.push(await insertGeneration(fx.sql, { userId: owner.id }));
    const { cache, loads, warmer } = watchedWarmer();
    const loaded = loads.ids;
    await warmer.refreshViews();
    await warmer.warmFromViews(100, { onlyNew: true });
    for (const id of old) expect(cache.holds(factKinds.generation.key(id))).toBe(true);

    // The old facts leave L1 (as when their lifetime runs out unused); a generation is created.
    const { rows } = await fx.sql.query<{ rev: number }>('SELECT rev FROM authz_revision');
    for (const id of old) cache.invalidate(factKinds.generation.key(id), Number(rows[0]?.rev));
    const fresh = await insertGeneration(fx.sql, { userId: owner.id });
    await warmer.refreshViews();
    loaded.length = 0;
    const periodic = await warmer.warmFromViews(100, { onlyNew: true });
    expect(loaded).toEqual([fresh]);
    expect(periodic.generations).toBe(1);
    expect(periodic.skipped).toBeGreaterThanOrEqual(3);
    for (const id of old) expect(cache.holds(factKinds.generation.key(id))).toBe(false);
    expect(cache.holds(factKinds.generation.key(fresh))).toBe(true);

    // An explicit warm (start-up, POST /admin/cache/warm) loads everything L1 lacks.
    loaded.length = 0;
    const explicit = await warmer.warmFromViews(100);
    expect(explicit.skipped).toBe(0);
    expect(new Set(loaded)).toEqual(new Set(old));
    cache.close();
  });
});
