import { afterAll, describe, expect, it } from 'vitest';
import { isDatabaseUnavailable } from '../src/platform/db/unavailable.js';
import { errorOf, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

const STATEMENT_TIMEOUT_MS = 400;
const CONNECT_TIMEOUT_MS = 400;
/** Timeout plus the client-side guard (1 s) plus scheduling slack on a busy machine. */
const BOUND_MS = STATEMENT_TIMEOUT_MS + 1_000 + 1_000;

let proxy: TcpProxy;
// Registered before the fixture, so it runs after the app has closed.
afterAll(async () => {
  await proxy?.cut();
});

const fx = useTestApp(async (db) => {
  proxy = TcpProxy.forUrl(db.url);
  await proxy.start();
  return {
    databaseUrl: proxy.wrap(db.url),
    env: {
      STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
      DB_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
    },
  };
});

async function timed<T>(run: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await run();
  return { value, ms: performance.now() - started };
}

describe('when the database goes away', () => {
  it('answers 503 with Retry-After quickly, keeps /health up, and recovers by itself', async () => {
    const user = await signUp(fx.app);
    const me = () => fx.call(user, 'GET', '/auth/me');
    expect((await me()).statusCode).toBe(200);

    await proxy.cut();
    for (let i = 0; i < 3; i++) {
      const { value: res, ms } = await timed(me);
      expect(res.statusCode).toBe(503);
      expect(res.headers['retry-after']).toMatch(/^\d+$/);
      expect(errorOf(res).code).toBe('service_unavailable');
      expect(res.body).not.toMatch(/ECONNREFUSED|at .*\.ts|stack/i);
      expect(ms).toBeLessThan(BOUND_MS);
    }
    const login = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/auth/login',
      payload: { email: user.email, password: user.password },
    });
    expect(login.statusCode).toBe(503);
    expect((await fx.app.inject({ method: 'GET', url: '/health' })).statusCode).toBe(200);
    const ready = await fx.app.inject({ method: 'GET', url: '/ready' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json().checks.postgres.ok).toBe(false);

    await proxy.start();
    // Recovery needs no restart: the first request after the database returns succeeds.
    expect((await me()).statusCode).toBe(200);
    expect((await fx.app.inject({ method: 'GET', url: '/ready' })).statusCode).toBe(200);
  });

  it('answers 503 within the bound when the database hangs instead of refusing', async () => {
    const user = await signUp(fx.app);
    const me = () => fx.call(user, 'GET', '/auth/me');
    expect((await me()).statusCode).toBe(200);

    proxy.freeze();
    try {
      const results = await Promise.all(Array.from({ length: 6 }, () => timed(me)));
      for (const { value: res, ms } of results) {
        expect(res.statusCode).toBe(503);
        expect(ms).toBeLessThan(BOUND_MS);
      }
    } finally {
      proxy.thaw();
      await proxy.cut();
      await proxy.start();
    }
    // Connections that hung may still sit in the pool, dead: the first use of each fails (503,
    // retryable) and is discarded. Recovery needs no restart: within a few requests it answers.
    let recovered = false;
    for (let attempt = 0; attempt < 5 && !recovered; attempt++) recovered = (await me()).statusCode === 200;
    expect(recovered).toBe(true);
  });

  it('turns a statement that exceeds statement_timeout into an unavailable error', async () => {
    const { value: error, ms } = await timed(() =>
      fx.t.pools.pg.authorization.query('SELECT pg_sleep(5)').then(
        () => null,
        (e: unknown) => e,
      ),
    );
    expect((error as { code?: string }).code).toBe('57014');
    expect(isDatabaseUnavailable(error)).toBe(true);
    expect(ms).toBeLessThan(BOUND_MS);
  });
});
