import { describe, expect, it, vi } from 'vitest';
import { bearer, errorOf, settle, signUp } from './helpers/app.js';
import { statementsSent, useTestApp } from './helpers/fixture.js';

const fx = useTestApp({ env: { INITIAL_CREDITS: '1000' } });

const post = (url: string, payload: unknown, headers: Record<string, string> = {}) =>
  fx.call(null, 'POST', url, payload as object, headers);
const get = (url: string, headers: Record<string, string> = {}) =>
  fx.call(null, 'GET', url, undefined, headers);

describe('register', () => {
  it('creates the user, grants signup credits with a ledger row, and signs in', async () => {
    const res = await post('/auth/register', {
      email: 'Mixed.Case@Example.COM',
      password: 'a long enough password',
      display_name: 'Mixed',
    });
    expect(res.statusCode).toBe(201);
    const body = res.json();
    expect(body).toMatchObject({
      user: { email: 'mixed.case@example.com', display_name: 'Mixed', role: 'user', credits_balance: 1000 },
      token_type: 'Bearer',
      expires_in: 900,
    });
    expect(body.access_token.split('.')).toHaveLength(3);
    expect(body.refresh_token).toMatch(/^rt_/);
    expect(body.user).not.toHaveProperty('password_hash');

    const ledger = await fx.sql.query(
      'SELECT amount, balance_after, reason FROM credit_transactions WHERE user_id = $1',
      [body.user.id],
    );
    expect(ledger.rows).toEqual([{ amount: 1000, balance_after: 1000, reason: 'signup' }]);
    const stored = await fx.sql.query('SELECT password_hash FROM users WHERE id = $1', [body.user.id]);
    expect(stored.rows[0].password_hash).toMatch(/^\$argon2id\$/);

    const me = await get('/auth/me', bearer(body.access_token));
    expect(me.statusCode).toBe(200);
    expect(me.json()).toMatchObject({
      id: body.user.id,
      email: 'mixed.case@example.com',
      credits_balance: 1000,
    });
  });

  it('refuses the same email in any case with 409 and leaves one account', async () => {
    const first = await post('/auth/register', { email: 'dup@example.com', password: 'password one' });
    expect(first.statusCode).toBe(201);
    const again = await post('/auth/register', { email: 'DUP@Example.com', password: 'password two' });
    expect(again.statusCode).toBe(409);
    expect(errorOf(again).code).toBe('email_taken');
    const count = await fx.sql.query(`SELECT count(*)::int AS n FROM users WHERE email = 'dup@example.com'`);
    expect(count.rows[0].n).toBe(1);
  });

  it('registers once when the same email races', async () => {
    const results = await Promise.all(
      Array.from({ length: 8 }, () =>
        post('/auth/register', { email: 'race@example.com', password: 'racing password' }),
      ),
    );
    const codes = results.map((r) => r.statusCode).sort();
    expect(codes.filter((c) => c === 201)).toHaveLength(1);
    expect(codes.filter((c) => c === 409)).toHaveLength(7);
    const ledger = await fx.sql.query(
      `SELECT count(*)::int AS n FROM credit_transactions c JOIN users u ON u.id = c.user_id WHERE u.email = 'race@example.com'`,
    );
    expect(ledger.rows[0].n).toBe(1);
  });

  it('answers 400 with field details for bad email, short password, wrong types and missing fields', async () => {
    const cases: [unknown, string][] = [
      [{ email: 'not-an-email', password: 'long enough pw' }, 'body.email'],
      [{ email: 'a@example.com', password: 'short' }, 'body.password'],
      [{ email: 'a@example.com', password: 12345678901 }, 'body.password'],
      [{ email: 'a@example.com' }, 'body.password'],
      [{ email: 'a@example.com', password: 'long enough pw', display_name: '   ' }, 'body.display_name'],
    ];
    for (const [payload, field] of cases) {
      const res = await post('/auth/register', payload);
      expect(res.statusCode, JSON.stringify(payload)).toBe(400);
      const error = errorOf(res);
      expect(error.code).toBe('validation_error');
      expect((error.details as { field: string }[]).map((d) => d.field)).toContain(field);
    }
  });
});

describe('login', () => {
  it('signs in with the right password, any email case', async () => {
    const user = await signUp(fx.app);
    const res = await post('/auth/login', { email: user.email.toUpperCase(), password: user.password });
    expect(res.statusCode).toBe(200);
    expect(res.json().user.id).toBe(user.id);
  });

  it('gives the same 401 for an unknown email and a wrong password', async () => {
    const user = await signUp(fx.app);
    const wrong = await post('/auth/login', { email: user.email, password: 'not the password' });
    const unknown = await post('/auth/login', { email: 'nobody@example.com', password: 'not the password' });
    expect(wrong.statusCode).toBe(401);
    expect(unknown.statusCode).toBe(401);
    const a = errorOf(wrong);
    const b = errorOf(unknown);
    expect([a.code, a.message]).toEqual([b.code, b.message]);
    // both denials are in the audit log (written off the request path)
    await vi.waitFor(async () => {
      const rows = await fx.sql.query(
        `SELECT reason FROM audit_events WHERE action = 'auth.login' AND decision = 'deny' AND request_id = ANY($1)`,
        [[wrong.headers['x-request-id'], unknown.headers['x-request-id']]],
      );
      expect(rows.rows.map((r) => r.reason).sort()).toEqual(['unknown email', 'wrong password']);
    });
  });

  it('refuses a deactivated account with the same 401', async () => {
    const user = await signUp(fx.app);
    await fx.sql.query('UPDATE users SET is_active = false WHERE id = $1', [user.id]);
    await settle(fx.t);
    const res = await post('/auth/login', { email: user.email, password: user.password });
    expect(res.statusCode).toBe(401);
    expect(errorOf(res).code).toBe('invalid_credentials');
    // and the session opened at sign-up is refused from the next request on
    expect((await get('/auth/me', bearer(user.accessToken))).statusCode).toBe(401);
  });
});

describe('refresh rotation', () => {
  it('rotates: the new pair works, the old refresh token does not', async () => {
    const user = await signUp(fx.app);
    const res = await post('/auth/refresh', { refresh_token: user.refreshToken });
    expect(res.statusCode).toBe(200);
    const next = res.json();
    expect(next.refresh_token).not.toBe(user.refreshToken);
    expect((await get('/auth/me', bearer(next.access_token))).statusCode).toBe(200);
  });

  it('a rotation is one statement (no transaction); a replay still takes the locked transaction', async () => {
    const statements = () => statementsSent('write_heavy', fx.app);
    const user = await signUp(fx.app);
    const before = await statements();
    const res = await post('/auth/refresh', { refresh_token: user.refreshToken });
    expect(res.statusCode).toBe(200);
    expect((await statements()) - before).toBe(1);
    // The replay: the one statement finds no live unused token, then BEGIN, lock, revoke, audit,
    // COMMIT and the revision read.
    const beforeReplay = await statements();
    const replay = await post('/auth/refresh', { refresh_token: user.refreshToken });
    expect(errorOf(replay).code).toBe('refresh_token_reused');
    expect((await statements()) - beforeReplay).toBeGreaterThan(3);
  });

  it('a replayed refresh token revokes the whole family, newest tokens included', async () => {
    const user = await signUp(fx.app);
    const first = (await post('/auth/refresh', { refresh_token: user.refreshToken })).json();
    const second = (await post('/auth/refresh', { refresh_token: first.refresh_token })).json();
    expect((await get('/auth/me', bearer(second.access_token))).statusCode).toBe(200);

    // An attacker replays the first, already-rotated token.
    const replay = await post('/auth/refresh', { refresh_token: user.refreshToken });
    expect(replay.statusCode).toBe(401);
    expect(errorOf(replay).code).toBe('refresh_token_reused');

    // The legitimate holder's newest refresh token and live access tokens are dead too.
    const later = await post('/auth/refresh', { refresh_token: second.refresh_token });
    expect(later.statusCode).toBe(401);
    expect((await get('/auth/me', bearer(second.access_token))).statusCode).toBe(401);
    expect((await get('/auth/me', bearer(user.accessToken))).statusCode).toBe(401);

    const audit = await fx.sql.query(
      `SELECT count(*)::int AS n FROM audit_events WHERE actor_id = $1 AND action = 'auth.refresh_token_reuse'`,
      [user.id],
    );
    expect(audit.rows[0].n).toBe(1);
  });

  it('the token just rotated, presented again at once, revokes the family (no reuse interval by default)', async () => {
    const user = await signUp(fx.app);
    const next = (await post('/auth/refresh', { refresh_token: user.refreshToken })).json();
    const replay = await post('/auth/refresh', { refresh_token: user.refreshToken });
    expect(replay.statusCode).toBe(401);
    expect(errorOf(replay).code).toBe('refresh_token_reused');
    expect((await post('/auth/refresh', { refresh_token: next.refresh_token })).statusCode).toBe(401);
    expect((await get('/auth/me', bearer(next.access_token))).statusCode).toBe(401);
  });

  it('two overlapping refreshes with one token (two tabs) are one refresh: the same pair, session live', async () => {
    const user = await signUp(fx.app);
    const results = await Promise.all([
      post('/auth/refresh', { refresh_token: user.refreshToken }),
      post('/auth/refresh', { refresh_token: user.refreshToken }),
    ]);
    expect(results.map((r) => r.statusCode)).toEqual([200, 200]);
    const [a, b] = results.map((r) => r.json());
    expect(a.refresh_token).toBe(b.refresh_token);
    expect(a.access_token).toBe(b.access_token);
    expect((await get('/auth/me', bearer(a.access_token))).statusCode).toBe(200);
    // Once that refresh is over, the old token is spent like any other (test/refresh-reuse.test.ts
    // covers overlap, reuse and the opt-in reuse interval in depth).
    const late = await post('/auth/refresh', { refresh_token: user.refreshToken });
    expect(late.statusCode).toBe(401);
    expect(errorOf(late).code).toBe('refresh_token_reused');
    expect((await post('/auth/refresh', { refresh_token: a.refresh_token })).statusCode).toBe(401);
  });

  it('refuses unknown, malformed and empty refresh tokens with 401 or 400, never 500', async () => {
    expect((await post('/auth/refresh', { refresh_token: 'rt_unknown' })).statusCode).toBe(401);
    expect((await post('/auth/refresh', { refresh_token: 'garbage' })).statusCode).toBe(401);
    expect((await post('/auth/refresh', { refresh_token: '' })).statusCode).toBe(400);
    expect((await post('/auth/refresh', {})).statusCode).toBe(400);
  });

  it('stores refresh tokens only as hashes', async () => {
    const user = await signUp(fx.app);
    const rows = await fx.sql.query(
      `SELECT rt.token_hash FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE s.user_id = $1`,
      [user.id],
    );
    expect(rows.rowCount).toBe(1);
    const stored: Buffer = rows.rows[0].token_hash;
    expect(stored).toHaveLength(32);
    expect(stored.toString('utf8')).not.toContain(user.refreshToken.slice(3));
  });
});

describe('sessions', () => {
  it('logout revokes this session at once, and only this one', async () => {
    const user = await signUp(fx.app);
    const other = (await post('/auth/login', { email: user.email, password: user.password })).json();
    const res = await post('/auth/logout', {}, bearer(user.accessToken));
    expect(res.statusCode).toBe(204);
    expect((await get('/auth/me', bearer(user.accessToken))).statusCode).toBe(401);
    expect((await post('/auth/refresh', { refresh_token: user.refreshToken })).statusCode).toBe(401);
    expect((await get('/auth/me', bearer(other.access_token))).statusCode).toBe(200);
  });

  it('logout-all revokes every session of the user', async () => {
    const user = await signUp(fx.app);
    const second = (await post('/auth/login', { email: user.email, password: user.password })).json();
    const res = await post('/auth/logout-all', {}, bearer(second.access_token));
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ revoked_sessions: 2 });
    expect((await get('/auth/me', bearer(user.accessToken))).statusCode).toBe(401);
    expect((await get('/auth/me', bearer(second.access_token))).statusCode).toBe(401);
  });

  it('changing the password revokes every other session and keeps this one', async () => {
    const user = await signUp(fx.app);
    const other = (await post('/auth/login', { email: user.email, password: user.password })).json();
    const wrong = await post(
      '/auth/password',
      { current_password: 'not it at all', new_password: 'a brand new password' },
      bearer(user.accessToken),
    );
    expect(wrong.statusCode).toBe(403);
    expect(errorOf(wrong).code).toBe('invalid_current_password');

    const res = await post(
      '/auth/password',
      { current_password: user.password, new_password: 'a brand new password' },
      bearer(user.accessToken),
    );
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ revoked_sessions: 1 });
    expect((await get('/auth/me', bearer(user.accessToken))).statusCode).toBe(200);
    expect((await get('/auth/me', bearer(other.access_token))).statusCode).toBe(401);
    expect((await post('/auth/refresh', { refresh_token: other.refresh_token })).statusCode).toBe(401);
    expect((await post('/auth/login', { email: user.email, password: user.password })).statusCode).toBe(401);
    expect(
      (await post('/auth/login', { email: user.email, password: 'a brand new password' })).statusCode,
    ).toBe(200);
  });

  it('updates the profile', async () => {
    const user = await signUp(fx.app);
    const res = await fx.call(user, 'PATCH', '/auth/profile', { display_name: '  New Name ' });
    expect(res.statusCode).toBe(200);
    expect(res.json().display_name).toBe('New Name');
    const empty = await fx.call(user, 'PATCH', '/auth/profile', {});
    expect(empty.statusCode).toBe(400);
  });
});
