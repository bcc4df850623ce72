import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { signUp, startTestApp, type TestApp } from './helpers/app.js';
import { useTestDatabase } from './helpers/fixture.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

// Runs whenever REDIS_URL is set; the global setup refuses to start under CI without it.
const redisUrl = inject('redisUrl');

describe.runIf(redisUrl)('login limits shared through Redis', () => {
  const fx = useTestDatabase();
  const apps: TestApp[] = [];

  afterAll(async () => {
    for (const app of apps) await app.close();
  });

  it('counts failures for one account across instances', async () => {
    const prefix = `velro-test:${randomBytes(4).toString('hex')}:`;
    const env = { LOGIN_RATE_LIMIT_PER_ACCOUNT: '4' };
    const one = await startTestApp({ databaseUrl: fx.db.url, env, redis: { prefix } });
    const two = await startTestApp({ databaseUrl: fx.db.url, env, redis: { prefix } });
    apps.push(one, two);
    const user = await signUp(one.app);
    const attempt = (t: TestApp, i: number) =>
      t.app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        remoteAddress: `198.51.100.${i}`,
        payload: { email: user.email, password: `wrong-${i}-pw` },
      });
    expect((await attempt(one, 1)).statusCode).toBe(401);
    expect((await attempt(two, 2)).statusCode).toBe(401);
    expect((await attempt(one, 3)).statusCode).toBe(401);
    expect((await attempt(two, 4)).statusCode).toBe(401);
    // Neither instance alone has seen four failures; together they have.
    expect((await attempt(one, 5)).statusCode).toBe(429);
    expect((await attempt(two, 6)).statusCode).toBe(429);
  });

  it('keeps logins working, and limited, while Redis is unreachable', async () => {
    const proxy = TcpProxy.forUrl(redisUrl as string);
    await proxy.start();
    const through = new URL(redisUrl as string);
    through.hostname = '127.0.0.1';
    through.port = String(proxy.port);
    const t = await startTestApp({
      databaseUrl: fx.db.url,
      env: { LOGIN_RATE_LIMIT_PER_ACCOUNT: '3', REDIS_URL: through.toString() },
      redis: true,
    });
    apps.push(t);
    try {
      const user = await signUp(t.app);
      await proxy.cut();
      const login = (password: string) =>
        t.app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { email: user.email, password } });
      expect((await login(user.password)).statusCode).toBe(200);
      for (let i = 0; i < 3; i++) expect((await login(`wrong-${i}-pw`)).statusCode).toBe(401);
      expect((await login('wrong-again')).statusCode).toBe(429);
    } finally {
      await proxy.cut();
    }
  });
});
