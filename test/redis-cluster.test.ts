/**
 * Redis Cluster (issue 15, part 5): three real masters (`redis-server --cluster-enabled yes`)
 * joined by `redis-cli --cluster create`, started by this file on free ports in a temporary
 * directory. Two app instances configured with REDIS_CLUSTER_NODES share the L2 fact cache (one
 * instance's loads answer the other's first checks), a revoked membership is denied on both, the
 * L2 keys that must live together (an entry and its floor) share a slot while the entries spread
 * over every master, the floor raise and the flush reach every master, and login limits count
 * across instances.
 */
import { randomBytes } from 'node:crypto';
import type { Cluster } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cacheKey } from '../src/platform/cache/keys.js';
import { createL2 } from '../src/platform/cache/l2.js';
import { connectRedis, connectTopology, waitForRedis } from '../src/platform/redis.js';
import {
  bearer,
  createTestDatabase,
  type SignedUp,
  settle,
  signUp,
  startTestApp,
  type TestApp,
  type TestDatabase,
} from './helpers/app.js';
import { insertGeneration } from './helpers/fixtures.js';
import { runCommand } from './helpers/live.js';
import {
  command,
  RedisFarm,
  type RedisProcess,
  redisCli,
  runRedisHaTests,
  until,
} from './helpers/redis-servers.js';

const L1_OFF = { L1_ENABLED: 'false' };

describe.runIf(runRedisHaTests)('Redis Cluster: three masters', () => {
  const farm = new RedisFarm();
  const masters: RedisProcess[] = [];
  let nodes = '';
  let db: TestDatabase;
  let sql: pg.Client;
  /** The test's own connection to the cluster, to look at what the apps stored. */
  let cluster: Cluster;
  const apps: TestApp[] = [];

  beforeAll(async () => {
    for (let i = 0; i < 3; i++) {
      masters.push(
        await farm.server(`node-${i}`, [
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          'nodes.conf',
          // No failover is tested here: a generous timeout keeps a loaded machine from failing a node.
          '--cluster-node-timeout',
          '15000',
        ]),
      );
    }
    const addresses = masters.map((m) => `127.0.0.1:${m.port}`);
    nodes = addresses.join(',');
    await redisCli(['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes']);
    for (const master of masters) {
      await until(
        async () =>
          (await command(master.port, 'CLUSTER', 'INFO')).includes('cluster_state:ok') ? true : undefined,
        30_000,
        `cluster_state:ok on ${master.port}`,
      );
    }
    cluster = connectTopology(
      { mode: 'cluster', nodes: masters.map((m) => ({ host: '127.0.0.1', port: m.port })) },
      () => {},
    ) as Cluster;
    if (!(await waitForRedis(cluster, 15_000))) throw new Error('the test could not reach the cluster');
    db = await createTestDatabase();
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
  }, 120_000);

  afterAll(async () => {
    for (const app of apps) await app.close().catch(() => {});
    cluster?.disconnect();
    await sql?.end();
    await db?.drop();
    await farm.stopAll();
  }, 60_000);

  const newPrefix = () => `velro-test:cl-${randomBytes(4).toString('hex')}:`;

  /** An instance on the cluster (and not on the run's REDIS_URL: one way to reach Redis at a time). */
  const start = async (prefix: string, env: Record<string, string> = {}) => {
    const t = await startTestApp({
      databaseUrl: db.url,
      redis: { prefix },
      env: { REDIS_URL: '', REDIS_CLUSTER_NODES: nodes, ...env },
    });
    apps.push(t);
    return t;
  };

  /** Every key under `pattern` on each master (SCAN sees one node). */
  const keysByMaster = async (pattern: string): Promise<string[][]> =>
    Promise.all(cluster.nodes('master').map((node) => node.keys(pattern)));

  const call = (
    t: TestApp,
    user: SignedUp,
    method: 'GET' | 'POST' | 'DELETE' | 'PATCH',
    url: string,
    payload?: object,
  ) =>
    t.app.inject({
      method,
      url: `/api/v1${url}`,
      headers: bearer(user.accessToken),
      ...(payload ? { payload } : {}),
    });

  const keyOf = async (t: TestApp, user: SignedUp) => {
    const res = await call(t, user, 'POST', '/service-keys', {
      name: 'checks',
      scopes: ['authz:check', 'generations:read'],
    });
    expect(res.statusCode).toBe(201);
    return res.json<{ key: string }>().key;
  };

  const check = async (
    t: TestApp,
    credential: string,
    generationId: string,
    headers: Record<string, string> = {},
  ) => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/api/v1/authz/check',
      headers: { authorization: `Bearer ${credential}`, ...headers },
      payload: { resource: { type: 'generation', id: generationId }, permission: 'view' },
    });
    return {
      status: res.statusCode,
      allowed: res.statusCode === 200 ? res.json<{ allowed: boolean }>().allowed : undefined,
      cache: res.headers['x-cache'] as string | undefined,
    };
  };

  /** A team of `owner` with `members` (viewers), a team project and one generation in it. */
  const teamWithGeneration = async (t: TestApp, owner: SignedUp, members: SignedUp[]) => {
    const team = await call(t, owner, 'POST', '/teams', { name: `t-${randomBytes(3).toString('hex')}` });
    expect(team.statusCode).toBe(201);
    const teamId = team.json<{ id: string }>().id;
    for (const member of members) {
      const added = await call(t, owner, 'POST', `/teams/${teamId}/members`, {
        email: member.email,
        role: 'viewer',
      });
      expect(added.statusCode).toBe(201);
    }
    const project = await call(t, owner, 'POST', '/projects', {
      name: 'shared',
      team_id: teamId,
      visibility: 'team',
    });
    expect(project.statusCode).toBe(201);
    const projectId = project.json<{ id: string }>().id;
    return { teamId, projectId, generationId: await insertGeneration(sql, { userId: owner.id, projectId }) };
  };

  it('shares L2 between instances, and a revoked membership is denied on both', async () => {
    const prefix = newPrefix();
    const a = await start(prefix);
    const owner = await signUp(a.app);
    const member = await signUp(a.app);
    const { teamId, generationId } = await teamWithGeneration(a, owner, [member]);

    expect(await check(a, member.accessToken, generationId)).toMatchObject({ allowed: true, cache: 'miss' });
    // A wrote what it loaded to L2: the membership fact under its hash tag, next to its floor copy.
    const memsKey = cacheKey('mems', member.id);
    const [stored] = await until(
      async () => {
        const found = (await keysByMaster(`${prefix}l2:*${memsKey}`)).flat();
        return found.length > 0 ? found : undefined;
      },
      15_000,
      'the membership fact in L2',
    );
    expect(stored).toMatch(new RegExp(`^${prefix}l2:\\{s\\d+\\}:`));
    const tag = (stored as string).slice(0, (stored as string).indexOf('}') + 1);
    expect(await cluster.cluster('KEYSLOT', stored as string)).toBe(
      await cluster.cluster('KEYSLOT', `${tag}floor`),
    );

    // B's L1 is empty; a request needing only the session first (a check whose session is not in
    // L1 loads it together with the facts, skipping L2), then the check: every fact from L2.
    const b = await start(prefix);
    expect((await call(b, member, 'GET', '/auth/me')).statusCode).toBe(200);
    expect(await check(b, member.accessToken, generationId)).toMatchObject({
      status: 200,
      allowed: true,
      cache: 'l2',
    });
    expect(b.pipeline.cache.snapshot().database_loads).toBe(0);
    expect(b.pipeline.cache.snapshot().l2.hits).toBeGreaterThanOrEqual(3);

    // The owner removes the member on A: with the write's token B denies at once; without it once
    // the invalidation has arrived; A too. Nothing stale is answered from L1 or L2.
    const removed = await call(a, owner, 'DELETE', `/teams/${teamId}/members/${member.id}`);
    expect(removed.statusCode).toBe(204);
    const token = String(removed.headers['velro-consistency-token']);
    expect(token).toMatch(/^\d+$/);
    expect(
      await check(b, member.accessToken, generationId, { 'velro-consistency-token': token }),
    ).toMatchObject({
      status: 200,
      allowed: false,
    });
    await settle(a);
    await settle(b);
    for (const t of [a, b]) {
      expect(await check(t, member.accessToken, generationId)).toMatchObject({ status: 200, allowed: false });
      expect(await check(t, owner.accessToken, generationId)).toMatchObject({ status: 200, allowed: true });
    }
  }, 120_000);

  it('with L1 off answers from L2 on the cluster, and a revocation holds on every instance', async () => {
    const prefix = newPrefix();
    const c = await start(prefix, L1_OFF);
    const d = await start(prefix, L1_OFF);
    const owner = await signUp(c.app);
    const member = await signUp(c.app);
    const memberKey = await keyOf(c, member);
    const { teamId, generationId } = await teamWithGeneration(c, owner, [member]);

    expect(await check(d, memberKey, generationId)).toMatchObject({ allowed: true });
    await until(
      async () => ((await check(d, memberKey, generationId)).cache === 'l2' ? true : undefined),
      15_000,
      'D answering from L2',
    );
    // C never loaded the facts: D's loads serve C through the cluster.
    expect(await check(c, memberKey, generationId)).toMatchObject({
      status: 200,
      allowed: true,
      cache: 'l2',
    });

    expect((await call(c, owner, 'DELETE', `/teams/${teamId}/members/${member.id}`)).statusCode).toBe(204);
    await settle(c);
    await settle(d);
    expect(await check(d, memberKey, generationId)).toMatchObject({ status: 200, allowed: false });
    // The fresh (denying) facts land in L2 and serve both instances from there.
    await until(
      async () => {
        const answer = await check(d, memberKey, generationId);
        expect(answer).toMatchObject({ status: 200, allowed: false });
        return answer.cache === 'l2' ? true : undefined;
      },
      15_000,
      'D answering the denial from L2',
    );
    expect(await check(c, memberKey, generationId)).toMatchObject({
      status: 200,
      allowed: false,
      cache: 'l2',
    });
  }, 120_000);

  it('spreads entries over every master, raises the floor on each, and flushes each', async () => {
    const prefix = newPrefix();
    const l2 = createL2(cluster, { prefix, compressAboveBytes: 1024 });
    try {
      for (let i = 0; i < 200; i++) l2.write(cacheKey('user', `u-${i}`), { v: { i }, r: 10 }, 60);
      const perMaster = await until(
        async () => {
          const found = await keysByMaster(`${prefix}l2:*|*`);
          return found.flat().length === 200 ? found : undefined;
        },
        20_000,
        '200 entries written',
      );
      // Entries spread: every master holds some (16 tags over three masters' slot ranges).
      for (const keys of perMaster) expect(keys.length).toBeGreaterThan(0);
      expect(await l2.read(cacheKey('user', 'u-7'))).toEqual({ v: { i: 7 }, r: 10 });

      // The floor: one copy per tag, every copy raised, and reads everywhere obey it.
      l2.raiseFloor(11);
      const floors = await until(
        async () => {
          const found = (await keysByMaster(`${prefix}l2:{s*}floor`)).map((keys) => keys.length);
          return found.reduce((x, y) => x + y, 0) === 16 ? found : undefined;
        },
        15_000,
        'sixteen floor copies',
      );
      for (const count of floors) expect(count).toBeGreaterThan(0);
      for (let i = 0; i < 200; i += 13) expect(await l2.read(cacheKey('user', `u-${i}`))).toBeUndefined();
      // A stale writer cannot put back what the floor retired, on any tag.
      l2.write(cacheKey('user', 'u-7'), { v: { i: 7 }, r: 10 }, 60);
      l2.write(cacheKey('user', 'u-8'), { v: { i: 8 }, r: 12 }, 60);
      await until(
        async () => ((await l2.read(cacheKey('user', 'u-8'))) ? true : undefined),
        15_000,
        'u-8 written',
      );
      expect(await l2.read(cacheKey('user', 'u-7'))).toBeUndefined();

      // The flush walks every master and deletes entries only: the floors stay.
      expect(await l2.flushAll()).toBe(200);
      expect((await keysByMaster(`${prefix}l2:*|*`)).flat()).toEqual([]);
      expect((await keysByMaster(`${prefix}l2:{s*}floor`)).flat()).toHaveLength(16);
    } finally {
      l2.close();
      for (const keys of await keysByMaster(`${prefix}*`)) for (const key of keys) await cluster.del(key);
    }
  }, 120_000);

  it('readiness pings the cluster, and velro status reports it answering', async () => {
    const t = await start(newPrefix());
    const ready = await t.app.inject({ method: 'GET', url: '/ready' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toMatchObject({ status: 'ready', checks: { redis: { ok: true } } });
    const { stdout } = await runCommand(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', 'status', '--json'],
      {
        cwd: process.cwd(),
        env: { DATABASE_URL: db.url, REDIS_URL: '', REDIS_CLUSTER_NODES: nodes, PORT: '1' },
      },
    );
    expect(JSON.parse(stdout).redis).toEqual({
      configured: true,
      mode: 'cluster',
      url: `Cluster, seed nodes ${nodes.split(',').join(', ')}`,
      answering: true,
    });
  }, 120_000);

  it('counts failed logins for one account across instances', async () => {
    const prefix = newPrefix();
    const env = { LOGIN_RATE_LIMIT_PER_ACCOUNT: '4' };
    const one = await start(prefix, env);
    const two = await start(prefix, env);
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
    // Neither instance alone has seen four failures; together, through the cluster, they have.
    expect((await attempt(one, 5)).statusCode).toBe(429);
    expect((await attempt(two, 6)).statusCode).toBe(429);
    expect((await keysByMaster(`${prefix}rl:*`)).flat().length).toBeGreaterThan(0);
  }, 120_000);

  // Last: it takes a master away for good. Without replicas its slots have no one to answer;
  // checks whose keys live there must degrade to PostgreSQL, never fail or answer stale.
  it('a master lost for good: every check still right and 200, logins still limited', async () => {
    const prefix = newPrefix();
    const e = await start(prefix, { ...L1_OFF, LOGIN_RATE_LIMIT_PER_ACCOUNT: '3' });
    const f = await start(prefix, L1_OFF);
    const owner = await signUp(e.app);
    const members = [await signUp(e.app), await signUp(e.app), await signUp(e.app), await signUp(e.app)];
    const memberKeys = await Promise.all(members.map((m) => keyOf(e, m)));
    const { teamId, generationId } = await teamWithGeneration(e, owner, members);
    const allowed = members.map(() => true);
    let slowest = 0;
    const round = async (answers: string[]) => {
      for (const t of [e, f]) {
        for (const [i, key] of memberKeys.entries()) {
          const started = performance.now();
          const answer = await check(t, key, generationId);
          slowest = Math.max(slowest, performance.now() - started);
          answers.push(answer.cache ?? '?');
          expect(answer, `member ${i}`).toMatchObject({ status: 200, allowed: allowed[i] });
        }
      }
    };
    const warm: string[] = [];
    await until(
      async () => {
        await round(warm);
        return warm.slice(-8).every((cache) => cache === 'l2') ? true : undefined;
      },
      20_000,
      'both instances answering from L2',
    );

    const { rows } = await sql.query<{ rev: number }>('SELECT rev FROM authz_revision');
    const revisionAtLoss = rows[0]?.rev as number;
    await (masters[2] as RedisProcess).kill('SIGKILL');
    // Tombstones on the lost master may be gone while `seen` (elsewhere) survived: the instances
    // count what they wrote as lost and raise the floor copies past it on the masters that answer
    // (the lost master's copies wait for it; `seen` does not advance meanwhile). Nothing is
    // invalidated before this holds, so no lost tombstone of the test's own raises them.
    for (const survivor of masters.slice(0, 2)) {
      const direct = connectRedis(`redis://127.0.0.1:${survivor.port}`, () => {});
      try {
        expect(await waitForRedis(direct, 10_000)).toBe(true);
        await until(
          async () => {
            const floors = await direct.keys(`${prefix}l2:{s*}floor`);
            if (floors.length === 0) return undefined;
            const values = await Promise.all(floors.map((key) => direct.get(key)));
            return values.every((value) => Number(value) >= revisionAtLoss) ? true : undefined;
          },
          15_000,
          `floor copies on ${survivor.port} raised past revision ${revisionAtLoss}`,
        );
      } finally {
        direct.disconnect();
      }
    }
    slowest = 0;
    const during: string[] = [];
    const lostAt = Date.now();
    for (let i = 0; Date.now() - lostAt < 4_000 || i < 4; i++) {
      await round(during);
      if (i === 1) {
        // A removal while a third of the slots have no master: denied from then on, everywhere.
        expect(
          (await call(e, owner, 'DELETE', `/teams/${teamId}/members/${members[0]?.id}`)).statusCode,
        ).toBe(204);
        await settle(e);
        await settle(f);
        allowed[0] = false;
      }
    }
    expect(during.length).toBeGreaterThan(0);
    const fromL2 = during.filter((cache) => cache === 'l2').length;
    console.info(
      `[redis-cluster] one of three masters killed: ${during.length} checks in the next 4 s, all right and 200; ` +
        `${fromL2} from L2, ${during.length - fromL2} from PostgreSQL; slowest ${slowest.toFixed(0)} ms`,
    );

    // The shared login counters live on the surviving masters or, for keys of the lost slots, in
    // the process: either way the limit holds.
    const user = await signUp(e.app);
    const attempts: number[] = [];
    for (let i = 0; i < 5; i++) {
      const res = await e.app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        remoteAddress: `198.51.100.${40 + i}`,
        payload: { email: user.email, password: `wrong-${i}-pw` },
      });
      attempts.push(res.statusCode);
    }
    expect(attempts.slice(0, 3)).toEqual([401, 401, 401]);
    expect(attempts.slice(3)).toEqual([429, 429]);
  }, 120_000);
});
