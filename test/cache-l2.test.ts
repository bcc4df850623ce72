/**
 * L2, the shared Redis layer of the fact cache (SPEC §6): facts one instance loaded answer another
 * instance's checks; stamps keep stale writes from undoing invalidations (tombstones, the shared
 * floor); large values are stored deflated; Redis trouble (refused, hanging) degrades to L1 and the
 * database within a bound, never to errors, and L2 comes back on its own; the admin flush retires
 * shared entries for every instance. Real PostgreSQL and Redis; Redis behind a TCP relay to break it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it, onTestFailed } from 'vitest';
import { FactCache } from '../src/platform/cache/fact-cache.js';
import { cacheKey } from '../src/platform/cache/keys.js';
import { createL2 } from '../src/platform/cache/l2.js';
import { connectRedis, waitForRedis } from '../src/platform/redis.js';
import { bearer, type SignedUp, settle, signUp, startTestApp, type TestApp } from './helpers/app.js';
import { callApi, useTestDatabase } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

// Runs whenever REDIS_URL is set; the global setup refuses to start under CI without it.
const redisUrl = inject('redisUrl');

const L1_OFF = { L1_ENABLED: 'false' };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `probe` returns a value (not undefined); the elapsed ms, or a failure after `withinMs`. */
async function until<T>(probe: () => Promise<T | undefined>, withinMs: number, what: string) {
  const started = performance.now();
  for (;;) {
    const value = await probe();
    if (value !== undefined) return { value, ms: performance.now() - started };
    if (performance.now() - started > withinMs) throw new Error(`${what}: not within ${withinMs} ms`);
    await sleep(25);
  }
}

const sessionIdOf = (accessToken: string): string =>
  JSON.parse(Buffer.from(accessToken.split('.')[1] as string, 'base64url').toString()).sid;

/**
 * Who calls: a signed-up user (access token) or a service key of theirs. Checks on instances with
 * L1 off go through service keys: their credential is itself a cached fact read through L1 → L2,
 * whereas an access token whose session is not in L1 may be checked together with the facts in
 * one database load, which by design skips L2.
 */
type Caller = SignedUp | { id: string; key: string };
const credentialOf = (caller: Caller) => ('key' in caller ? caller.key : caller.accessToken);

interface CheckAnswer {
  status: number;
  allowed: boolean | undefined;
  cache: string | undefined;
  ms: number;
  token: number;
}

describe.runIf(redisUrl)('L2 (Redis) fact cache', () => {
  const fx = useTestDatabase();
  /** A direct connection of the test's own, to look at what the apps stored. */
  let redis: Redis;
  const apps: TestApp[] = [];
  const prefixes: string[] = [];

  beforeAll(async () => {
    redis = connectRedis(redisUrl as string, () => {});
    if (!(await waitForRedis(redis, 5_000))) throw new Error('Redis did not answer');
  });

  afterAll(async () => {
    for (const app of apps) await app.close();
    for (const prefix of prefixes) {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
    }
    await redis?.quit();
  });

  const newPrefix = () => {
    const prefix = `velro-test:l2-${randomBytes(4).toString('hex')}:`;
    prefixes.push(prefix);
    return prefix;
  };

  const start = async (prefix: string, env: Record<string, string> = {}) => {
    // env.REDIS_URL (a relay's address) overrides the run's Redis; the prefix is ours either way.
    const app = await startTestApp({ databaseUrl: fx.db.url, env, redis: { prefix } });
    apps.push(app);
    return app;
  };

  const stop = async (t: TestApp) => {
    apps.splice(apps.indexOf(t), 1);
    await t.close();
  };

  const stamped = async (prefix: string, key: string): Promise<string | undefined> => {
    const raw = await redis.getBuffer(`${prefix}l2:${key}`);
    return raw ? raw.toString('latin1') : undefined;
  };
  /** Waits until the fire-and-forget write of `key` has landed in Redis; its raw value. */
  const landed = (prefix: string, key: string) =>
    until(() => stamped(prefix, key), 2_000, `L2 write of ${key}`).then((r) => r.value);

  const check = async (
    t: TestApp,
    user: Caller,
    resource: { type: 'generation' | 'project'; id: string },
    permission = 'view',
    headers: Record<string, string> = {},
  ): Promise<CheckAnswer> => {
    const started = performance.now();
    const res = await callApi(
      t,
      credentialOf(user),
      'POST',
      '/authz/check',
      { resource, permission },
      headers,
    );
    const ms = performance.now() - started;
    const body = res.statusCode === 200 ? res.json<{ allowed: boolean; consistency_token: string }>() : null;
    return {
      status: res.statusCode,
      allowed: body?.allowed,
      cache: res.headers['x-cache'] as string | undefined,
      ms,
      token: Number(body?.consistency_token ?? -1),
    };
  };

  const authorize = (t: TestApp, user: Caller, generationId: string, headers: Record<string, string> = {}) =>
    callApi(t, credentialOf(user), 'GET', `/generations/${generationId}/authorize`, undefined, headers);

  /** A service key of `user` for checks (and reading generations). */
  const keyOf = async (t: TestApp, user: SignedUp): Promise<Caller> => {
    const res = await callApi(t, user, 'POST', '/service-keys', {
      name: 'checks',
      scopes: ['authz:check', 'generations:read'],
    });
    expect(res.statusCode).toBe(201);
    return { id: user.id, key: res.json<{ key: string }>().key };
  };

  const me = async (t: TestApp, user: SignedUp) => {
    const res = await callApi(t, user, 'GET', '/auth/me');
    expect(res.statusCode).toBe(200);
  };

  const createProject = async (t: TestApp, owner: SignedUp, visibility: 'private' | 'public') => {
    const res = await callApi(t, owner, 'POST', '/projects', {
      name: `p-${randomBytes(3).toString('hex')}`,
      visibility,
    });
    expect(res.statusCode).toBe(201);
    return res.json<{ id: string }>().id;
  };

  const setVisibility = async (t: TestApp, owner: SignedUp, projectId: string, visibility: string) => {
    const res = await callApi(t, owner, 'PATCH', `/projects/${projectId}`, { visibility });
    expect(res.statusCode).toBe(200);
    const token = res.headers['velro-consistency-token'];
    expect(token).toMatch(/^\d+$/);
    return String(token);
  };

  const makeAdmin = async (user: SignedUp, ...instances: TestApp[]) => {
    await fx.sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [user.id]);
    for (const t of instances) await settle(t);
  };

  const stats = async (t: TestApp, admin: SignedUp) => {
    const res = await callApi(t, admin, 'GET', '/admin/cache/stats');
    expect(res.statusCode).toBe(200);
    return res.json<{
      database_loads: number;
      flushes: number;
      l1: { entries: number };
      l2: { available: boolean; hits: number; misses: number; errors: number; breaker: string };
    }>();
  };

  it('shares facts between instances: B answers its first check from what A loaded', async () => {
    const prefix = newPrefix();
    const a = await start(prefix);
    const owner = await signUp(a.app);
    const projectId = await createProject(a, owner, 'private');
    const first = await insertGeneration(fx.sql, { userId: owner.id, projectId });
    const second = await insertGeneration(fx.sql, { userId: owner.id, projectId });

    expect(await check(a, owner, { type: 'generation', id: first })).toMatchObject({
      allowed: true,
      cache: 'miss',
    });
    expect(await check(a, owner, { type: 'generation', id: first })).toMatchObject({
      allowed: true,
      cache: 'l1',
    });
    expect((await authorize(a, owner, second)).headers['x-cache']).toBe('miss');
    // A wrote every fact it loaded to L2 as well, stamped with the revision its read saw.
    const { rows } = await fx.sql.query<{ rev: number }>('SELECT rev FROM authz_revision');
    const rev = rows[0]?.rev as number;
    for (const key of [
      cacheKey('gen', first),
      cacheKey('gen', second),
      cacheKey('proj', projectId),
      cacheKey('sess', sessionIdOf(owner.accessToken)),
      cacheKey('user', owner.id),
    ]) {
      expect((await landed(prefix, key)).startsWith(`${rev}|v|`)).toBe(true);
    }

    const b = await start(prefix);
    // B's L1 is empty. A check whose session is not in L1 is answered with the session in one
    // database load (skipping L2), so first a request that needs only the session: from L2 too.
    await me(b, owner);
    const fromB = await check(b, owner, { type: 'generation', id: first });
    expect(fromB).toMatchObject({ status: 200, allowed: true, cache: 'l2' });
    const viaAuthorize = await authorize(b, owner, second);
    expect(viaAuthorize.statusCode).toBe(200);
    expect(viaAuthorize.json()).toMatchObject({ can_view: true, can_delete: true, access_method: 'owner' });
    expect(viaAuthorize.headers['x-cache']).toBe('l2');
    const snapshot = b.pipeline.cache.snapshot();
    // Not one database load on B: session, user, generations and project all came from L2.
    expect(snapshot.database_loads).toBe(0);
    expect(snapshot.l2.hits).toBeGreaterThanOrEqual(4);
    // …and B keeps them in its own L1 from then on.
    expect(await check(b, owner, { type: 'generation', id: first })).toMatchObject({
      allowed: true,
      cache: 'l1',
    });
  });

  it('keeps a lookup of an id that does not exist one minute in Redis, a real fact its hour', async () => {
    const prefix = newPrefix();
    const a = await start(prefix);
    const owner = await signUp(a.app);
    const real = await insertGeneration(fx.sql, { userId: owner.id });
    const missing = randomUUID();
    expect(await check(a, owner, { type: 'generation', id: real })).toMatchObject({ allowed: true });
    expect(await check(a, owner, { type: 'generation', id: missing })).toMatchObject({
      status: 200,
      allowed: false,
    });
    // The negative fact is cached (rule 6) and answers the next check from memory…
    expect((await landed(prefix, cacheKey('gen', missing))).split('|')[1]).toBe('v');
    expect(await check(a, owner, { type: 'generation', id: missing })).toMatchObject({
      allowed: false,
      cache: 'l1',
    });
    // …but lives NEGATIVE_FACT_TTL_SECONDS (60), not L2_TTL_SECONDS (3600): enumerated or mistyped
    // ids must not pile up in Redis for an hour.
    const negative = await redis.ttl(`${prefix}l2:${cacheKey('gen', missing)}`);
    expect(negative).toBeGreaterThan(0);
    expect(negative).toBeLessThanOrEqual(60);
    expect(await redis.ttl(`${prefix}l2:${cacheKey('gen', real)}`)).toBeGreaterThan(2800);
    await stop(a);
  });

  it('gives facts stored together different lifetimes in Redis (up to 20 % shorter), none longer', async () => {
    const prefix = newPrefix();
    const a = await start(prefix);
    const owner = await signUp(a.app);
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) ids.push(await insertGeneration(fx.sql, { userId: owner.id }));
    for (const id of ids) {
      expect(await check(a, owner, { type: 'generation', id })).toMatchObject({ allowed: true });
    }
    const ttls: number[] = [];
    for (const id of ids) {
      await landed(prefix, cacheKey('gen', id));
      ttls.push(await redis.ttl(`${prefix}l2:${cacheKey('gen', id)}`));
    }
    // L2_TTL_SECONDS is 3600: each lives 2,880–3,600 s. Stored within a second, with one fixed
    // lifetime they would all read the same to the second; here they spread over minutes.
    expect(Math.min(...ttls)).toBeGreaterThanOrEqual(2870);
    expect(Math.max(...ttls)).toBeLessThanOrEqual(3600);
    expect(Math.max(...ttls) - Math.min(...ttls)).toBeGreaterThan(60);
    await stop(a);
  });

  it('with L1 off answers from L2 once warm, and a revocation holds on every instance', async () => {
    // Once, in a full run beside another full run (load 5 on 2 CPUs), this test hit the 30 s
    // timeout where it takes 1.5 s; not reproduced since. If it happens again, say where it stood.
    let step = 'starting two instances';
    const started = performance.now();
    onTestFailed(() => {
      console.log(`[cache-l2] stopped at "${step}" after ${Math.round(performance.now() - started)} ms`);
    });
    const prefix = newPrefix();
    const c = await start(prefix, L1_OFF);
    const d = await start(prefix, L1_OFF);
    step = 'signing up, service keys, project, generation';
    const owner = await signUp(c.app);
    const viewer = await signUp(d.app);
    const ownerKey = await keyOf(c, owner);
    const viewerKey = await keyOf(d, viewer);
    const projectId = await createProject(c, owner, 'public');
    const generationId = await insertGeneration(fx.sql, { userId: owner.id, projectId });
    const gen = { type: 'generation' as const, id: generationId };

    step = 'checks before the revocation';
    expect(await check(d, viewerKey, gen)).toMatchObject({ allowed: true, cache: 'miss' });
    for (let i = 0; i < 3; i++)
      expect(await check(d, viewerKey, gen)).toMatchObject({ allowed: true, cache: 'l2' });
    // C never loaded these facts: D's load serves C too.
    expect(await check(c, viewerKey, gen)).toMatchObject({ allowed: true, cache: 'l2' });
    expect(c.pipeline.cache.snapshot().l1.entries).toBe(0);
    expect(d.pipeline.cache.snapshot().l1.entries).toBe(0);

    step = 'the revocation';
    const token = await setVisibility(c, owner, projectId, 'private');
    // On the other instance, with the write's token: denied (404, as for a missing generation).
    const denied = await authorize(d, viewerKey, generationId, { 'velro-consistency-token': token });
    expect(denied.statusCode).toBe(404);
    // Without a token once the invalidation has arrived; the stale L2 entry is gone or refused.
    step = 'waiting for the invalidation';
    await settle(d);
    step = 'checks after the revocation';
    const after = await check(d, viewerKey, gen);
    expect(after).toMatchObject({ status: 200, allowed: false });
    expect(after.token).toBeGreaterThanOrEqual(Number(token));
    const project = await landed(prefix, cacheKey('proj', projectId));
    expect(Number(project.split('|')[0])).toBeGreaterThanOrEqual(Number(token));
    for (let i = 0; i < 3; i++)
      expect(await check(d, viewerKey, gen)).toMatchObject({ allowed: false, cache: 'l2' });
    expect(await check(c, viewerKey, gen)).toMatchObject({ allowed: false, cache: 'l2' });
    expect(await check(c, ownerKey, gen)).toMatchObject({ allowed: true });
  });

  // A check whose facts are all in L2 costs one Redis round trip for everything known before any
  // fact is read (the signed-in user's session and user, the resource, the subject's memberships)
  // and one more per fact another names (a generation's project); none to the database.
  // Before: each key was one round trip of its own, session and user included (4 here, through a
  // public project).
  it('with L1 off, a signed-in check reads its session and facts from L2 in one round trip (two through a project)', async () => {
    const prefix = newPrefix();
    const t = await start(prefix, L1_OFF);
    const owner = await signUp(t.app);
    const viewer = await signUp(t.app);
    const projectId = await createProject(t, owner, 'public');
    const inProject = await insertGeneration(fx.sql, { userId: owner.id, projectId });
    const alone = await insertGeneration(fx.sql, { userId: owner.id });
    const cost = async (caller: SignedUp, id: string) => {
      const reads = t.pipeline.cache.snapshot().l2.reads as number;
      const trips = t.pools.checkouts.authorization;
      const answer = await check(t, caller, { type: 'generation', id });
      return {
        status: answer.status,
        allowed: answer.allowed,
        cache: answer.cache,
        l2: (t.pipeline.cache.snapshot().l2.reads as number) - reads,
        db: t.pools.checkouts.authorization - trips,
      };
    };
    // The first checks load from the database and fill L2 (its writes land in the background).
    const fromL2 = (caller: SignedUp, id: string) =>
      until(
        async () => {
          const c = await cost(caller, id);
          return c.cache === 'l2' && c.db === 0 ? c : undefined;
        },
        5_000,
        'a check answered from L2',
      );
    await fromL2(viewer, inProject);
    await fromL2(owner, alone);
    expect(await cost(viewer, inProject)).toEqual({ status: 200, allowed: true, cache: 'l2', l2: 2, db: 0 });
    expect(await cost(owner, alone)).toEqual({ status: 200, allowed: true, cache: 'l2', l2: 1, db: 0 });
    expect(await cost(viewer, alone)).toMatchObject({ status: 200, allowed: false, l2: 1, db: 0 });

    // The session read from L2 is the live one: signed out, the very next check is refused.
    const out = await callApi(t, viewer, 'POST', '/auth/logout', {});
    expect(out.statusCode).toBeLessThan(300);
    await settle(t);
    expect(await cost(viewer, inProject)).toMatchObject({ status: 401 });
    expect(await cost(owner, inProject)).toMatchObject({ status: 200, allowed: true });
  });

  // SPEC §4/§6: a read that carries a consistency token is answered from facts at least that fresh.
  // Regression (failed at 005da88: X-Cache l2): POST /authz/check ignored the header — it called
  // engine.check(subject, resource) without minRevision — while GET /generations/:id/authorize
  // honoured it; check-bulk and explain had the same gap.
  it('a check carrying a token this instance has not applied bypasses the caches', async () => {
    const prefix = newPrefix();
    const t = await start(prefix, L1_OFF);
    const owner = await keyOf(t, await signUp(t.app));
    const generationId = await insertGeneration(fx.sql, { userId: owner.id });
    const gen = { type: 'generation' as const, id: generationId };
    await check(t, owner, gen);
    expect(await check(t, owner, gen)).toMatchObject({ allowed: true, cache: 'l2' });
    const ahead = { 'velro-consistency-token': String(t.pipeline.cache.appliedUpTo + 1) };
    expect((await authorize(t, owner, generationId, ahead)).headers['x-cache']).toBe('miss');
    expect(await check(t, owner, gen, 'view', ahead)).toMatchObject({ allowed: true, cache: 'miss' });
  });

  it('Redis refused, then back: checks stay right and 200 throughout, and L2 serves again', async () => {
    const proxy = TcpProxy.forUrl(redisUrl as string);
    await proxy.start();
    try {
      const prefix = newPrefix();
      const t = await start(prefix, { ...L1_OFF, REDIS_URL: proxy.wrap(redisUrl as string) });
      const ownerSession = await signUp(t.app);
      const owner = await keyOf(t, ownerSession);
      const viewer = await keyOf(t, await signUp(t.app));
      const admin = await signUp(t.app);
      await makeAdmin(admin, t);
      const projectId = await createProject(t, ownerSession, 'public');
      const gen = {
        type: 'generation' as const,
        id: await insertGeneration(fx.sql, { userId: owner.id, projectId }),
      };
      await check(t, viewer, gen);
      expect(await check(t, viewer, gen)).toMatchObject({ allowed: true, cache: 'l2' });
      expect((await stats(t, admin)).l2).toMatchObject({ available: true, breaker: 'closed' });

      await proxy.cut();
      const cutAt = performance.now();
      const unavailable = await until(
        async () => ((await stats(t, admin)).l2.available ? undefined : true),
        2_000,
        'L2 reported unavailable',
      );
      const during: CheckAnswer[] = [];
      for (let i = 0; i < 10; i++) {
        during.push(await check(t, viewer, gen), await check(t, owner, gen, 'delete'));
      }
      for (const answer of during)
        expect(answer).toMatchObject({ status: 200, allowed: true, cache: 'miss' });
      // A revocation while Redis is away: no instance can tombstone the shared entry…
      const token = await setVisibility(t, ownerSession, projectId, 'private');
      const stale = (await stamped(prefix, cacheKey('proj', projectId))) as string;
      expect(stale).toContain('"visibility":"public"');
      expect(Number(stale.split('|')[0])).toBeLessThan(Number(token));
      expect(await check(t, viewer, gen)).toMatchObject({ status: 200, allowed: false, cache: 'miss' });
      expect(await check(t, owner, gen)).toMatchObject({ status: 200, allowed: true });
      const outage = await stats(t, admin);
      // Long enough for the client's reconnect backoff to reach its 2 s ceiling.
      await sleep(Math.max(0, cutAt + 2_500 - performance.now()));
      expect(outage.l2.available).toBe(false);
      expect(outage.l2.errors).toBeGreaterThan(0);

      await proxy.start();
      const backAt = performance.now();
      // …so when it is back, the stale entry is still there, and is refused (this instance holds
      // the tombstone locally); the fresh load replaces it and L2 answers again, still "denied".
      const recovered = await until(
        async () => {
          const answer = await check(t, viewer, gen);
          expect(answer).toMatchObject({ status: 200, allowed: false });
          return answer.cache === 'l2' ? answer : undefined;
        },
        10_000,
        'L2 serving again',
      );
      const after = await stats(t, admin);
      expect(after.l2).toMatchObject({ available: true, breaker: 'closed' });
      expect(after.l2.hits).toBeGreaterThan(outage.l2.hits);
      console.info(
        `[cache-l2] Redis refused: L2 unavailable after ${unavailable.ms.toFixed(0)} ms; max check during outage ` +
          `${Math.max(...during.map((a) => a.ms)).toFixed(1)} ms; L2 serving ${recovered.ms.toFixed(0)} ms ` +
          `after Redis came back (outage ${(backAt - cutAt).toFixed(0)} ms)`,
      );
    } finally {
      await proxy.cut();
    }
  });

  it('Redis hanging: every check answers within a bound, the breaker opens, L2 returns', async () => {
    const proxy = TcpProxy.forUrl(redisUrl as string);
    await proxy.start();
    try {
      const prefix = newPrefix();
      const t = await start(prefix, { ...L1_OFF, REDIS_URL: proxy.wrap(redisUrl as string) });
      const owner = await keyOf(t, await signUp(t.app));
      const viewer = await keyOf(t, await signUp(t.app));
      const admin = await signUp(t.app);
      await makeAdmin(admin, t);
      const gen = { type: 'generation' as const, id: await insertGeneration(fx.sql, { userId: owner.id }) };
      await check(t, owner, gen);
      expect(await check(t, owner, gen)).toMatchObject({ allowed: true, cache: 'l2' });

      proxy.freeze();
      const frozenAt = performance.now();
      let openedAfter: number | undefined;
      const before: CheckAnswer[] = [];
      const after: CheckAnswer[] = [];
      // Until the breaker has been open for a while (at most 6 s: it needs more failures than the
      // successes still in its 5 s rolling window).
      while (performance.now() - frozenAt < 6_000) {
        const pair = [await check(t, owner, gen), await check(t, viewer, gen)];
        (openedAfter === undefined ? before : after).push(...pair);
        if (openedAfter === undefined && t.pipeline.cache.snapshot().l2.breaker === 'open')
          openedAfter = performance.now() - frozenAt;
        if (openedAfter !== undefined && performance.now() - frozenAt > openedAfter + 500) break;
      }
      for (const answers of [before, after])
        for (const [i, answer] of answers.entries())
          expect(answer).toMatchObject({ status: 200, allowed: i % 2 === 0 });
      expect(openedAfter).toBeDefined();
      // Each L2 read waits at most the breaker's 250 ms timeout, and a check makes at most a few
      // (service key, user, generation) before the breaker opens: measured 760–800 ms at worst.
      const slowest = Math.max(...before.map((a) => a.ms), ...after.map((a) => a.ms));
      expect(slowest).toBeLessThan(1_500);
      // Once open, L2 is skipped: checks cost a database load (a half-open probe may still wait once).
      const open = after.map((a) => a.ms).sort((x, y) => x - y);
      expect(open[Math.floor(open.length / 2)]).toBeLessThan(50);
      const frozen = await stats(t, admin);
      expect(frozen.l2).toMatchObject({ available: false, breaker: 'open' });

      await proxy.cut();
      await proxy.start();
      const recovered = await until(
        async () => {
          const answer = await check(t, owner, gen);
          expect(answer).toMatchObject({ status: 200, allowed: true });
          return answer.cache === 'l2' ? answer : undefined;
        },
        10_000,
        'L2 serving again',
      );
      expect((await stats(t, admin)).l2).toMatchObject({ available: true, breaker: 'closed' });
      console.info(
        `[cache-l2] Redis frozen: breaker open after ${openedAfter?.toFixed(0)} ms; ${before.length} checks ` +
          `before it opened (slowest ${Math.max(...before.map((a) => a.ms)).toFixed(0)} ms), ${after.length} ` +
          `after (median ${open[Math.floor(open.length / 2)]?.toFixed(1)} ms, slowest ${open.at(-1)?.toFixed(0)} ms); ` +
          `L2 serving ${recovered.ms.toFixed(0)} ms after the relay was reset and restored`,
      );
    } finally {
      await proxy.cut();
    }
  });

  // Regression (failed at 005da88: no answer within 3 s, until the connection was reset): the
  // rate-limit store fell back to in-process counters only when Redis was not 'ready' or a command
  // failed; a Redis that keeps the connection but stops answering left the command pending for as
  // long as the socket lived (connectRedis sets no commandTimeout, and the L2 breaker does not cover
  // the store), so /auth/login, /auth/register and generation creation hung.
  it('Redis hanging: a rate-limited route (login) still answers within 2 s', async () => {
    const proxy = TcpProxy.forUrl(redisUrl as string);
    await proxy.start();
    const t = await start(newPrefix(), { REDIS_URL: proxy.wrap(redisUrl as string) });
    const user = await signUp(t.app);
    proxy.freeze();
    const login = t.app.inject({
      method: 'POST',
      url: '/api/v1/auth/login',
      payload: { email: user.email, password: user.password },
    });
    try {
      const answered = await Promise.race([login, sleep(2_000).then(() => null)]);
      expect(answered?.statusCode).toBe(200);
    } finally {
      await proxy.cut();
      // The reset fails the pending command; the store falls back and the login completes.
      expect((await login).statusCode).toBe(200);
    }
  });

  it('an instance starting after a write no instance saw does not serve the stale L2 entry', async () => {
    const prefix = newPrefix();
    const a = await start(prefix);
    const ownerSession = await signUp(a.app);
    const owner = await keyOf(a, ownerSession);
    const viewer = await keyOf(a, await signUp(a.app));
    const projectId = await createProject(a, ownerSession, 'public');
    const gen = {
      type: 'generation' as const,
      id: await insertGeneration(fx.sql, { userId: owner.id, projectId }),
    };
    expect(await check(a, viewer, gen)).toMatchObject({ allowed: true });
    await landed(prefix, cacheKey('proj', projectId));
    await stop(a);
    // Nobody is listening for this prefix: the revocation leaves no tombstone in its L2.
    await fx.sql.query(`UPDATE projects SET visibility = 'private' WHERE id = $1`, [projectId]);
    expect(await stamped(prefix, cacheKey('proj', projectId))).toContain('"visibility":"public"');

    const { rows } = await fx.sql.query<{ rev: number }>('SELECT rev FROM authz_revision');
    const b = await start(prefix, L1_OFF);
    // A (re)starting instance cannot know what it missed: it raises the shared floor to the current
    // revision (its bus resyncs on the listener's first 'connected').
    await until(
      async () =>
        Number(await redis.get(`${prefix}l2:floor`)) >= (rows[0]?.rev as number) ? true : undefined,
      2_000,
      'the floor raised at start-up',
    );
    expect(await check(b, viewer, gen)).toMatchObject({ status: 200, allowed: false, cache: 'miss' });
    expect(await check(b, owner, gen)).toMatchObject({ status: 200, allowed: true });
  });

  it('POST /admin/cache/flush raises the shared floor: another instance stops reading older entries', async () => {
    const prefix = newPrefix();
    const f = await start(prefix);
    const g = await start(prefix, L1_OFF);
    const owner = await keyOf(f, await signUp(f.app));
    const admin = await signUp(f.app);
    const bystander = await signUp(f.app);
    await makeAdmin(admin, f, g);
    const gen = { type: 'generation' as const, id: await insertGeneration(fx.sql, { userId: owner.id }) };
    expect(await check(f, owner, gen)).toMatchObject({ allowed: true, cache: 'miss' });
    const before = await landed(prefix, cacheKey('gen', gen.id));
    expect(await check(g, owner, gen)).toMatchObject({ allowed: true, cache: 'l2' });
    // An unrelated fact changes: the entries above are now older than the current revision, and
    // still served (nothing they depend on changed).
    await fx.sql.query(`UPDATE users SET is_active = false WHERE id = $1`, [bystander.id]);
    await settle(f);
    await settle(g);
    expect(await check(g, owner, gen)).toMatchObject({ allowed: true, cache: 'l2' });

    const res = await f.app.inject({
      method: 'POST',
      url: '/api/v1/admin/cache/flush',
      headers: bearer(admin.accessToken),
    });
    expect(res.statusCode).toBe(200);
    const floor = res.json<{ flushed_at_revision: number }>().flushed_at_revision;
    expect(floor).toBeGreaterThan(Number(before.split('|')[0]));
    await until(
      async () => ((await redis.get(`${prefix}l2:floor`)) === String(floor) ? true : undefined),
      2_000,
      'the shared floor',
    );
    // The older entry is still in Redis, and no instance reads it any more.
    expect(await stamped(prefix, cacheKey('gen', gen.id))).toBe(before);
    expect(await check(g, owner, gen)).toMatchObject({ allowed: true, cache: 'miss' });
    expect(await check(g, owner, gen)).toMatchObject({ allowed: true, cache: 'l2' });
    expect(Number((await stamped(prefix, cacheKey('gen', gen.id)))?.split('|')[0])).toBeGreaterThanOrEqual(
      floor,
    );
    expect((await stats(f, admin)).flushes).toBeGreaterThanOrEqual(1);
  });

  // Regression (failed at 005da88: allowed, X-Cache l2, after the flush): the flush raised the floor
  // to the *current* revision, and L2 (`entry.r < floor`) and FactCache.storable (`rev >= floor`)
  // retire only what is stamped *below* it, so every entry read at the current revision survived,
  // on every instance, the flushing one included (its L1 refilled from L2). After a change the
  // triggers did not see (session_replication_role = replica, a restore, TRUNCATE, a disabled
  // trigger) — when an operator flushes — the stale facts stayed.
  it('after a change the triggers did not see, the admin flush makes checks read the database', async () => {
    const prefix = newPrefix();
    const f = await start(prefix);
    const ownerSession = await signUp(f.app);
    const owner = await keyOf(f, ownerSession);
    const viewer = await keyOf(f, await signUp(f.app));
    const admin = await signUp(f.app);
    await makeAdmin(admin, f);
    const projectId = await createProject(f, ownerSession, 'public');
    const gen = {
      type: 'generation' as const,
      id: await insertGeneration(fx.sql, { userId: owner.id, projectId }),
    };
    expect(await check(f, viewer, gen)).toMatchObject({ allowed: true });
    await landed(prefix, cacheKey('proj', projectId));
    await fx.sql.query('BEGIN');
    await fx.sql.query('SET LOCAL session_replication_role = replica');
    await fx.sql.query(`UPDATE projects SET visibility = 'private' WHERE id = $1`, [projectId]);
    await fx.sql.query('COMMIT');
    const res = await f.app.inject({
      method: 'POST',
      url: '/api/v1/admin/cache/flush',
      headers: bearer(admin.accessToken),
    });
    expect(res.statusCode).toBe(200);
    await until(
      async () => ((await redis.get(`${prefix}l2:floor`)) !== null ? true : undefined),
      2_000,
      'the shared floor',
    );
    expect(await check(f, viewer, gen)).toMatchObject({ status: 200, allowed: false, cache: 'miss' });
  });

  // Regression (failed at 005da88: the shared floor stayed below flushed_at_revision): the shared part
  // of the flush was fire-and-forget (FactCache.flush → l2.raiseFloor → `background`, which does
  // nothing when Redis is not 'ready' or the breaker is open) while the route answered 200, so a
  // flush during a Redis blip was silently lost for every other instance.
  it('a flush that answers 200 while Redis is away still retires older shared entries', async () => {
    const proxy = TcpProxy.forUrl(redisUrl as string);
    await proxy.start();
    try {
      const prefix = newPrefix();
      const f = await start(prefix, { REDIS_URL: proxy.wrap(redisUrl as string) });
      const g = await start(prefix, L1_OFF);
      const owner = await keyOf(g, await signUp(g.app));
      const admin = await signUp(f.app);
      const bystander = await signUp(f.app);
      await makeAdmin(admin, f, g);
      await me(f, admin);
      const gen = { type: 'generation' as const, id: await insertGeneration(fx.sql, { userId: owner.id }) };
      await check(g, owner, gen);
      expect(await check(g, owner, gen)).toMatchObject({ allowed: true, cache: 'l2' });
      await fx.sql.query(`UPDATE users SET is_active = false WHERE id = $1`, [bystander.id]);
      await settle(f);
      await settle(g);

      await proxy.cut();
      await until(async () => (f.pipeline.cache.l2Available ? undefined : true), 2_000, 'L2 away');
      const res = await f.app.inject({
        method: 'POST',
        url: '/api/v1/admin/cache/flush',
        headers: bearer(admin.accessToken),
      });
      await proxy.start();
      await until(async () => (f.pipeline.cache.l2Available ? true : undefined), 10_000, 'L2 back');
      // Refusing (5xx) would be honest too; answering 200 must mean the shared floor was raised.
      if (res.statusCode !== 200) return;
      expect(await redis.get(`${prefix}l2:floor`)).toBe(String(res.json().flushed_at_revision));
      expect(await check(g, owner, gen)).toMatchObject({ allowed: true, cache: 'miss' });
    } finally {
      await proxy.cut();
    }
  });

  describe('stamps (createL2 on a connection of the test)', () => {
    let own: Redis;

    beforeAll(async () => {
      own = connectRedis(redisUrl as string, () => {});
      if (!(await waitForRedis(own, 5_000))) throw new Error('Redis did not answer');
    });

    afterAll(async () => {
      await own?.quit();
    });

    /**
     * Writes are fire-and-forget, but they are sent at once (the breaker calls the action
     * synchronously) on this one connection, so a PING sent after them is answered after them.
     */
    const drained = () => own.ping();

    it('a stale write cannot overwrite a tombstone; an equal stamp can; the floor retires older ones', async () => {
      const prefix = newPrefix();
      const l2 = createL2(own, { prefix, compressAboveBytes: 1024 });
      const key = cacheKey('proj', 'p-1');
      const raw = () => own.get(`${prefix}l2:${key}`);

      l2.tombstone(key, 10);
      await drained();
      expect(await raw()).toBe('10|t|');
      expect(await l2.read(key)).toBeUndefined();

      l2.write(key, { v: { visibility: 'public' }, r: 9 }, 60);
      await drained();
      expect(await raw()).toBe('10|t|');
      expect(await l2.read(key)).toBeUndefined();

      l2.write(key, { v: { visibility: 'private' }, r: 10 }, 60);
      await drained();
      expect(await l2.read(key)).toEqual({ v: { visibility: 'private' }, r: 10 });
      // A tombstone of the revision a value was read at does not retire it (that value saw the write).
      l2.tombstone(key, 10);
      await drained();
      expect(await l2.read(key)).toEqual({ v: { visibility: 'private' }, r: 10 });
      // An older value cannot replace a newer one; nor can an older tombstone.
      l2.write(key, { v: { visibility: 'public' }, r: 3 }, 60);
      l2.tombstone(key, 4);
      await drained();
      expect(await l2.read(key)).toEqual({ v: { visibility: 'private' }, r: 10 });

      const other = cacheKey('gen', 'g-1');
      l2.write(other, { v: null, r: 15 }, 60);
      l2.write(cacheKey('gen', 'g-2'), { v: { deleted: false }, r: 20 }, 60);
      l2.raiseFloor(20);
      await drained();
      expect(await own.get(`${prefix}l2:floor`)).toBe('20');
      expect(await l2.read(key)).toBeUndefined();
      expect(await l2.read(other)).toBeUndefined();
      expect(await l2.read(cacheKey('gen', 'g-2'))).toEqual({ v: { deleted: false }, r: 20 });
      // Nothing below the floor can be written any more; the floor never goes down.
      l2.write(key, { v: { visibility: 'public' }, r: 19 }, 60);
      l2.raiseFloor(5);
      await drained();
      expect(await l2.read(key)).toBeUndefined();
      expect(await own.get(`${prefix}l2:floor`)).toBe('20');
      l2.write(key, { v: { visibility: 'team' }, r: 21 }, 60);
      await drained();
      expect(await l2.read(key)).toEqual({ v: { visibility: 'team' }, r: 21 });
      // TTLs are set: nothing lives forever in Redis.
      expect(await own.ttl(`${prefix}l2:${key}`)).toBeGreaterThan(0);
      expect(await own.ttl(`${prefix}l2:${key}`)).toBeLessThanOrEqual(60);
      expect(l2.stats()).toMatchObject({ breaker: 'closed', write_errors: 0 });
      l2.close();
    });

    it('stores values above the threshold deflated, and reads them back equal', async () => {
      const prefix = newPrefix();
      const l2 = createL2(own, { prefix, compressAboveBytes: 256 });
      const big = Array.from({ length: 100 }, (_, i) => [
        `team-${i}-${'x'.repeat(20)}`,
        'viewer',
        i % 2 === 0,
      ]);
      const small = { ownerId: 'u-1', teamId: null, visibility: 'private', deleted: false };
      l2.write(cacheKey('mems', 'u-big'), { v: big, r: 7 }, 60);
      l2.write(cacheKey('proj', 'p-small'), { v: small, r: 7 }, 60);
      l2.write(cacheKey('gen', 'nothing'), { v: null, r: 7 }, 60);
      await drained();
      const stored = (await own.getBuffer(`${prefix}l2:${cacheKey('mems', 'u-big')}`)) as Buffer;
      expect(stored.subarray(0, 4).toString()).toBe('7|z|');
      expect(stored.length).toBeLessThan(JSON.stringify(big).length / 4);
      expect(await l2.read(cacheKey('mems', 'u-big'))).toEqual({ v: big, r: 7 });
      expect(await own.get(`${prefix}l2:${cacheKey('proj', 'p-small')}`)).toBe(
        `7|v|${JSON.stringify(small)}`,
      );
      expect(await l2.read(cacheKey('proj', 'p-small'))).toEqual({ v: small, r: 7 });
      expect(await l2.read(cacheKey('gen', 'nothing'))).toEqual({ v: null, r: 7 });
      expect(await l2.read(cacheKey('gen', 'never-written'))).toBeUndefined();
      expect(l2.stats()).toMatchObject({ compressed_writes: 1, write_errors: 0 });
      l2.close();
    });

    it('reads several keys in one round trip, each against the floor; getMany keeps hits in L1 and an invalidation landing meanwhile wins', async () => {
      const prefix = newPrefix();
      const l2 = createL2(own, { prefix, compressAboveBytes: 1024 });
      const [a, b, c, gone] = ['g-a', 'g-b', 'g-c', 'g-gone'].map((id) => cacheKey('gen', id)) as [
        string,
        string,
        string,
        string,
      ];
      l2.write(a, { v: { deleted: false }, r: 30 }, 60);
      l2.write(b, { v: null, r: 31 }, 60);
      l2.write(c, { v: { deleted: true }, r: 10 }, 60);
      l2.tombstone(gone, 32);
      l2.raiseFloor(20);
      await drained();
      const before = l2.stats().reads;
      expect(await l2.readMany([a, 'never', b, c, gone])).toEqual([
        { v: { deleted: false }, r: 30 },
        undefined,
        { v: null, r: 31 },
        undefined, // below the floor
        undefined, // a tombstone
      ]);
      expect(l2.stats().reads - before).toBe(1);

      const cache = new FactCache({
        l1MaxBytes: 1 << 20,
        ttlMs: () => 60_000,
        l2TtlSeconds: () => 60,
        l2,
      });
      try {
        cache.put(cacheKey('gen', 'in-l1'), { deleted: false }, 40);
        const found = await cache.getMany([cacheKey('gen', 'in-l1'), a, b, 'never']);
        expect([...found].map(([key, got]) => [key, got.layer, got.entry.r])).toEqual([
          [cacheKey('gen', 'in-l1'), 'l1', 40],
          [a, 'l2', 30],
          [b, 'l2', 31],
        ]);
        expect(l2.stats().reads - before).toBe(2);
        // The L2 hits are in L1 now: asking again costs no round trip.
        expect((await cache.getMany([a, b])).get(a)?.layer).toBe('l1');
        expect(l2.stats().reads - before).toBe(2);

        // Read from L2 while an invalidation of the key arrives: the older entry is neither
        // answered nor kept.
        const fresh = cacheKey('gen', 'g-fresh');
        l2.write(fresh, { v: { deleted: false }, r: 50 }, 60);
        await drained();
        const reading = cache.getMany([fresh]);
        cache.invalidate(fresh, 51);
        expect((await reading).has(fresh)).toBe(false);
        expect(cache.peek(fresh)).toBeUndefined();
      } finally {
        cache.close();
        l2.close();
      }
    });
  });
});
