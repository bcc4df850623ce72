import { describe, expect, it } from 'vitest';
import { errorOf, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

const fx = useTestApp();

const batch = (token: string, requests: unknown[]) => fx.call(token, 'POST', '/batch', { requests });

describe('POST /batch', () => {
  it('answers each sub-request in order, exactly as if it had been sent alone', async () => {
    const owner = await signUp(fx.app);
    const stranger = await signUp(fx.app);
    const mine = await insertGeneration(fx.sql, { userId: owner.id, prompt: 'secret lighthouse' });
    const res = await batch(stranger.accessToken, [
      { method: 'GET', url: '/api/v1/auth/me' },
      { method: 'GET', url: `/api/v1/generations/${mine}` },
      { method: 'GET', url: `/api/v1/generations/${mine}/authorize` },
      { method: 'GET', url: '/api/v1/credits/balance' },
      { method: 'GET', url: '/api/v1/generations/not-a-uuid' },
    ]);
    expect(res.statusCode).toBe(200);
    const { responses } = res.json();
    expect(responses.map((r: { status: number }) => r.status)).toEqual([200, 404, 404, 200, 404]);
    expect(responses[0].body.id).toBe(stranger.id);
    // another user's generation: the same 404 as alone, and none of its data
    expect(responses[1].body.error.code).toBe('not_found');
    expect(JSON.stringify(responses)).not.toContain('secret lighthouse');
    expect(responses[3].body).toEqual({ credits_balance: 1000 });

    const ownerView = (
      await batch(owner.accessToken, [{ method: 'GET', url: `/api/v1/generations/${mine}` }])
    ).json();
    expect(ownerView.responses[0]).toMatchObject({ status: 200, body: { prompt: 'secret lighthouse' } });
  });

  it('needs a valid credential itself, and sub-requests carry only the caller’s', async () => {
    const anonymous = await fx.call(null, 'POST', '/batch', {
      requests: [{ method: 'GET', url: '/api/v1/models' }],
    });
    expect(anonymous.statusCode).toBe(401);
  });

  it('refuses 21 sub-requests, non-GET ones, paths outside the API and nested batches with 400', async () => {
    const user = await signUp(fx.app);
    const many = Array.from({ length: 21 }, () => ({ method: 'GET', url: '/api/v1/auth/me' }));
    const cases: unknown[][] = [
      many,
      [{ method: 'DELETE', url: '/api/v1/auth/me' }],
      [{ method: 'POST', url: '/api/v1/generations' }],
      [{ method: 'GET', url: '/metrics' }],
      [{ method: 'GET', url: 'http://example.com/api/v1/auth/me' }],
      [{ method: 'GET', url: '/api/v1/batch' }],
      [],
    ];
    for (const requests of cases) {
      const res = await batch(user.accessToken, requests);
      expect(res.statusCode, JSON.stringify(requests).slice(0, 80)).toBe(400);
      expect(errorOf(res).code).toBe('validation_error');
    }
    expect((await batch(user.accessToken, many.slice(0, 20))).statusCode).toBe(200);
  });

  it('a service key keeps its scopes inside a batch', async () => {
    const user = await signUp(fx.app);
    const key = (
      await fx.call(user, 'POST', '/service-keys', { name: 'narrow', scopes: ['media:read'] })
    ).json().key;
    const res = await batch(key, [
      { method: 'GET', url: '/api/v1/auth/me' },
      { method: 'GET', url: '/api/v1/generations' },
      { method: 'GET', url: '/api/v1/service-keys' },
    ]);
    expect(res.json().responses.map((r: { status: number }) => r.status)).toEqual([200, 403, 403]);
  });
});

describe('GET /performance/test', () => {
  it('times an L1 get, a database round trip, a cold and a warm check, and rates the result', async () => {
    const res = await fx.app.inject({ method: 'GET', url: '/api/v1/performance/test' });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(['excellent', 'good', 'acceptable', 'degraded']).toContain(body.performance_level);
    expect(body.breakdown_us.l1_get).toBeGreaterThanOrEqual(0);
    expect(body.breakdown_us.database_round_trip).toBeGreaterThan(0);
    expect(body.breakdown_us.authorization_check_cold).toBeGreaterThan(0);
    expect(body.warm_check_layer).toBe('l1');
  });
});
