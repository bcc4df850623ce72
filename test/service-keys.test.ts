import { describe, expect, it } from 'vitest';
import { bearer, errorOf, type SignedUp, settle, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const fx = useTestApp();

const createKey = (user: SignedUp, body: Record<string, unknown>) =>
  fx.call(user, 'POST', '/service-keys', body);

const me = (token: string) => fx.call(token, 'GET', '/auth/me');

describe('service keys', () => {
  it('creates a key shown once, stored only as a hash, that authenticates as its owner', async () => {
    const user = await signUp(fx.app);
    const res = await createKey(user, { name: 'CI deploy', scopes: ['generations:read', 'media:read'] });
    expect(res.statusCode).toBe(201);
    const key = res.json();
    expect(key.key).toMatch(/^vk_[A-Za-z0-9_-]{43}$/);
    expect(key).toMatchObject({
      name: 'CI deploy',
      scopes: ['generations:read', 'media:read'],
      revoked_at: null,
    });
    expect(key.key.startsWith(key.prefix)).toBe(true);

    const stored = await fx.sql.query('SELECT secret_hash, prefix FROM service_keys WHERE id = $1', [key.id]);
    expect(stored.rows[0].secret_hash).toHaveLength(32);
    expect(JSON.stringify(stored.rows[0])).not.toContain(key.key.slice(12));

    const who = await me(key.key);
    expect(who.statusCode).toBe(200);
    expect(who.json().id).toBe(user.id);

    const list = await fx.call(user, 'GET', '/service-keys');
    expect(list.statusCode).toBe(200);
    expect(list.json().items.map((k: { id: string }) => k.id)).toContain(key.id);
    expect(JSON.stringify(list.json())).not.toContain(key.key);
  });

  it('a revoked key is refused on the very next request', async () => {
    const user = await signUp(fx.app);
    const key = (await createKey(user, { name: 'to revoke', scopes: ['generations:read'] })).json();
    expect((await me(key.key)).statusCode).toBe(200);
    const del = await fx.call(user, 'DELETE', `/service-keys/${key.id}`);
    expect(del.statusCode).toBe(204);
    expect((await me(key.key)).statusCode).toBe(401);
    const audit = await fx.sql.query(`SELECT action FROM audit_events WHERE resource_id = $1 ORDER BY id`, [
      key.id,
    ]);
    expect(audit.rows.map((r) => r.action)).toEqual(['service_key.create', 'service_key.revoke']);
  });

  it('an expired key is refused', async () => {
    const user = await signUp(fx.app);
    const key = (await createKey(user, { name: 'short', scopes: ['generations:read'] })).json();
    expect((await me(key.key)).statusCode).toBe(200);
    await fx.sql.query(`UPDATE service_keys SET expires_at = now() - interval '1 second' WHERE id = $1`, [
      key.id,
    ]);
    await settle(fx.t);
    expect((await me(key.key)).statusCode).toBe(401);
  });

  it('refuses expiry in the past, unknown scopes and empty scopes with 400', async () => {
    const user = await signUp(fx.app);
    const past = await createKey(user, {
      name: 'x',
      scopes: ['generations:read'],
      expires_at: '2001-01-01T00:00:00Z',
    });
    expect(past.statusCode).toBe(400);
    expect(errorOf(past).code).toBe('validation_error');
    expect((await createKey(user, { name: 'x', scopes: ['root'] })).statusCode).toBe(400);
    expect((await createKey(user, { name: 'x', scopes: [] })).statusCode).toBe(400);
    expect((await createKey(user, { name: '', scopes: ['admin'] })).statusCode).toBe(400);
  });

  it('a key cannot reach routes beyond its scopes, nor session-only routes', async () => {
    const user = await signUp(fx.app);
    const key = (await createKey(user, { name: 'narrow', scopes: ['media:read'] })).json();
    // session-only: minting keys, listing keys, logging out, changing the password
    const mint = await fx.call(key.key, 'POST', '/service-keys', { name: 'escalate', scopes: ['admin'] });
    expect(mint.statusCode).toBe(403);
    expect(errorOf(mint).code).toBe('session_required');
    for (const [method, url] of [
      ['GET', '/api/v1/service-keys'],
      ['POST', '/api/v1/auth/logout-all'],
      ['POST', '/api/v1/auth/logout'],
    ] as const) {
      expect((await fx.app.inject({ method, url, headers: bearer(key.key) })).statusCode).toBe(403);
    }
    const count = await fx.sql.query('SELECT count(*)::int AS n FROM service_keys WHERE user_id = $1', [
      user.id,
    ]);
    expect(count.rows[0].n).toBe(1);
  });

  it("another user's key id answers 404 and stays alive", async () => {
    const owner = await signUp(fx.app);
    const intruder = await signUp(fx.app);
    const key = (await createKey(owner, { name: 'mine', scopes: ['generations:read'] })).json();
    const del = await fx.call(intruder, 'DELETE', `/service-keys/${key.id}`);
    expect(del.statusCode).toBe(404);
    expect((await me(key.key)).statusCode).toBe(200);
    const list = await fx.call(intruder, 'GET', '/service-keys');
    expect(list.json().items).toEqual([]);
  });

  it('refuses made-up and mangled keys', async () => {
    const user = await signUp(fx.app);
    const key = (await createKey(user, { name: 'real', scopes: ['generations:read'] })).json();
    for (const fake of ['vk_', `vk_${'A'.repeat(43)}`, `${key.key}x`, key.key.slice(0, -1), key.prefix]) {
      expect((await me(fake)).statusCode).toBe(401);
    }
  });

  it('pages through keys with a cursor, newest first, without repeats', async () => {
    const user = await signUp(fx.app);
    for (let i = 0; i < 5; i++) await createKey(user, { name: `k${i}`, scopes: ['media:read'] });
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const url: string = `/api/v1/service-keys?limit=2${cursor ? `&cursor=${cursor}` : ''}`;
      const res = await fx.app.inject({ method: 'GET', url, headers: bearer(user.accessToken) });
      expect(res.statusCode).toBe(200);
      const body = res.json();
      seen.push(...body.items.map((k: { name: string }) => k.name));
      cursor = body.next_cursor;
    } while (cursor);
    expect(seen).toEqual(['k4', 'k3', 'k2', 'k1', 'k0']);
    const bad = await fx.call(user, 'GET', '/service-keys?cursor=bm9wZQ');
    expect(bad.statusCode).toBe(400);
    const tooMany = await fx.call(user, 'GET', '/service-keys?limit=101');
    expect(tooMany.statusCode).toBe(400);
  });

  it('a deactivated owner takes their keys down with them', async () => {
    const user = await signUp(fx.app);
    const key = (await createKey(user, { name: 'k', scopes: ['media:read'] })).json();
    await fx.sql.query('UPDATE users SET is_active = false WHERE id = $1', [user.id]);
    await settle(fx.t);
    expect((await me(key.key)).statusCode).toBe(401);
  });
});
