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

  it('loads what L1 lacks, skips what it holds, and loads again a fact that was invalidated', async () => {
    const owner = await signUp(fx.app);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await insertGeneration(fx.sql, { userId: owner.id }));
    const pool = fx.t.pools.pg.authorization;
    const statements = { facts: 0, requests: 0 };
    const real = createFactsLoader(pool);
    const loadFacts: FactsLoader = (requests, sessionId) => {
      statements.facts += 1;
      statements.requests += requests.length;
      return real(requests, sessionId);
    };
    const cache = new FactCache({
      l1MaxBytes: 1 << 20,
      ttlMs: () => 60_000,
      l2TtlSeconds: () => 60,
      l2: null,
    });
    const warmer = createWarmer({ pool, cache, loadFacts });
    expect(await warmer.refreshViews()).toBe(true);

    const first = await warmer.warmFromViews(100);
    expect(first.generations).toBeGreaterThanOrEqual(5);
    expect(first.subjects).toBeGreaterThanOrEqual(1);
    for (const id of ids) expect(cache.holds(factKinds.generation.key(id))).toBe(true);
    expect(cache.holds(factKinds.user.key(owner.id))).toBe(true);
    const loadedFirst = statements.requests;

    // Everything is held: nothing is loaded again.
    const second = await warmer.warmFromViews(100);
    expect(second).toMatchObject({ generations: 0, subjects: 0 });
    expect(statements.requests).toBe(loadedFirst);

    // A fact an invalidation removed is loaded on the next warm, and only that one.
    const { rows } = await fx.sql.query<{ rev: number }>('SELECT rev FROM authz_revision');
    cache.invalidate(factKinds.generation.key(ids[0] as string), Number(rows[0]?.rev));
    expect(cache.holds(factKinds.generation.key(ids[0] as string))).toBe(false);
    const third = await warmer.warmFromViews(100);
    expect(third).toMatchObject({ generations: 1, subjects: 0 });
    expect(statements.requests).toBe(loadedFirst + 1);
    expect(cache.holds(factKinds.generation.key(ids[0] as string))).toBe(true);
    cache.close();
  });
});
