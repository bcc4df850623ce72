/**
 * Redis behind Sentinel (issue 15, part 5): a real master, a replica (`--replicaof`) and a
 * sentinel (`redis-server <conf> --sentinel`, quorum 1, down after 500 ms), started by this file on
 * free ports in a temporary directory. Two app instances configured with REDIS_SENTINELS (L1 off,
 * so every check goes through L2 when it can) keep answering every check correctly while the
 * master is killed (SIGKILL) and the sentinel promotes the replica: a member revoked before the
 * failover and one revoked during it are denied throughout, the others allowed, never a 5xx (L2
 * away degrades to PostgreSQL); afterwards both instances use L2 again, on the new master.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
import { commandAs, RedisFarm, type RedisProcess, runRedisHaTests, until } from './helpers/redis-servers.js';

// The data nodes and the sentinel each ask a password of their own: the client needs both right.
const DATA_PASSWORD = 'data-nodes-secret';
const SENTINEL_PASSWORD = 'sentinel-secret';

interface Answer {
  at: 'before' | 'during' | 'after';
  instance: string;
  who: string;
  status: number;
  allowed: boolean | undefined;
  cache: string | undefined;
  ms: number;
}

describe.runIf(runRedisHaTests)('Redis Sentinel: failover under load', () => {
  const farm = new RedisFarm();
  let master: RedisProcess;
  let replica: RedisProcess;
  let sentinel: RedisProcess;
  let db: TestDatabase;
  let sql: pg.Client;
  const apps: TestApp[] = [];

  /** Where the sentinel says the master of 'mymaster' is (its port). */
  const masterPort = async () => {
    const reply = await commandAs(
      sentinel.port,
      SENTINEL_PASSWORD,
      'SENTINEL',
      'get-master-addr-by-name',
      'mymaster',
    );
    return Number(reply.split('\r\n')[4]);
  };

  /** Until the sentinel names `master` as master and `replica` as its healthy replica. */
  const replicaKnown = () =>
    until(
      async () => {
        if ((await masterPort()) !== master.port) return undefined;
        const replicas = await commandAs(
          sentinel.port,
          SENTINEL_PASSWORD,
          'SENTINEL',
          'replicas',
          'mymaster',
        );
        return replicas.includes(String(replica.port)) && !/[so]_down|disconnected/.test(replicas)
          ? true
          : undefined;
      },
      30_000,
      'the sentinel knowing the master and its replica',
    );

  beforeAll(async () => {
    // Both servers ask the same password of clients and of each other (a replica may become master).
    const auth = ['--requirepass', DATA_PASSWORD, '--masterauth', DATA_PASSWORD];
    master = await farm.server('master', auth);
    replica = await farm.server('replica', [...auth, '--replicaof', '127.0.0.1', String(master.port)]);
    await until(
      async () =>
        (await commandAs(replica.port, DATA_PASSWORD, 'INFO', 'replication')).includes(
          'master_link_status:up',
        )
          ? true
          : undefined,
      20_000,
      'the replica in sync',
    );
    sentinel = await farm.sentinel('sentinel', 'mymaster', master.port, {
      authPass: DATA_PASSWORD,
      requirePass: SENTINEL_PASSWORD,
    });
    // The sentinel learns the replica from the master's INFO; a failover needs it known and healthy.
    await replicaKnown();
    db = await createTestDatabase();
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
  }, 120_000);

  afterAll(async () => {
    for (const app of apps) await app.close().catch(() => {});
    await sql?.end();
    await db?.drop();
    await farm.stopAll();
  }, 60_000);

  /** How an instance reaches Redis here: the sentinel, and the two passwords. */
  const sentinelEnv = () => ({
    REDIS_URL: '',
    REDIS_SENTINELS: `127.0.0.1:${sentinel.port}`,
    REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD,
    REDIS_PASSWORD: DATA_PASSWORD,
  });

  const start = async (prefix: string) => {
    const t = await startTestApp({
      databaseUrl: db.url,
      redis: { prefix },
      // REDIS_SENTINEL_MASTER left at its default, 'mymaster'.
      env: { ...sentinelEnv(), L1_ENABLED: 'false' },
    });
    apps.push(t);
    return t;
  };

  const call = (t: TestApp, user: SignedUp, method: 'POST' | 'DELETE', url: string, payload?: object) =>
    t.app.inject({
      method,
      url: `/api/v1${url}`,
      headers: bearer(user.accessToken),
      ...(payload ? { payload } : {}),
    });

  /** A service key: with L1 off its credential is itself a fact read through L2. */
  const keyOf = async (t: TestApp, user: SignedUp) => {
    const res = await call(t, user, 'POST', '/service-keys', { name: 'checks', scopes: ['authz:check'] });
    expect(res.statusCode).toBe(201);
    return res.json<{ key: string }>().key;
  };

  it('keeps every check right through a master kill and promotion, and L2 serves again after', async () => {
    const prefix = `velro-test:sn-${randomBytes(4).toString('hex')}:`;
    const a = await start(prefix);
    const b = await start(prefix);
    const instances = { a, b };

    const owner = await signUp(a.app);
    const people = { stay: await signUp(a.app), gone: await signUp(a.app), late: await signUp(a.app) };
    const team = await call(a, owner, 'POST', '/teams', { name: 'failover' });
    expect(team.statusCode).toBe(201);
    const teamId = team.json<{ id: string }>().id;
    for (const person of Object.values(people)) {
      const res = await call(a, owner, 'POST', `/teams/${teamId}/members`, {
        email: person.email,
        role: 'viewer',
      });
      expect(res.statusCode).toBe(201);
    }
    const project = await call(a, owner, 'POST', '/projects', {
      name: 'p',
      team_id: teamId,
      visibility: 'team',
    });
    expect(project.statusCode).toBe(201);
    const generationId = await insertGeneration(sql, { userId: owner.id, projectId: project.json().id });
    const keys = {
      owner: await keyOf(a, owner),
      stay: await keyOf(a, people.stay),
      gone: await keyOf(a, people.gone),
      late: await keyOf(a, people.late),
    };
    const revoke = async (t: TestApp, person: SignedUp) => {
      expect((await call(t, owner, 'DELETE', `/teams/${teamId}/members/${person.id}`)).statusCode).toBe(204);
      await settle(a);
      await settle(b);
    };

    const answers: Answer[] = [];
    let phase: Answer['at'] = 'before';
    let lateRevoked = false;
    /** Who must be allowed right now. */
    const expected = (who: keyof typeof keys) =>
      who === 'owner' || who === 'stay' || (who === 'late' && !lateRevoked);
    const round = async () => {
      for (const [instance, t] of Object.entries(instances)) {
        for (const who of Object.keys(keys) as (keyof typeof keys)[]) {
          const started = performance.now();
          const res = await t.app.inject({
            method: 'POST',
            url: '/api/v1/authz/check',
            headers: bearer(keys[who]),
            payload: { resource: { type: 'generation', id: generationId }, permission: 'view' },
          });
          const answer: Answer = {
            at: phase,
            instance,
            who,
            status: res.statusCode,
            allowed: res.statusCode === 200 ? res.json<{ allowed: boolean }>().allowed : undefined,
            cache: res.headers['x-cache'] as string | undefined,
            ms: performance.now() - started,
          };
          answers.push(answer);
          // Checked at once, so a failure names the first wrong answer.
          expect(answer, JSON.stringify(answer)).toMatchObject({ status: 200, allowed: expected(who) });
        }
      }
    };
    const servedFromL2 = () => {
      const last = answers.slice(-8);
      return last.length === 8 && last.every((answer) => answer.cache === 'l2');
    };

    // Before: `gone` removed; everything warm in L2 (on the master), both instances reading it.
    await revoke(a, people.gone);
    await until(
      async () => {
        await round();
        return servedFromL2() ? true : undefined;
      },
      20_000,
      'both instances answering from L2 before the failover',
    );
    // A loaded machine may have made the sentinel fail over already: then the roles are swapped.
    if ((await masterPort()) === replica.port) [master, replica] = [replica, master];
    await replicaKnown();
    for (const t of [a, b]) {
      await until(
        async () => ((await t.redis?.info('server'))?.includes(`tcp_port:${master.port}`) ? true : undefined),
        20_000,
        'the instance on the master',
      );
    }

    // The master dies without a word. Checks go on, on both instances, until the sentinel has
    // promoted the replica; `late` is removed in the middle of it (its tombstone cannot reach L2).
    await master.kill('SIGKILL');
    const killedAt = performance.now();
    phase = 'during';
    let switchedAfter: number | undefined;
    while (switchedAfter === undefined) {
      await round();
      if (!lateRevoked) {
        await revoke(b, people.late);
        lateRevoked = true;
      }
      if ((await masterPort()) === replica.port) switchedAfter = performance.now() - killedAt;
      if (performance.now() - killedAt > 60_000)
        throw new Error('the sentinel did not promote the replica in 60 s');
    }

    // After: the clients follow the sentinel to the new master and L2 serves both again. (Before
    // ioredis 6.1 a +switch-master arriving while a client was already reconnecting ended that
    // client for good, so L2 never came back in some runs; the service's client now also revives
    // itself after any end it did not ask for, see src/platform/redis.ts.)
    phase = 'after';
    const servingAgain = await until(
      async () => {
        await round();
        return servedFromL2() ? performance.now() - killedAt : undefined;
      },
      30_000,
      'both instances answering from L2 on the new master',
    );
    for (const t of [a, b]) expect(await t.redis?.info('server')).toContain(`tcp_port:${replica.port}`);
    expect(await commandAs(replica.port, DATA_PASSWORD, 'ROLE')).toContain('master');

    // Readiness and `velro status` go through the sentinel to the new master as well.
    const ready = await b.app.inject({ method: 'GET', url: '/ready' });
    expect(ready.json()).toMatchObject({ status: 'ready', checks: { redis: { ok: true } } });
    const { stdout } = await runCommand(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', 'status', '--json'],
      {
        cwd: process.cwd(),
        env: {
          DATABASE_URL: db.url,
          ...sentinelEnv(),
          PORT: '1',
        },
      },
    );
    expect(stdout).not.toContain(DATA_PASSWORD);
    expect(stdout).not.toContain(SENTINEL_PASSWORD);
    expect(JSON.parse(stdout).redis).toEqual({
      configured: true,
      mode: 'sentinel',
      url: `Sentinel, master 'mymaster' via 127.0.0.1:${sentinel.port}`,
      answering: true,
    });

    const during = answers.filter((answer) => answer.at === 'during');
    expect(during.length).toBeGreaterThan(0);
    // Not one answer other than 200 with the right decision (asserted one by one in `round`).
    expect(answers.filter((answer) => answer.status !== 200)).toEqual([]);
    console.info(
      `[redis-sentinel] promotion seen ${switchedAfter.toFixed(0)} ms after SIGKILL of the master; L2 serving ` +
        `both instances again after ${servingAgain.toFixed(0)} ms; ${answers.length} checks, ${during.length} ` +
        `during the failover (${during.filter((x) => x.cache !== 'l2').length} not from L2), slowest ` +
        `${Math.max(...during.map((x) => x.ms)).toFixed(0)} ms, none wrong, none 5xx`,
    );
  }, 240_000);
});
