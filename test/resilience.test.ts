/**
 * Fault injection under traffic (SPEC §8), against servers the test controls: PostgreSQL and Redis
 * behind TCP relays that are cut and restored while concurrent request loops run over real HTTP
 * (keep-alive); slow statements (pg_sleep in a trigger) meeting the statement timeout; a remote
 * image provider that accepts connections and never answers; and an event loop blocked while
 * requests arrive (load shedding). Every answer is counted by status; no mocks. Two faults that
 * break the service are pinned down as BUGs: a PostgreSQL outage while the worker runs a job kills
 * the process (a real `src/main.ts` child), and an invalidation made while Redis was unreachable
 * leaves a stale shared fact that a newly started instance serves.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo, createServer as createTcpServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, type Dispatcher, request } from 'undici';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { HttpProvider } from '../src/modules/providers/http.js';
import { cacheKey } from '../src/platform/cache/keys.js';
import { connectRedis, waitForRedis } from '../src/platform/redis.js';
import { bearer, type SignedUp, signUp, startTestApp, TEST_ENV, type TestApp } from './helpers/app.js';
import { until, useTestDatabase } from './helpers/fixture.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

const redisUrl = inject('redisUrl');

const STATEMENT_TIMEOUT_MS = 500;
const CONNECT_TIMEOUT_MS = 500;
/** Statement timeout, the client-side guard above it (1 s), the connect timeout, and slack for a busy host. */
const ANSWER_BOUND_MS = STATEMENT_TIMEOUT_MS + 1_000 + CONNECT_TIMEOUT_MS + 2_000;
/** A request without an answer after this long counts as hung (undici gives up and reports it). */
const HANG_MS = 15_000;
const OUTAGE_MS = 2_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Answer {
  op: string;
  /** ms since the traffic's epoch when the request was sent. */
  at: number;
  ms: number;
  /** 0 when no HTTP answer came back (then `error` says why). */
  status: number;
  error: string | null;
  retryAfter: string | undefined;
  code: string | undefined;
  json: unknown;
  headers: Record<string, string | string[] | undefined>;
}

function errorCode(error: unknown): string {
  const e = error as { code?: unknown; cause?: { code?: unknown } };
  if (typeof e?.code === 'string') return e.code;
  if (typeof e?.cause?.code === 'string') return e.cause.code;
  return error instanceof Error ? error.name : 'unknown';
}

/** One HTTP exchange; network failures become an answer with status 0, never a throw. */
async function send(
  dispatcher: Dispatcher,
  base: string,
  op: string,
  epoch: number,
  method: Dispatcher.HttpMethod,
  path: string,
  options: { token?: string; json?: unknown } = {},
): Promise<Answer> {
  const started = performance.now();
  const answer = (fields: Partial<Answer>): Answer => ({
    op,
    at: started - epoch,
    ms: performance.now() - started,
    status: 0,
    error: null,
    retryAfter: undefined,
    code: undefined,
    json: undefined,
    headers: {},
    ...fields,
  });
  try {
    const res = await request(`${base}${path}`, {
      method,
      dispatcher,
      headers: {
        ...(options.token ? bearer(options.token) : {}),
        ...(options.json === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: options.json === undefined ? null : JSON.stringify(options.json),
      headersTimeout: HANG_MS,
      bodyTimeout: HANG_MS,
    });
    const text = await res.body.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    const retryAfter = res.headers['retry-after'];
    return answer({
      status: res.statusCode,
      json,
      headers: res.headers,
      retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
      code: (json as { error?: { code?: string } } | undefined)?.error?.code,
    });
  } catch (error) {
    return answer({ error: errorCode(error) });
  }
}

const countBy = <T>(items: T[], key: (item: T) => string): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return out;
};
const statusOf = (a: Answer) => (a.status === 0 ? `net:${a.error}` : String(a.status));
const maxMs = (answers: Answer[]) => Math.max(0, ...answers.map((a) => a.ms));

async function listen(t: TestApp): Promise<string> {
  await t.app.listen({ port: 0, host: '127.0.0.1' });
  return `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
}

const fx = useTestDatabase();
const closers: (() => Promise<unknown>)[] = [];

afterAll(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

async function start(options: Parameters<typeof startTestApp>[0]): Promise<TestApp> {
  const t = await startTestApp(options);
  closers.push(() => t.close());
  return t;
}

function agent(): Agent {
  const a = new Agent({ connections: 32, keepAliveTimeout: 30_000 });
  closers.push(() => a.close());
  return a;
}

describe('PostgreSQL cut under traffic', () => {
  it('answers 503 + Retry-After fast, never hangs, recovers by itself, and loses no acknowledged write', async () => {
    const proxy = TcpProxy.forUrl(fx.db.url);
    await proxy.start();
    closers.push(() => proxy.cut());
    const t = await start({
      databaseUrl: proxy.wrap(fx.db.url),
      env: {
        STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
        DB_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
      },
    });
    const base = await listen(t);
    const http = agent();
    const LOOPS = 6;
    const users: SignedUp[] = [];
    for (let i = 0; i < LOOPS; i++) users.push(await signUp(t.app));

    const epoch = performance.now();
    const answers: Answer[] = [];
    const acked = new Map<string, { id: string; owner: string }>(); // project name → row
    const attemptedProjects = new Set<string>();
    /** Per user, in the order sent: every display name tried, and whether it was acknowledged. */
    const profileWrites = new Map<string, { value: string; acked: boolean }[]>();
    const wrong: string[] = [];
    let stop = false;
    let cutAt = Number.POSITIVE_INFINITY;
    let restoredAt = Number.POSITIVE_INFINITY;

    const loop = async (i: number) => {
      const user = users[i] as SignedUp;
      const writes: { value: string; acked: boolean }[] = [];
      profileWrites.set(user.id, writes);
      let lastProject: string | null = null;
      for (let n = 0; !stop; n++) {
        const go = (op: string, method: Dispatcher.HttpMethod, path: string, json?: unknown) =>
          send(http, base, op, epoch, method, path, { token: user.accessToken, json }).then((a) => {
            answers.push(a);
            return a;
          });
        switch (n % 5) {
          case 0: {
            const name = `w${i}-${n}-${randomBytes(3).toString('hex')}`;
            attemptedProjects.add(name);
            const a = await go('create_project', 'POST', '/api/v1/projects', { name });
            if (a.status === 201) {
              const body = a.json as { id: string; name: string; owner_id: string };
              if (body.name !== name || body.owner_id !== user.id) wrong.push(`create answered ${body.name}`);
              acked.set(name, { id: body.id, owner: user.id });
              lastProject = body.id;
            }
            break;
          }
          case 1: {
            const value = `d${i}-${n}`;
            const a = await go('update_profile', 'PATCH', '/api/v1/auth/profile', { display_name: value });
            writes.push({ value, acked: a.status === 200 });
            if (a.status === 200 && (a.json as { display_name: string }).display_name !== value)
              wrong.push('profile answered another name');
            break;
          }
          case 2: {
            const a = await go('me', 'GET', '/api/v1/auth/me');
            if (a.status === 200 && (a.json as { id: string }).id !== user.id) wrong.push('me: another user');
            break;
          }
          case 3: {
            if (!lastProject) break;
            const a = await go('read_project', 'GET', `/api/v1/projects/${lastProject}`);
            if (a.status === 200 && (a.json as { id: string }).id !== lastProject)
              wrong.push('project: another');
            break;
          }
          default: {
            if (!lastProject) break;
            const a = await go('authz_check', 'POST', '/api/v1/authz/check', {
              resource: { type: 'project', id: lastProject },
              permission: 'manage',
            });
            if (a.status === 200 && (a.json as { allowed: boolean }).allowed !== true)
              wrong.push('check: owner denied');
          }
        }
        // Pacing: a loop whose answers are instant 503s must not turn into a busy loop.
        await sleep(5);
      }
    };
    const loops = Array.from({ length: LOOPS }, (_, i) => loop(i));

    const successes = () => answers.filter((a) => a.status >= 200 && a.status < 300).length;
    await until(async () => (successes() >= 40 ? true : undefined), 15_000, 'traffic warmed up');

    await proxy.cut();
    cutAt = performance.now() - epoch;
    const readyDuring = await until(
      async () => {
        const r = await send(http, base, 'ready', epoch, 'GET', '/ready');
        return r.status === 503 ? r : undefined;
      },
      5_000,
      '/ready to report the outage',
    );
    const health = await send(http, base, 'health', epoch, 'GET', '/health');
    await until(
      async () => (answers.some((a) => a.at > cutAt && a.status === 503) ? true : undefined),
      5_000,
      'a 503 from the traffic',
    );
    await sleep(Math.max(0, OUTAGE_MS - (performance.now() - epoch - cutAt)));

    await proxy.start();
    restoredAt = performance.now() - epoch;
    const ops = ['create_project', 'update_profile', 'me', 'read_project', 'authz_check'];
    await until(
      async () => {
        const after = answers.filter((a) => a.at > restoredAt && a.status >= 200 && a.status < 300);
        return ops.every((op) => after.filter((a) => a.op === op).length >= 2) ? true : undefined;
      },
      20_000,
      'every kind of request to succeed again',
    );
    const recoveredAt = Math.min(
      ...answers.filter((a) => a.at > restoredAt && a.status < 300).map((a) => a.at + a.ms),
    );
    stop = true;
    await Promise.all(loops);
    const readyAfter = await until(
      async () => {
        const r = await send(http, base, 'ready', epoch, 'GET', '/ready');
        return r.status === 200 ? r : undefined;
      },
      10_000,
      '/ready after recovery',
    );

    // Every answer is a success or a clean 503: no 500, no hang, no dropped connection.
    const byStatus = countBy(answers, statusOf);
    expect(Object.keys(byStatus).filter((s) => !['200', '201', '503'].includes(s))).toEqual([]);
    for (const a of answers.filter((x) => x.status === 503)) {
      expect(a.code).toBe('service_unavailable');
      expect(a.retryAfter).toMatch(/^\d+$/);
      expect(JSON.stringify(a.json)).not.toMatch(/ECONN|\.ts:|node_modules|\n\s+at /);
    }
    expect(maxMs(answers)).toBeLessThan(ANSWER_BOUND_MS);
    expect(wrong).toEqual([]);
    const during = answers.filter((a) => a.at > cutAt && a.at < restoredAt);
    expect(during.filter((a) => a.status === 503).length).toBeGreaterThan(0);
    expect(readyDuring.json).toMatchObject({ status: 'not_ready', checks: { postgres: { ok: false } } });
    expect(health.status).toBe(200);
    expect(readyAfter.status).toBe(200);

    // Nothing acknowledged is lost: each 201 is a row, each acknowledged profile change holds or was
    // overwritten only by a later change of the same user.
    const { rows: projects } = await fx.sql.query<{ id: string; name: string; owner_id: string }>(
      'SELECT id, name, owner_id FROM projects WHERE owner_id = ANY($1)',
      [users.map((u) => u.id)],
    );
    const stored = new Map(projects.map((p) => [p.name, p]));
    const missing = [...acked].filter(([name, row]) => stored.get(name)?.id !== row.id);
    expect(missing).toEqual([]);
    // Rows that exist were all asked for (a 503 may still have committed: that is allowed).
    expect(projects.filter((p) => !attemptedProjects.has(p.name))).toEqual([]);
    const { rows: names } = await fx.sql.query<{ id: string; display_name: string }>(
      'SELECT id, display_name FROM users WHERE id = ANY($1)',
      [users.map((u) => u.id)],
    );
    let profileAcked = 0;
    for (const { id, display_name } of names) {
      const writes = profileWrites.get(id) ?? [];
      const lastAcked = writes.map((w) => w.acked).lastIndexOf(true);
      profileAcked += writes.filter((w) => w.acked).length;
      if (lastAcked < 0) continue;
      const allowed = writes.slice(lastAcked).map((w) => w.value);
      expect(allowed, `user ${id}`).toContain(display_name);
    }
    console.info(
      `[resilience] PostgreSQL cut ${OUTAGE_MS} ms under ${LOOPS} loops: ${answers.length} requests, ` +
        `by status ${JSON.stringify(byStatus)}, max latency ${maxMs(answers).toFixed(0)} ms ` +
        `(during the outage ${maxMs(during).toFixed(0)} ms); first success ${(recoveredAt - restoredAt).toFixed(0)} ms ` +
        `after the relay returned; project creates acknowledged ${acked.size}, found ${acked.size - missing.length} ` +
        `(rows ${projects.length} of ${attemptedProjects.size} attempted); profile updates acknowledged ${profileAcked}`,
    );
  }, 60_000);

  it('a PostgreSQL outage while a job runs does not kill the service (real process, worker on)', async () => {
    const proxy = TcpProxy.forUrl(fx.db.url);
    await proxy.start();
    closers.push(() => proxy.cut());
    const dataDir = await mkdtemp(join(tmpdir(), 'velro-resilience-'));
    closers.push(() => rm(dataDir, { recursive: true, force: true }));
    const port = await new Promise<number>((resolve) => {
      const probe = createTcpServer().listen(0, '127.0.0.1', () => {
        const { port: free } = probe.address() as AddressInfo;
        probe.close(() => resolve(free));
      });
    });
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...TEST_ENV,
      NODE_ENV: 'test',
      LOG_LEVEL: 'warn',
      HOST: '127.0.0.1',
      PORT: String(port),
      DATA_DIR: dataDir,
      DATABASE_URL: proxy.wrap(fx.db.url),
      STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
      DB_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
      WORKER_ENABLED: 'true',
      WORKER_CONCURRENCY: '1',
      LOCAL_PROVIDER_STEP_DELAY_MS: '100',
    };
    delete env.REDIS_URL;
    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const collect = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-6_000);
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    closers.push(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const base = `http://127.0.0.1:${port}`;
    const http = agent();
    await until(
      async () => {
        if (child.exitCode !== null) throw new Error(`the service exited early:\n${output}`);
        const r = await send(http, base, 'ready', 0, 'GET', '/ready');
        return r.status === 200 ? true : undefined;
      },
      30_000,
      'the service to be ready',
    );
    const registered = await send(http, base, 'register', 0, 'POST', '/api/v1/auth/register', {
      json: {
        email: `crash-${randomBytes(4).toString('hex')}@example.com`,
        password: 'correct horse battery',
      },
    });
    const token = (registered.json as { access_token: string }).access_token;
    const created = await send(http, base, 'create', 0, 'POST', '/api/v1/generations', {
      token,
      json: { model_id: 'velro-sketch', prompt: 'a storm', parameters: { steps: 20 } },
    });
    expect(created.status).toBe(202);
    const generationId = (created.json as { id: string }).id;
    await until(
      async () => {
        const { rows } = await fx.sql.query<{ status: string; progress: number }>(
          'SELECT status, progress FROM generations WHERE id = $1',
          [generationId],
        );
        return rows[0]?.status === 'processing' && (rows[0]?.progress ?? 0) > 0 ? true : undefined;
      },
      20_000,
      'the job to run',
    );

    // The job (20 steps × 100 ms, some already done) ends while the database is away: an outage of 5 s.
    await proxy.cut();
    await Promise.race([once(child, 'exit'), sleep(5_000)]);
    await proxy.start();

    expect(child.exitCode, output).toBeNull();
    await until(
      async () => {
        const r = await send(http, base, 'me', 0, 'GET', '/api/v1/auth/me', { token });
        return r.status === 200 ? true : undefined;
      },
      20_000,
      'the service to serve again',
    );
    child.kill('SIGTERM');
  }, 60_000);
});

describe('slow statements', () => {
  it('a statement stuck in pg_sleep is cancelled at the statement timeout: 503, rolled back, others unaffected', async () => {
    await fx.sql.query(`
      CREATE OR REPLACE FUNCTION resilience_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.name LIKE 'slow-%' THEN PERFORM pg_sleep(10); END IF;
        RETURN NEW;
      END $$`);
    await fx.sql.query(`CREATE TRIGGER resilience_slow BEFORE INSERT ON projects
                     FOR EACH ROW EXECUTE FUNCTION resilience_slow_insert()`);
    try {
      const t = await start({
        databaseUrl: fx.db.url,
        env: { STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS) },
      });
      const base = await listen(t);
      const http = agent();
      const user = await signUp(t.app);
      const epoch = performance.now();
      const as = (op: string, method: Dispatcher.HttpMethod, path: string, json?: unknown) =>
        send(http, base, op, epoch, method, path, { token: user.accessToken, json });
      const own = await as('create', 'POST', '/api/v1/projects', { name: 'fast-first' });
      expect(own.status).toBe(201);
      const ownId = (own.json as { id: string }).id;

      // As many slow writes as the write pool has connections, and reads beside them.
      const slowNames = Array.from({ length: 4 }, (_, i) => `slow-${i}-${randomBytes(3).toString('hex')}`);
      const slow = slowNames.map((name) => as('slow_create', 'POST', '/api/v1/projects', { name }));
      const sleeping = await until(
        async () => {
          const { rows } = await fx.sql.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event = 'PgSleep'`,
          );
          return (rows[0]?.n ?? 0) >= 1 ? rows[0]?.n : undefined;
        },
        5_000,
        'the slow statements to be running in PostgreSQL',
      );
      const reads = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          i % 3 === 0
            ? as('read', 'GET', `/api/v1/projects/${ownId}`)
            : i % 3 === 1
              ? as('read', 'GET', '/api/v1/auth/me')
              : as('read', 'POST', '/api/v1/authz/check', {
                  resource: { type: 'project', id: ownId },
                  permission: 'view',
                }),
        ),
      );
      const slowAnswers = await Promise.all(slow);

      for (const a of slowAnswers) {
        expect(a.status).toBe(503);
        expect(a.code).toBe('service_unavailable');
        expect(a.retryAfter).toMatch(/^\d+$/);
        expect(a.ms).toBeLessThan(ANSWER_BOUND_MS);
      }
      // Reads use their own pool: the stuck writes hold every write connection and nothing else.
      expect(countBy(reads, statusOf)).toEqual({ '200': reads.length });
      // Cancelled in the server (not just abandoned by the client), and rolled back.
      const { rows: still } = await fx.sql.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event = 'PgSleep'`,
      );
      expect(still[0]?.n).toBe(0);
      const { rows } = await fx.sql.query('SELECT 1 FROM projects WHERE name = ANY($1)', [slowNames]);
      expect(rows).toEqual([]);
      // The pool is whole again.
      expect((await as('create', 'POST', '/api/v1/projects', { name: 'fast-after' })).status).toBe(201);
      console.info(
        `[resilience] ${slowNames.length} statements in pg_sleep (${sleeping} seen sleeping): 503 after ` +
          `${Math.min(...slowAnswers.map((a) => a.ms)).toFixed(0)}–${maxMs(slowAnswers).toFixed(0)} ms ` +
          `(statement timeout ${STATEMENT_TIMEOUT_MS} ms); ${reads.length} reads beside them, slowest ` +
          `${maxMs(reads).toFixed(0)} ms`,
      );
    } finally {
      await fx.sql.query('DROP TRIGGER IF EXISTS resilience_slow ON projects');
    }
  }, 30_000);
});

describe.runIf(redisUrl)('Redis stopped and restarted under traffic', () => {
  const prefixes: string[] = [];
  beforeAll(() => {
    // Registered before any app of this block starts, so it runs after they all closed (closers run
    // newest first): a running instance keeps writing its `l2:seen` mark.
    closers.push(async () => {
      const redis = connectRedis(redisUrl as string, () => {});
      await waitForRedis(redis, 5_000);
      for (const prefix of prefixes) {
        const keys = await redis.keys(`${prefix}*`).catch(() => []);
        if (keys.length > 0) await redis.del(...keys);
      }
      await redis.quit();
    });
  });

  it('every answer is a correct 2xx during the outage, and L2 serves again after it', async () => {
    const proxy = TcpProxy.forUrl(redisUrl as string);
    await proxy.start();
    closers.push(() => proxy.cut());
    const prefix = `velro-test:res-${randomBytes(4).toString('hex')}:`;
    prefixes.push(prefix);
    const env = { REDIS_URL: proxy.wrap(redisUrl as string), L1_ENABLED: 'false' };
    const a = await start({ databaseUrl: fx.db.url, env, redis: { prefix } });
    const b = await start({ databaseUrl: fx.db.url, env, redis: { prefix } });
    const bases = [await listen(a), await listen(b)];
    const http = agent();
    const owner = await signUp(a.app);
    const outsider = await signUp(a.app);
    const keyOf = async (user: SignedUp) => {
      const res = await a.app.inject({
        method: 'POST',
        url: '/api/v1/service-keys',
        headers: bearer(user.accessToken),
        payload: { name: 'checks', scopes: ['authz:check', 'projects:read'] },
      });
      expect(res.statusCode).toBe(201);
      return res.json<{ key: string }>().key;
    };
    const ownerKey = await keyOf(owner);
    const outsiderKey = await keyOf(outsider);
    const project = await a.app.inject({
      method: 'POST',
      url: '/api/v1/projects',
      headers: bearer(owner.accessToken),
      payload: { name: 'private-one' },
    });
    const projectId = project.json<{ id: string }>().id;

    const epoch = performance.now();
    const answers: Answer[] = [];
    const wrong: string[] = [];
    let stop = false;
    const loop = async (i: number) => {
      const base = bases[i % 2] as string;
      for (let n = 0; !stop; n++) {
        const which = (i + n) % 4;
        const token = which === 0 ? ownerKey : which === 1 ? outsiderKey : owner.accessToken;
        let a: Answer;
        if (which <= 1) {
          a = await send(
            http,
            base,
            which === 0 ? 'check_owner' : 'check_outsider',
            epoch,
            'POST',
            '/api/v1/authz/check',
            {
              token,
              json: { resource: { type: 'project', id: projectId }, permission: 'view' },
            },
          );
          if (a.status === 200 && (a.json as { allowed: boolean }).allowed !== (which === 0))
            wrong.push(`${a.op} answered ${JSON.stringify(a.json)}`);
        } else if (which === 2) {
          a = await send(http, base, 'me', epoch, 'GET', '/api/v1/auth/me', { token });
          if (a.status === 200 && (a.json as { id: string }).id !== owner.id) wrong.push('me: another user');
        } else {
          // Rate-limited through Redis: the store falls back to in-process counters.
          a = await send(http, base, 'login', epoch, 'POST', '/api/v1/auth/login', {
            json: { email: outsider.email, password: outsider.password },
          });
        }
        answers.push(a);
        await sleep(5);
      }
    };
    const loops = Array.from({ length: 6 }, (_, i) => loop(i));
    const l2Answers = () => answers.filter((x) => x.headers['x-cache'] === 'l2').length;
    await until(async () => (l2Answers() >= 10 ? true : undefined), 15_000, 'L2 serving before the outage');

    await proxy.cut();
    const cutAt = performance.now() - epoch;
    await until(
      async () => (!a.pipeline.cache.l2Available && !b.pipeline.cache.l2Available ? true : undefined),
      5_000,
      'both instances to notice Redis is gone',
    );
    await sleep(Math.max(0, OUTAGE_MS - (performance.now() - epoch - cutAt)));
    await proxy.start();
    const restoredAt = performance.now() - epoch;
    await until(
      async () => {
        const after = answers.filter((x) => x.at > restoredAt && x.headers['x-cache'] === 'l2');
        return new Set(after.map((x) => x.op)).size >= 2 &&
          a.pipeline.cache.l2Available &&
          b.pipeline.cache.l2Available
          ? true
          : undefined;
      },
      20_000,
      'L2 serving again on both instances',
    );
    const l2BackAt = Math.min(
      ...answers.filter((x) => x.at > restoredAt && x.headers['x-cache'] === 'l2').map((x) => x.at + x.ms),
    );
    stop = true;
    await Promise.all(loops);

    const byStatus = countBy(answers, statusOf);
    expect(byStatus).toEqual({ '200': answers.length });
    expect(wrong).toEqual([]);
    const during = answers.filter((x) => x.at > cutAt + 300 && x.at < restoredAt);
    expect(during.length).toBeGreaterThan(0);
    expect(during.filter((x) => x.headers['x-cache'] === 'l2')).toEqual([]);
    console.info(
      `[resilience] Redis cut ${OUTAGE_MS} ms under 6 loops over 2 instances (L1 off): ${answers.length} ` +
        `requests, by status ${JSON.stringify(byStatus)}, by layer ` +
        `${JSON.stringify(
          countBy(
            answers.filter((x) => x.headers['x-cache']),
            (x) => String(x.headers['x-cache']),
          ),
        )}, ` +
        `max latency ${maxMs(answers).toFixed(0)} ms (during the outage ${maxMs(during).toFixed(0)} ms); ` +
        `L2 hits again ${(l2BackAt - restoredAt).toFixed(0)} ms after Redis returned`,
    );
  }, 60_000);
  it('after an outage that hid an invalidation, a new instance does not serve the stale shared fact', async () => {
    const proxy = TcpProxy.forUrl(redisUrl as string);
    await proxy.start();
    closers.push(() => proxy.cut());
    const prefix = `velro-test:res-${randomBytes(4).toString('hex')}:`;
    prefixes.push(prefix);
    const a = await start({
      databaseUrl: fx.db.url,
      env: { REDIS_URL: proxy.wrap(redisUrl as string) },
      redis: { prefix },
    });
    const own = connectRedis(redisUrl as string, () => {});
    closers.push(() => own.quit());
    expect(await waitForRedis(own, 5_000)).toBe(true);
    const owner = await signUp(a.app);
    const outsider = await signUp(a.app);
    const key = await a.app.inject({
      method: 'POST',
      url: '/api/v1/service-keys',
      headers: bearer(outsider.accessToken),
      payload: { name: 'checks', scopes: ['authz:check'] },
    });
    const outsiderKey = key.json<{ key: string }>().key;
    const created = await a.app.inject({
      method: 'POST',
      url: '/api/v1/projects',
      headers: bearer(owner.accessToken),
      payload: { name: 'public-then-private', visibility: 'public' },
    });
    const projectId = created.json<{ id: string }>().id;
    const check = (t: TestApp) =>
      t.app.inject({
        method: 'POST',
        url: '/api/v1/authz/check',
        headers: bearer(outsiderKey),
        payload: { resource: { type: 'project', id: projectId }, permission: 'view' },
      });
    expect((await check(a)).json()).toMatchObject({ allowed: true });
    const projKey = `${prefix}l2:${cacheKey('proj', projectId)}`;
    await until(
      async () => ((await own.get(projKey))?.includes('"public"') ? true : undefined),
      5_000,
      'the public fact in L2',
    );

    await proxy.cut();
    await until(
      async () => (a.pipeline.cache.l2Available ? undefined : true),
      5_000,
      'A to notice Redis is gone',
    );
    const revoke = await a.app.inject({
      method: 'PATCH',
      url: `/api/v1/projects/${projectId}`,
      headers: bearer(owner.accessToken),
      payload: { visibility: 'private' },
    });
    expect(revoke.statusCode).toBe(200);
    const revision = Number(revoke.headers['velro-consistency-token']);
    expect((await check(a)).json()).toMatchObject({ allowed: false });
    await proxy.start();
    await until(
      async () =>
        a.pipeline.cache.l2Available && Number(await own.get(`${prefix}l2:seen`)) >= revision
          ? true
          : undefined,
      15_000,
      'A back on Redis, reporting what it has seen',
    );
    expect((await check(a)).json()).toMatchObject({ allowed: false });

    // A new instance of the same fleet.
    const b = await start({ databaseUrl: fx.db.url, redis: { prefix } });
    const answer = await check(b);
    expect(answer.statusCode).toBe(200);
    expect(answer.json(), `X-Cache ${answer.headers['x-cache']}`).toMatchObject({ allowed: false });
  }, 40_000);
});

describe('a remote provider that never answers', () => {
  it('opens the breaker: generations fail fast and are refunded once; the API stays responsive', async () => {
    const sockets = new Set<Socket>();
    const pending: ServerResponse[] = [];
    let received = 0;
    const hanging: Server = createServer((_req, res) => {
      received += 1;
      pending.push(res); // never answered
    });
    hanging.on('connection', (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    hanging.listen(0, '127.0.0.1');
    await once(hanging, 'listening');
    closers.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => hanging.close(resolve));
    });
    const remote = `http://127.0.0.1:${(hanging.address() as AddressInfo).port}`;

    const t = await start({
      databaseUrl: fx.db.url,
      worker: true,
      env: {
        HTTP_PROVIDER_BASE_URL: remote,
        HTTP_PROVIDER_API_KEY: 'remote-key-0123456789',
        HTTP_PROVIDER_TIMEOUT_MS: '200',
        JOB_RETRY_LIMIT: '1',
        JOB_RETRY_DELAY_SECONDS: '0',
      },
    });
    const modelId = `remote-${randomBytes(3).toString('hex')}`;
    await fx.sql.query(
      `INSERT INTO models (id, name, kind, provider, provider_model, cost_credits, max_width, max_height,
                           default_width, default_height, max_steps, default_steps, sort_order)
       VALUES ($1, 'Remote', 'image', 'http', 'remote-v1', 7, 1024, 1024, 512, 512, 30, 10, 99)`,
      [modelId],
    );
    await t.pipeline.catalogue.load();
    const provider = t.pipeline.providers.http as HttpProvider;
    expect(provider.breakerState()).toBe('closed');

    const user = await signUp(t.app);
    const { rows: before } = await fx.sql.query<{ b: number }>(
      'SELECT credits_balance AS b FROM users WHERE id = $1',
      [user.id],
    );
    const GENERATIONS = 6;
    const started = performance.now();
    const ids: string[] = [];
    for (let i = 0; i < GENERATIONS; i++) {
      const res = await t.app.inject({
        method: 'POST',
        url: '/api/v1/generations',
        headers: bearer(user.accessToken),
        payload: { model_id: modelId, prompt: `a hanging remote ${i}` },
      });
      expect(res.statusCode, res.body).toBe(202);
      ids.push(res.json<{ id: string }>().id);
    }
    let sawOpen = false;
    let apiSlowest = 0;
    const done = await until(
      async () => {
        if (provider.breakerState() === 'open') sawOpen = true;
        // The API does not wait for the provider: reading a generation stays fast meanwhile.
        const readStarted = performance.now();
        const read = await t.app.inject({
          method: 'GET',
          url: `/api/v1/generations/${ids[0]}`,
          headers: bearer(user.accessToken),
        });
        apiSlowest = Math.max(apiSlowest, performance.now() - readStarted);
        expect(read.statusCode).toBe(200);
        const { rows } = await fx.sql.query<{ id: string; status: string; error: string | null }>(
          'SELECT id, status, error FROM generations WHERE id = ANY($1)',
          [ids],
        );
        return rows.every((r) => r.status === 'failed') ? rows : undefined;
      },
      40_000,
      'every generation to fail',
    );
    const failedAfter = performance.now() - started;

    expect(sawOpen || provider.breakerState() === 'open').toBe(true);
    // Without the breaker: GENERATIONS × 2 attempts × 4 calls each, ≥ 200 ms apiece.
    expect(received).toBeLessThan(GENERATIONS * 2 * 4);
    expect(done.some((r) => /breaker open|unavailable/i.test(r.error ?? ''))).toBe(true);
    for (const r of done) expect(r.error).not.toContain('remote-key-0123456789');
    const { rows: ledger } = await fx.sql.query<{ generation_id: string; amount: number; reason: string }>(
      `SELECT generation_id, amount, reason FROM credit_transactions
        WHERE generation_id = ANY($1) ORDER BY id`,
      [ids],
    );
    for (const id of ids) {
      const mine = ledger.filter((l) => l.generation_id === id);
      expect(mine.map((l) => [l.reason, l.amount])).toEqual([
        ['generation_charge', -7],
        ['generation_refund', 7],
      ]);
    }
    const { rows: after } = await fx.sql.query<{ b: number }>(
      'SELECT credits_balance AS b FROM users WHERE id = $1',
      [user.id],
    );
    expect(after[0]?.b).toBe(before[0]?.b);
    console.info(
      `[resilience] hanging provider: ${GENERATIONS} generations failed and refunded within ` +
        `${failedAfter.toFixed(0)} ms; the remote saw ${received} requests (no breaker: ≥ ${GENERATIONS * 2 * 4}); ` +
        `breaker ${provider.breakerState()}; slowest API read meanwhile ${apiSlowest.toFixed(0)} ms`,
    );
  }, 60_000);
});

describe('overload: a blocked event loop', () => {
  it('sheds with 503 overloaded + Retry-After, keeps /health, and never answers 500', async () => {
    const t = await start({ databaseUrl: fx.db.url, env: { OVERLOAD_MAX_EVENT_LOOP_DELAY_MS: '100' } });
    const base = await listen(t);
    const http = agent();
    // Start-up work (module loading, warm-up) lags the loop too: wait for the first sample to clear.
    await until(
      async () =>
        (await t.app.inject({ method: 'GET', url: '/api/v1/models' })).statusCode === 200 ? true : undefined,
      10_000,
      'the fresh instance to admit requests',
    );
    const user = await signUp(t.app);
    const epoch = performance.now();
    const answers: Answer[] = [];
    let stop = false;
    const loop = async (i: number) => {
      for (let n = 0; !stop; n++) {
        const which = (i + n) % 3;
        const a =
          which === 0
            ? await send(http, base, 'health', epoch, 'GET', '/health')
            : which === 1
              ? await send(http, base, 'models', epoch, 'GET', '/api/v1/models')
              : await send(http, base, 'me', epoch, 'GET', '/api/v1/auth/me', { token: user.accessToken });
        answers.push(a);
        await sleep(2);
      }
    };
    const loops = Array.from({ length: 8 }, (_, i) => loop(i));
    await until(async () => (answers.length >= 50 ? true : undefined), 10_000, 'traffic flowing');

    // A run of 300 ms busy loops, each in a setImmediate: requests arrive while the loop is stuck.
    const BLOCK_MS = 300;
    const work = randomBytes(4096);
    const blockStart = performance.now() - epoch;
    for (let i = 0; i < 6; i++) {
      await new Promise<void>((resolve) =>
        setImmediate(() => {
          // CPU-bound work, as a heavy handler would do it.
          const end = performance.now() + BLOCK_MS;
          while (performance.now() < end) createHash('sha256').update(work).digest();
          resolve();
        }),
      );
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    const blockEnd = performance.now() - epoch;
    // Shedding stops with the lag (on a busy host, lag of its own may still shed a request or two).
    await until(
      async () => {
        const recent = answers.filter((a) => a.at > blockEnd && a.op !== 'health' && a.status === 200);
        return recent.length >= 20 ? true : undefined;
      },
      10_000,
      'requests admitted again',
    );
    stop = true;
    await Promise.all(loops);

    const byStatus = countBy(answers, statusOf);
    const shed = answers.filter((a) => a.status === 503);
    expect(shed.length).toBeGreaterThan(0);
    for (const a of shed) {
      expect(a.code).toBe('overloaded');
      expect(a.retryAfter).toMatch(/^\d+$/);
    }
    expect(Object.keys(byStatus).filter((s) => s !== '200' && s !== '503')).toEqual([]);
    expect(answers.filter((a) => a.op === 'health' && a.status !== 200)).toEqual([]);
    // Admitted work is not queued behind the backlog: bounded by a few blocks, not by the storm (6 blocks).
    const admitted = answers.filter((a) => a.status === 200 && a.op !== 'health');
    expect(maxMs(admitted)).toBeLessThan(BLOCK_MS * 2 + 1_200);
    const stormAdmitted = admitted.filter((a) => a.at >= blockStart && a.at <= blockEnd);
    console.info(
      `[resilience] overload: 6 × ${BLOCK_MS} ms blocks over ${(blockEnd - blockStart).toFixed(0)} ms: ` +
        `${answers.length} requests, by status ${JSON.stringify(byStatus)} (/health ` +
        `${JSON.stringify(
          countBy(
            answers.filter((a) => a.op === 'health'),
            statusOf,
          ),
        )}); admitted during the storm ` +
        `${stormAdmitted.length}, max latency of admitted ${maxMs(admitted).toFixed(0)} ms, of shed ` +
        `${maxMs(shed).toFixed(0)} ms`,
    );
  }, 40_000);
});
