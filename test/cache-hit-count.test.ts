import { describe, expect, it } from 'vitest';
import { signUp } from './helpers/app.js';
import { callApi, useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

/**
 * The L1 hit ratio (GET /admin/cache/stats, velro_cache_lookups, the load test's target) counts each
 * fact a request needs once, where its lookup is settled. A cold check tries L1 synchronously, then
 * asks the keys L1 lacked again on the slower path (one L2 read, then the database): counting every
 * attempt made one missing fact two or three misses.
 */
describe('L1 lookups are counted once per fact a request needs', () => {
  const fx = useTestApp();

  it('a cold check of a new generation: one miss (the generation); warm: hits only', async () => {
    const { app, pipeline } = fx.t;
    const owner = await signUp(app);
    const l1 = () => pipeline.cache.snapshot().l1 as { hits: number; misses: number };
    const check = async (id: string) => {
      const res = await callApi(fx.t, owner, 'POST', '/authz/check', {
        resource: { type: 'generation', id },
        permission: 'view',
      });
      expect(res.statusCode).toBe(200);
      return { allowed: res.json<{ allowed: boolean }>().allowed, cache: res.headers['x-cache'] };
    };
    // The session and user facts are in L1 once one request has used them.
    expect((await callApi(fx.t, owner, 'GET', '/auth/me')).statusCode).toBe(200);
    const generation = await insertGeneration(fx.sql, { userId: owner.id });

    const before = l1();
    expect(await check(generation)).toEqual({ allowed: true, cache: 'miss' });
    const cold = l1();
    expect(cold.misses - before.misses).toBe(1);

    expect(await check(generation)).toEqual({ allowed: true, cache: 'l1' });
    const warm = l1();
    expect(warm.misses - cold.misses).toBe(0);
    expect(warm.hits - cold.hits).toBeGreaterThanOrEqual(3); // session, user, generation at least
  });
});
