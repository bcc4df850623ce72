/**
 * SPEC §8: reads, checks and writes are limited per user and route class, in process. The limit is
 * per user (a service key counts as its owner), per class (reads do not use up checks), and comes
 * after authentication (no credential is a 401, never a 429 that counts for somebody).
 */
import { describe, expect, it } from 'vitest';
import { bearer, errorOf, type SignedUp, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const LIMIT = 5;
const fx = useTestApp({ env: { USER_RATE_LIMIT_PER_MINUTE: String(LIMIT) } });

const listProjects = (token: string) => fx.call(token, 'GET', '/projects');

async function useUp(user: SignedUp): Promise<void> {
  for (let i = 0; i < LIMIT; i++) expect((await listProjects(user.accessToken)).statusCode).toBe(200);
}

describe('per-user limits', () => {
  it('answers 429 with Retry-After and the envelope once a user spends a class’s minute', async () => {
    const alice = await signUp(fx.app);
    await useUp(alice);
    const limited = await listProjects(alice.accessToken);
    expect(limited.statusCode).toBe(429);
    expect(errorOf(limited).code).toBe('rate_limited');
    const retryAfter = Number(limited.headers['retry-after']);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
  });

  it('counts each user apart, and each class apart', async () => {
    const bob = await signUp(fx.app);
    const carol = await signUp(fx.app);
    await useUp(bob);
    expect((await listProjects(bob.accessToken)).statusCode).toBe(429);
    // Another user is untouched.
    expect((await listProjects(carol.accessToken)).statusCode).toBe(200);
    // Bob's checks (critical_auth) have a budget of their own.
    const check = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/authz/check',
      headers: bearer(bob.accessToken),
      payload: { resource: { type: 'project', id: crypto.randomUUID() }, permission: 'view' },
    });
    expect(check.statusCode).toBe(200);
  });

  it('counts a service key as its owner: a key cannot multiply the budget', async () => {
    const dave = await signUp(fx.app);
    const created = await fx.call(dave, 'POST', '/service-keys', {
      name: 'script',
      scopes: ['projects:read'],
    });
    expect(created.statusCode).toBe(201);
    const key = created.json().key as string;
    await useUp(dave);
    const viaKey = await fx.call(key, 'GET', '/projects');
    expect(viaKey.statusCode).toBe(429);
  });

  it('counts checks, not requests, on /authz/check-bulk', async () => {
    const erin = await signUp(fx.app);
    const bulk = (n: number) =>
      fx.app.inject({
        method: 'POST',
        url: '/api/v1/authz/check-bulk',
        headers: bearer(erin.accessToken),
        payload: {
          checks: Array.from({ length: n }, () => ({
            resource: { type: 'generation', id: crypto.randomUUID() },
            permission: 'view',
          })),
        },
      });
    // The budget is BULK_CHECKS_FACTOR (50) × the per-request limit: 250 checks a minute here.
    expect((await bulk(200)).statusCode).toBe(200);
    const over = await bulk(100);
    expect(over.statusCode).toBe(429);
    expect(errorOf(over).message).toContain('checks in bulk');
    expect(Number(over.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    // Many small bulks add up the same way: no request count to hide behind.
    const frank = await signUp(fx.app);
    const small = () =>
      fx.app.inject({
        method: 'POST',
        url: '/api/v1/authz/check-bulk',
        headers: bearer(frank.accessToken),
        payload: {
          checks: Array.from({ length: 50 }, () => ({
            resource: { type: 'project', id: crypto.randomUUID() },
            permission: 'view',
          })),
        },
      });
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await small()).statusCode);
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429]);
  });

  it('refuses a missing or forged credential with 401, not 429', async () => {
    for (let i = 0; i < LIMIT + 2; i++) {
      const res = await fx.app.inject({ method: 'GET', url: '/api/v1/projects' });
      expect(res.statusCode).toBe(401);
    }
  });

  it('documents the 429 on limited routes and not on public ones', async () => {
    const doc = (await fx.app.inject({ method: 'GET', url: '/docs/json' })).json();
    expect(doc.paths['/api/v1/projects'].get.responses['429']).toBeDefined();
    expect(doc.paths['/api/v1/authz/check'].post.responses['429']).toBeDefined();
    expect(doc.paths['/health'].get.responses['429']).toBeUndefined();
  });
});
