/**
 * The refresh-token reuse interval: a rotated token presented again shortly after (two tabs
 * refreshing together, a retry after a lost answer) gets the same successor; later, or once that
 * successor was rotated in turn, it is a replay and revokes the session.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { refreshSuccessors } from '../src/modules/auth/tokens.js';
import {
  bearer,
  createTestDatabase,
  errorOf,
  signUp,
  startTestApp,
  type TestApp,
  type TestDatabase,
} from './helpers/app.js';

let db: TestDatabase;
/** The default interval (10 s): long enough for anything a test does. */
let t: TestApp;
/** A short interval, so that a test can outwait it. */
let short: TestApp;
let sql: pg.Client;
const SHORT_MS = 300;

beforeAll(async () => {
  db = await createTestDatabase();
  t = await startTestApp({ databaseUrl: db.url });
  short = await startTestApp({
    databaseUrl: db.url,
    env: { REFRESH_TOKEN_REUSE_INTERVAL_MS: String(SHORT_MS) },
  });
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});

afterAll(async () => {
  await sql?.end();
  await short?.close();
  await t?.close();
  await db?.drop();
});

const refresh = (app: TestApp, token: string) =>
  app.app.inject({ method: 'POST', url: '/api/v1/auth/refresh', payload: { refresh_token: token } });
const me = (app: TestApp, accessToken: string) =>
  app.app.inject({ method: 'GET', url: '/api/v1/auth/me', headers: bearer(accessToken) });

interface Pair {
  access_token: string;
  refresh_token: string;
}

async function refreshed(app: TestApp, token: string): Promise<Pair> {
  const res = await refresh(app, token);
  expect(res.statusCode, res.body).toBe(200);
  return res.json<Pair>();
}

async function reuseAudits(userId: string): Promise<number> {
  const { rows } = await sql.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM audit_events WHERE actor_id = $1 AND action = 'auth.refresh_token_reuse'`,
    [userId],
  );
  return rows[0]?.n ?? 0;
}

describe('within the reuse interval', () => {
  it('two concurrent refreshes with one token both succeed with the same refresh token', async () => {
    const user = await signUp(t.app);
    const [a, b] = await Promise.all([refresh(t, user.refreshToken), refresh(t, user.refreshToken)]);
    expect(a?.statusCode, a?.body).toBe(200);
    expect(b?.statusCode, b?.body).toBe(200);
    const first = a!.json<Pair>();
    const second = b!.json<Pair>();
    expect(first.refresh_token).toBe(second.refresh_token);
    expect(first.refresh_token).not.toBe(user.refreshToken);
    // Each caller gets an access token of its own, and both work.
    expect(first.access_token).not.toBe(second.access_token);
    expect((await me(t, first.access_token)).statusCode).toBe(200);
    expect((await me(t, second.access_token)).statusCode).toBe(200);

    // One successor was issued, not two; and it rotates as usual.
    const { rows } = await sql.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE s.user_id = $1`,
      [user.id],
    );
    expect(rows[0]?.n).toBe(2);
    const next = await refreshed(t, first.refresh_token);
    expect((await me(t, next.access_token)).statusCode).toBe(200);
    expect(await reuseAudits(user.id)).toBe(0);
  });

  it('a sequential second use returns the same successor again, and it stays the only live token', async () => {
    const user = await signUp(t.app);
    const first = await refreshed(t, user.refreshToken);
    const again = await refreshed(t, user.refreshToken);
    expect(again.refresh_token).toBe(first.refresh_token);
    expect((await me(t, again.access_token)).statusCode).toBe(200);
    // The parent is still spent for rotation purposes: the successor is what rotates.
    const next = await refreshed(t, again.refresh_token);
    expect(next.refresh_token).not.toBe(first.refresh_token);
  });

  it('many concurrent uses of one token all get the same successor', async () => {
    const user = await signUp(t.app);
    const answers = await Promise.all(Array.from({ length: 6 }, () => refresh(t, user.refreshToken)));
    expect(answers.map((r) => r.statusCode)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(new Set(answers.map((r) => r.json<Pair>().refresh_token)).size).toBe(1);
  });

  it('a grandparent is a replay: its successor was rotated already, so the session is revoked', async () => {
    const user = await signUp(t.app);
    const first = await refreshed(t, user.refreshToken);
    const second = await refreshed(t, first.refresh_token);
    const replay = await refresh(t, user.refreshToken);
    expect(replay.statusCode).toBe(401);
    expect(errorOf(replay).code).toBe('refresh_token_reused');
    expect((await refresh(t, second.refresh_token)).statusCode).toBe(401);
    expect((await me(t, second.access_token)).statusCode).toBe(401);
    expect(await reuseAudits(user.id)).toBe(1);
  });

  it("a logged-out session's token is refused, and no successor is handed out", async () => {
    const user = await signUp(t.app);
    const first = await refreshed(t, user.refreshToken);
    const out = await t.app.inject({
      method: 'POST',
      url: '/api/v1/auth/logout',
      headers: bearer(first.access_token),
    });
    expect(out.statusCode).toBe(204);
    const again = await refresh(t, user.refreshToken);
    expect(again.statusCode).toBe(401);
    expect(again.body).not.toContain(first.refresh_token);
    expect((await refresh(t, first.refresh_token)).statusCode).toBe(401);
  });

  it('a token of a revoked session (logout-all, password change) gets nothing either', async () => {
    const user = await signUp(t.app);
    const first = await refreshed(t, user.refreshToken);
    const all = await t.app.inject({
      method: 'POST',
      url: '/api/v1/auth/logout-all',
      headers: bearer(first.access_token),
    });
    expect(all.statusCode).toBe(200);
    expect((await refresh(t, user.refreshToken)).statusCode).toBe(401);
  });

  it('a forged token never gets a successor: unknown tokens are a plain 401 that revokes nothing', async () => {
    const user = await signUp(t.app);
    const first = await refreshed(t, user.refreshToken);
    const res = await refresh(t, `${user.refreshToken}A`);
    expect(res.statusCode).toBe(401);
    expect(errorOf(res).code).toBe('invalid_refresh_token');
    expect((await me(t, first.access_token)).statusCode).toBe(200);
  });
});

describe('after the reuse interval', () => {
  it('reuse is a replay: the session family is revoked', async () => {
    const user = await signUp(short.app);
    const first = await refreshed(short, user.refreshToken);
    await new Promise((r) => setTimeout(r, SHORT_MS * 2));
    const replay = await refresh(short, user.refreshToken);
    expect(replay.statusCode).toBe(401);
    expect(errorOf(replay).code).toBe('refresh_token_reused');
    expect((await refresh(short, first.refresh_token)).statusCode).toBe(401);
    expect((await me(short, first.access_token)).statusCode).toBe(401);
    expect(await reuseAudits(user.id)).toBe(1);
  });

  it('0 turns the interval off: any second use revokes at once', async () => {
    const off = await startTestApp({ databaseUrl: db.url, env: { REFRESH_TOKEN_REUSE_INTERVAL_MS: '0' } });
    try {
      const user = await signUp(off.app);
      const [a, b] = await Promise.all([refresh(off, user.refreshToken), refresh(off, user.refreshToken)]);
      expect([a?.statusCode, b?.statusCode].sort()).toEqual([200, 401]);
      const winner = [a, b].find((r) => r?.statusCode === 200)!.json<Pair>();
      expect((await refresh(off, winner.refresh_token)).statusCode).toBe(401);
    } finally {
      await off.close();
    }
  });
});

describe('derived successors', () => {
  it('are fixed by the parent and the server secret, look like any refresh token, and differ otherwise', () => {
    const secret = new TextEncoder().encode('a-server-secret-0123456789abcdef012345');
    const successorOf = refreshSuccessors(secret);
    const parent = 'rt_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG';
    const successor = successorOf(parent);
    expect(successor).toMatch(/^rt_[A-Za-z0-9_-]{43}$/);
    expect(successorOf(parent)).toBe(successor);
    expect(successorOf(`${parent}x`)).not.toBe(successor);
    expect(
      refreshSuccessors(new TextEncoder().encode('another-secret-0123456789abcdef0123'))(parent),
    ).not.toBe(successor);
  });
});
