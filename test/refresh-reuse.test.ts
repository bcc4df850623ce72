/**
 * Reuse of a rotated refresh token. By default (strict, as the specification says) any reuse of a
 * rotated token revokes its whole family; refreshes that overlap in one process (two tabs
 * refreshing together) are one logical refresh and share its answer. The opt-in reuse interval
 * (REFRESH_TOKEN_REUSE_INTERVAL_MS > 0) hands a token rotated shortly before the same successor
 * again; later, or once that successor was rotated in turn, reuse still revokes the session.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { refreshSuccessors } from '../src/modules/auth/tokens.js';
import { errorOf, signUp, startTestApp, TEST_ENV, type TestApp } from './helpers/app.js';
import { callApi, useTestApp } from './helpers/fixture.js';

const WINDOW_MS = 10_000;
const SHORT_MS = 300;
/** The default settings: strict, no reuse interval. */
const fx = useTestApp();
let strict: TestApp;
/** A reuse interval of 10 s, set explicitly: long enough for anything a test does. */
let t: TestApp;
/** A short interval, so that a test can outwait it. */
let short: TestApp;

beforeAll(async () => {
  strict = fx.t;
  t = await startTestApp({
    databaseUrl: fx.db.url,
    env: { REFRESH_TOKEN_REUSE_INTERVAL_MS: String(WINDOW_MS) },
  });
  short = await startTestApp({
    databaseUrl: fx.db.url,
    env: { REFRESH_TOKEN_REUSE_INTERVAL_MS: String(SHORT_MS) },
  });
});

afterAll(async () => {
  await short?.close();
  await t?.close();
});

const refresh = (app: TestApp, token: string) =>
  callApi(app, null, 'POST', '/auth/refresh', { refresh_token: token });
const me = (app: TestApp, accessToken: string) => callApi(app, accessToken, 'GET', '/auth/me');

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
  const { rows } = await fx.sql.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM audit_events WHERE actor_id = $1 AND action = 'auth.refresh_token_reuse'`,
    [userId],
  );
  return rows[0]?.n ?? 0;
}

async function tokensOfUser(userId: string): Promise<number> {
  const { rows } = await fx.sql.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE s.user_id = $1`,
    [userId],
  );
  return rows[0]?.n ?? 0;
}

/** Another instance of the service on the same database, for as long as `use` runs. */
async function withSecondInstance(env: Record<string, string>, use: (other: TestApp) => Promise<void>) {
  const other = await startTestApp({ databaseUrl: fx.db.url, env });
  try {
    await use(other);
  } finally {
    await other.close();
  }
}

describe('strict by default', () => {
  it('has no reuse interval unless one is configured', () => {
    expect(loadConfig({ ...TEST_ENV }).REFRESH_TOKEN_REUSE_INTERVAL_MS).toBe(0);
    expect(strict.config.REFRESH_TOKEN_REUSE_INTERVAL_MS).toBe(0);
  });

  it('refresh A to B, then A again at once: 401 and the family is revoked, B included', async () => {
    const user = await signUp(strict.app);
    const b = await refreshed(strict, user.refreshToken);
    const replay = await refresh(strict, user.refreshToken);
    expect(replay.statusCode).toBe(401);
    expect(errorOf(replay).code).toBe('refresh_token_reused');
    expect(replay.body).not.toContain(b.refresh_token);
    const later = await refresh(strict, b.refresh_token);
    expect(later.statusCode).toBe(401);
    expect(errorOf(later).code).toBe('invalid_refresh_token');
    expect((await me(strict, b.access_token)).statusCode).toBe(401);
    expect((await me(strict, user.accessToken)).statusCode).toBe(401);
    expect(await reuseAudits(user.id)).toBe(1);
  });

  it('two overlapping refreshes with one token (two tabs) share one rotation: the same pair, session live', async () => {
    const user = await signUp(strict.app);
    const [a, b] = await Promise.all([
      refresh(strict, user.refreshToken),
      refresh(strict, user.refreshToken),
    ]);
    expect(a?.statusCode, a?.body).toBe(200);
    expect(b?.statusCode, b?.body).toBe(200);
    const first = a!.json<Pair>();
    const second = b!.json<Pair>();
    expect(second.refresh_token).toBe(first.refresh_token);
    expect(second.access_token).toBe(first.access_token);
    expect(first.refresh_token).not.toBe(user.refreshToken);
    // One rotation happened, not two, and nothing was taken for a replay.
    expect(await tokensOfUser(user.id)).toBe(2);
    expect(await reuseAudits(user.id)).toBe(0);
    expect((await me(strict, first.access_token)).statusCode).toBe(200);
    const next = await refreshed(strict, first.refresh_token);
    expect((await me(strict, next.access_token)).statusCode).toBe(200);
  });

  it('many overlapping refreshes with one token all get the same pair', async () => {
    const user = await signUp(strict.app);
    const answers = await Promise.all(Array.from({ length: 6 }, () => refresh(strict, user.refreshToken)));
    expect(answers.map((r) => r.statusCode)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(new Set(answers.map((r) => r.json<Pair>().refresh_token)).size).toBe(1);
    expect(await tokensOfUser(user.id)).toBe(2);
  });

  it('a duplicate sent after the shared refresh completed is a reuse: 401 and the family is revoked', async () => {
    const user = await signUp(strict.app);
    const [a, b] = await Promise.all([
      refresh(strict, user.refreshToken),
      refresh(strict, user.refreshToken),
    ]);
    expect([a?.statusCode, b?.statusCode]).toEqual([200, 200]);
    const pair = a!.json<Pair>();
    const late = await refresh(strict, user.refreshToken);
    expect(late.statusCode).toBe(401);
    expect(errorOf(late).code).toBe('refresh_token_reused');
    expect((await refresh(strict, pair.refresh_token)).statusCode).toBe(401);
    expect((await me(strict, pair.access_token)).statusCode).toBe(401);
    expect(await reuseAudits(user.id)).toBe(1);
  });

  it('overlapping replays share one refusal, and the refusal is not kept for later callers', async () => {
    const user = await signUp(strict.app);
    const b = await refreshed(strict, user.refreshToken);
    const replays = await Promise.all([
      refresh(strict, user.refreshToken),
      refresh(strict, user.refreshToken),
    ]);
    expect(replays.map((r) => r.statusCode)).toEqual([401, 401]);
    expect(replays.map((r) => errorOf(r).code)).toEqual(['refresh_token_reused', 'refresh_token_reused']);
    // One logical replay: revoked and audited once.
    expect(await reuseAudits(user.id)).toBe(1);
    // A later attempt runs afresh and finds the session revoked.
    const after = await refresh(strict, user.refreshToken);
    expect(after.statusCode).toBe(401);
    expect(errorOf(after).code).toBe('invalid_refresh_token');
    expect((await refresh(strict, b.refresh_token)).statusCode).toBe(401);
  });

  it('across instances nothing is shared: the row lock makes the second refresh a reuse', async () => {
    await withSecondInstance({}, async (other) => {
      const user = await signUp(strict.app);
      const answers = await Promise.all([
        refresh(strict, user.refreshToken),
        refresh(other, user.refreshToken),
      ]);
      expect(answers.map((r) => r.statusCode).sort()).toEqual([200, 401]);
      const loser = answers.find((r) => r.statusCode === 401)!;
      expect(errorOf(loser).code).toBe('refresh_token_reused');
      const winner = answers.find((r) => r.statusCode === 200)!.json<Pair>();
      expect((await refresh(strict, winner.refresh_token)).statusCode).toBe(401);
      expect(await reuseAudits(user.id)).toBe(1);
    });
  });

  it('unknown and forged tokens are a plain 401 that revokes nothing', async () => {
    const user = await signUp(strict.app);
    const first = await refreshed(strict, user.refreshToken);
    const forged = await Promise.all([
      refresh(strict, `${first.refresh_token}A`),
      refresh(strict, `${first.refresh_token}A`),
    ]);
    expect(forged.map((r) => errorOf(r).code)).toEqual(['invalid_refresh_token', 'invalid_refresh_token']);
    expect((await me(strict, first.access_token)).statusCode).toBe(200);
    await refreshed(strict, first.refresh_token);
  });
});

describe('within the reuse interval', () => {
  it('two concurrent refreshes on two instances both succeed with the same refresh token', async () => {
    // Two instances, so that the second refresh really reaches the database after the first
    // (within one process, overlapping refreshes share one answer before the interval matters).
    await withSecondInstance({ REFRESH_TOKEN_REUSE_INTERVAL_MS: String(WINDOW_MS) }, async (other) => {
      const user = await signUp(t.app);
      const [a, b] = await Promise.all([refresh(t, user.refreshToken), refresh(other, user.refreshToken)]);
      expect(a?.statusCode, a?.body).toBe(200);
      expect(b?.statusCode, b?.body).toBe(200);
      const first = a!.json<Pair>();
      const second = b!.json<Pair>();
      expect(first.refresh_token).toBe(second.refresh_token);
      expect(first.refresh_token).not.toBe(user.refreshToken);
      // Each caller gets an access token of its own, and both work.
      expect(first.access_token).not.toBe(second.access_token);
      expect((await me(t, first.access_token)).statusCode).toBe(200);
      expect((await me(other, second.access_token)).statusCode).toBe(200);

      // One successor was issued, not two; and it rotates as usual.
      expect(await tokensOfUser(user.id)).toBe(2);
      const next = await refreshed(t, first.refresh_token);
      expect((await me(t, next.access_token)).statusCode).toBe(200);
      expect(await reuseAudits(user.id)).toBe(0);
    });
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
    const out = await callApi(t, first.access_token, 'POST', '/auth/logout');
    expect(out.statusCode).toBe(204);
    const again = await refresh(t, user.refreshToken);
    expect(again.statusCode).toBe(401);
    expect(again.body).not.toContain(first.refresh_token);
    expect((await refresh(t, first.refresh_token)).statusCode).toBe(401);
  });

  it('a token of a revoked session (logout-all, password change) gets nothing either', async () => {
    const user = await signUp(t.app);
    const first = await refreshed(t, user.refreshToken);
    const all = await callApi(t, first.access_token, 'POST', '/auth/logout-all');
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

  it('0 turns the interval off: a second use after the rotation revokes at once', async () => {
    await withSecondInstance({ REFRESH_TOKEN_REUSE_INTERVAL_MS: '0' }, async (off) => {
      const user = await signUp(off.app);
      const first = await refreshed(off, user.refreshToken);
      const replay = await refresh(off, user.refreshToken);
      expect(replay.statusCode).toBe(401);
      expect(errorOf(replay).code).toBe('refresh_token_reused');
      expect((await refresh(off, first.refresh_token)).statusCode).toBe(401);
    });
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
