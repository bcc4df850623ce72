import { describe, expect, it } from 'vitest';
import { settle, signUp, startTestApp } from './helpers/app.js';
import { callApi, useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

// Kill switch on: every answer comes from PostgreSQL.
const cold = useTestApp({ env: { CACHE_ENABLED: 'false' } });

const roundTrips = async (run: () => Promise<{ statusCode: number }>) => {
  const before = cold.t.pools.checkouts.authorization;
  const res = await run();
  return { status: res.statusCode, trips: cold.t.pools.checkouts.authorization - before };
};

describe('a cold check is one database round trip, authentication included', () => {
  it('POST /authz/check and GET /generations/:id/authorize cost exactly one statement', async () => {
    const user = await signUp(cold.app);
    const gen = await insertGeneration(cold.sql, { userId: user.id });
    const check = () =>
      cold.call(user, 'POST', '/authz/check', {
        resource: { type: 'generation', id: gen },
        permission: 'view',
      });
    for (let i = 0; i < 3; i++) {
      const { status, trips } = await roundTrips(check);
      expect(status).toBe(200);
      expect(trips).toBe(1);
    }
    const authorize = await roundTrips(() => cold.call(user, 'GET', `/generations/${gen}/authorize`));
    expect(authorize).toEqual({ status: 200, trips: 1 });
    const bulk = await roundTrips(() =>
      cold.call(user, 'POST', '/authz/check-bulk', {
        checks: Array.from({ length: 100 }, (_, i) => ({
          resource: { type: 'generation', id: i === 0 ? gen : crypto.randomUUID() },
          permission: 'view',
        })),
      }),
    );
    expect(bulk).toEqual({ status: 200, trips: 1 });
  });

  it('the deferred session check still refuses a revoked session, an inactive user and a forged subject', async () => {
    const user = await signUp(cold.app);
    const gen = await insertGeneration(cold.sql, { userId: user.id });
    const check = (token: string) =>
      cold.call(token, 'POST', '/authz/check', {
        resource: { type: 'generation', id: gen },
        permission: 'view',
      });
    expect((await check(user.accessToken)).json().allowed).toBe(true);
    await cold.sql.query('UPDATE users SET is_active = false WHERE id = $1', [user.id]);
    await settle(cold.t);
    expect((await check(user.accessToken)).statusCode).toBe(401);
    await cold.sql.query('UPDATE users SET is_active = true WHERE id = $1', [user.id]);
    await cold.sql.query('UPDATE sessions SET revoked_at = now() WHERE user_id = $1', [user.id]);
    await settle(cold.t);
    const revoked = await check(user.accessToken);
    expect(revoked.statusCode).toBe(401);
    expect(revoked.body).not.toContain('allowed');
    const authorize = await cold.call(user, 'GET', `/generations/${gen}/authorize`);
    expect(authorize.statusCode).toBe(401);
  });

  it('with the cache on, the first check of a new session is one round trip and the next ones none', async () => {
    const warm = await startTestApp({ databaseUrl: cold.db.url });
    try {
      const user = await signUp(warm.app);
      const gen = await insertGeneration(cold.sql, { userId: user.id });
      // Sign-in warming happens in the background; a fresh session id from another instance is cold here.
      const other = await signUp(cold.app);
      const check = (token: string, id: string) =>
        callApi(warm, token, 'POST', '/authz/check', {
          resource: { type: 'generation', id },
          permission: 'view',
        });
      const before = warm.pools.checkouts.authorization;
      expect((await check(other.accessToken, gen)).json().allowed).toBe(false);
      expect(warm.pools.checkouts.authorization - before).toBe(1);
      const again = warm.pools.checkouts.authorization;
      const second = await check(other.accessToken, gen);
      expect(second.json().allowed).toBe(false);
      expect(second.headers['x-cache']).toBe('l1');
      expect(warm.pools.checkouts.authorization - again).toBe(0);
      expect((await check(user.accessToken, gen)).json().allowed).toBe(true);
    } finally {
      await warm.close();
    }
  });
});
