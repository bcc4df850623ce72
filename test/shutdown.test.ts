/**
 * SPEC §8, SIGTERM: stop accepting, finish in-flight requests and jobs (or hand jobs back), close
 * pools, exit. The service is a real process (`node --import tsx src/main.ts`, as `npm start` runs
 * it) with its in-process worker; the test drives keep-alive traffic at it, sends SIGTERM, and
 * accounts for every request, the running generation and the exit.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { Agent, type Dispatcher, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { createTestDatabase, startTestApp, TEST_ENV, type TestApp } from './helpers/app.js';

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
// A tsx child starting while the suite, a fresh-clone run and a benchmark share two cores took over 30 s.
const START_TIMEOUT_MS = 90_000;

/** Shared by the server process and the rescuing worker (the queue policy is per database). */
const PIPELINE: Record<string, string> = {
  LOCAL_PROVIDER_STEP_DELAY_MS: '150',
  WORKER_CONCURRENCY: '1',
  WORKER_HEARTBEAT_MS: '200',
  WORKER_STALE_AFTER_MS: '2000',
  JOB_RETRY_DELAY_SECONDS: '0',
};

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function until<T>(
  what: string,
  withinMs: number,
  probe: () => Promise<T | undefined>,
  last = () => '',
) {
  const deadline = performance.now() + withinMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`${what}: not within ${withinMs} ms. ${last()}`);
    await sleep(25);
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

interface Server {
  child: ChildProcess;
  base: string;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

async function startServer(
  databaseUrl: string,
  dataDir: string,
  env: Record<string, string>,
): Promise<Server> {
  const port = await freePort();
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    ...TEST_ENV,
    ...PIPELINE,
    ...env,
    NODE_ENV: 'test',
    LOG_LEVEL: 'warn',
    HOST: '127.0.0.1',
    PORT: String(port),
    DATABASE_URL: databaseUrl,
    DATA_DIR: dataDir,
    WORKER_ENABLED: 'true',
  };
  delete childEnv.REDIS_URL;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: REPO_ROOT,
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-6_000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, at: performance.now() })),
  );
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await Promise.race([exited, sleep(5_000)]);
  });
  const base = `http://127.0.0.1:${port}`;
  await until(
    'the server to be ready',
    START_TIMEOUT_MS,
    async () => {
      if (child.exitCode !== null) throw new Error(`the server exited early:\n${output}`);
      const res = await fetch(`${base}/ready`).catch(() => null);
      return res?.status === 200 ? true : undefined;
    },
    () => output,
  );
  return { child, base, output: () => output, exited };
}

interface Answer {
  op: string;
  /** performance.now() when sent. */
  at: number;
  ms: number;
  status: number;
  error: string | null;
  json: unknown;
  headers: Record<string, string | string[] | undefined>;
  /** The project name a create asked for. */
  name?: string;
}

function errorCode(error: unknown): string {
  const e = error as { code?: unknown; cause?: { code?: unknown } };
  if (typeof e?.code === 'string') return e.code;
  if (typeof e?.cause?.code === 'string') return e.cause.code;
  return error instanceof Error ? error.name : 'unknown';
}

async function send(
  dispatcher: Dispatcher,
  base: string,
  op: string,
  method: Dispatcher.HttpMethod,
  path: string,
  options: { token?: string; json?: unknown } = {},
): Promise<Answer> {
  const started = performance.now();
  const base_ = { op, at: started, status: 0, error: null, json: undefined, headers: {} };
  try {
    const res = await request(`${base}${path}`, {
      method,
      dispatcher,
      headers: {
        ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        ...(options.json === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: options.json === undefined ? null : JSON.stringify(options.json),
      headersTimeout: 20_000,
      bodyTimeout: 20_000,
    });
    const text = await res.body.text();
    let json: unknown = text;
    try {
      json = JSON.parse(text);
    } catch {}
    return { ...base_, ms: performance.now() - started, status: res.statusCode, json, headers: res.headers };
  } catch (error) {
    return { ...base_, ms: performance.now() - started, error: errorCode(error) };
  }
}

const countBy = <T>(items: T[], key: (item: T) => string): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return out;
};
const outcome = (a: Answer) => (a.status === 0 ? `net:${a.error}` : String(a.status));
const ok = (a: Answer) => a.status >= 200 && a.status < 300;

async function setting() {
  const db = await createTestDatabase();
  cleanups.push(() => db.drop());
  const sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  cleanups.push(() => sql.end());
  const dataDir = await mkdtemp(join(tmpdir(), 'velro-shutdown-'));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  const http = new Agent({ connections: 16, keepAliveTimeout: 30_000, pipelining: 1 });
  cleanups.push(() => http.close());
  const generation = async (id: string) =>
    (
      await sql.query<{ status: string; progress: number; attempt: number; worker_id: string | null }>(
        'SELECT status, progress, attempt, worker_id FROM generations WHERE id = $1',
        [id],
      )
    ).rows[0];
  /** Project inserts named `slow-…` spend `seconds` in pg_sleep: a request still running at the signal. */
  const slowInserts = async (seconds: number) => {
    await sql.query(`
      CREATE OR REPLACE FUNCTION shutdown_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.name LIKE 'slow-%' THEN PERFORM pg_sleep(${seconds}); END IF;
        RETURN NEW;
      END $$`);
    await sql.query(`CREATE TRIGGER shutdown_slow BEFORE INSERT ON projects
                     FOR EACH ROW EXECUTE FUNCTION shutdown_slow_insert()`);
  };
  const sleeping = async () => {
    const { rows } = await sql.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event = 'PgSleep'`,
    );
    return rows[0]?.n ?? 0;
  };
  return { db, sql, dataDir, http, generation, slowInserts, sleeping };
}

async function register(http: Dispatcher, base: string) {
  const email = `shutdown-${randomBytes(4).toString('hex')}@example.com`;
  const res = await send(http, base, 'register', 'POST', '/api/v1/auth/register', {
    json: { email, password: 'correct horse battery' },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(201);
  const body = res.json as { access_token: string; user: { id: string } };
  return { id: body.user.id, token: body.access_token };
}

describe('SIGTERM under load', () => {
  it('finishes accepted requests, hands the running generation back, and exits 0 within the grace period', async () => {
    const s = await setting();
    const GRACE_MS = 10_000;
    const server = await startServer(s.db.url, s.dataDir, { SHUTDOWN_GRACE_MS: String(GRACE_MS) });
    const workerPrefix = `${hostname()}:${server.child.pid}:`;
    const user = await register(s.http, server.base);

    const created = await send(s.http, server.base, 'create', 'POST', '/api/v1/generations', {
      token: user.token,
      json: { model_id: 'velro-studio', prompt: 'a lighthouse at dusk', parameters: { steps: 40 } },
    });
    expect(created.status, JSON.stringify(created.json)).toBe(202);
    const generationId = (created.json as { id: string }).id;
    await until('the generation to run in the server process', 20_000, async () => {
      const row = await s.generation(generationId);
      return row?.status === 'processing' && row.progress > 0 && row.worker_id?.startsWith(workerPrefix)
        ? row
        : undefined;
    });

    await s.slowInserts(1.5);
    let signalAt = Number.POSITIVE_INFINITY;

    const answers: Answer[] = [];
    const acked: string[] = [];
    let gone = false;
    const loop = async (i: number) => {
      for (let n = 0; !gone; n++) {
        const which = (i + n) % 4;
        const a =
          which === 0
            ? await send(s.http, server.base, 'me', 'GET', '/api/v1/auth/me', { token: user.token })
            : which === 1
              ? await send(s.http, server.base, 'models', 'GET', '/api/v1/models')
              : which === 2
                ? {
                    ...(await send(s.http, server.base, 'create_project', 'POST', '/api/v1/projects', {
                      token: user.token,
                      json: { name: `p-${i}-${n}` },
                    })),
                    name: `p-${i}-${n}`,
                  }
                : await send(s.http, server.base, 'list', 'GET', '/api/v1/projects?limit=5', {
                    token: user.token,
                  });
        answers.push(a);
        if (a.op === 'create_project' && a.status === 201) acked.push((a.json as { id: string }).id);
        // Once nothing listens any more, this loop is done.
        if (a.error === 'ECONNREFUSED') return;
        await sleep(2);
      }
    };
    const loops = Array.from({ length: 6 }, (_, i) => loop(i));
    await until('traffic flowing', 15_000, async () => (answers.filter(ok).length >= 40 ? true : undefined));
    // A request that is still in the database when the signal arrives.
    const slow = send(s.http, server.base, 'slow_create', 'POST', '/api/v1/projects', {
      token: user.token,
      json: { name: 'slow-in-flight' },
    });
    await until('the slow insert to be sleeping', 10_000, async () =>
      (await s.sleeping()) > 0 ? true : undefined,
    );

    signalAt = performance.now();
    server.child.kill('SIGTERM');
    const slowAnswer = await slow;
    await Promise.race([Promise.all(loops), server.exited]);
    gone = true;
    await Promise.all(loops);
    // The clients go away once refused, as a load balancer does with a deregistered instance. (While a
    // client keeps an idle keep-alive connection the process does not exit: see the BUG below.)
    await s.http.close();
    const exit = await Promise.race([server.exited, sleep(GRACE_MS + 5_000).then(() => null)]);

    expect(exit, server.output()).not.toBeNull();
    expect({ code: exit?.code, signal: exit?.signal }, server.output()).toEqual({ code: 0, signal: null });
    const exitMs = (exit?.at ?? 0) - signalAt;
    expect(exitMs).toBeLessThan(GRACE_MS);

    // The request in flight at the signal completed, and its row is there.
    expect(slowAnswer.at).toBeLessThan(signalAt);
    expect(slowAnswer.at + slowAnswer.ms).toBeGreaterThan(signalAt);
    expect(slowAnswer.status, JSON.stringify(slowAnswer)).toBe(201);
    const { rows: slowRows } = await s.sql.query('SELECT 1 FROM projects WHERE name = $1', [
      'slow-in-flight',
    ]);
    expect(slowRows).toHaveLength(1);
    // Every request sent before the signal was answered with success.
    const before = answers.filter((a) => a.at < signalAt);
    const after = answers.filter((a) => a.at >= signalAt);
    const when = (a: Answer) => `${a.op} ${outcome(a)} at ${(a.at - signalAt).toFixed(0)} ms`;
    expect(before.filter((a) => !ok(a)).map(when)).toEqual([]);
    // After it: answered (success, or 503 while closing); refused because nothing listens any more; or
    // reset because it was sent on an idle keep-alive connection just as the server closed it (the
    // race every HTTP/1.1 client must expect and retry: such a request was never read).
    const refused = (a: Answer) =>
      a.error === 'ECONNREFUSED' || a.error === 'ECONNRESET' || a.error === 'UND_ERR_SOCKET';
    const allowedAfter = (a: Answer) => ok(a) || a.status === 503 || refused(a);
    expect(after.filter((a) => !allowedAfter(a)).map(when)).toEqual([]);
    // A create that was not answered was not half-done either: none of them has a row.
    const unanswered = after.filter((a) => a.op === 'create_project' && !ok(a)).map((a) => a.name);
    const { rows: ghosts } = await s.sql.query('SELECT name FROM projects WHERE name = ANY($1)', [
      unanswered,
    ]);
    expect(ghosts).toEqual([]);
    const { rows: projects } = await s.sql.query<{ id: string }>(
      'SELECT id FROM projects WHERE id = ANY($1)',
      [acked],
    );
    expect(projects).toHaveLength(acked.length);

    // The running generation went back to the queue, untouched by a failure count.
    expect(await s.generation(generationId)).toMatchObject({
      status: 'pending',
      worker_id: null,
      attempt: 1,
    });

    // Another worker takes it and completes it: one charge, no refund, its media.
    const rescuer: TestApp = await startTestApp({
      databaseUrl: s.db.url,
      dataDir: s.dataDir,
      worker: true,
      env: { ...PIPELINE, LOCAL_PROVIDER_STEP_DELAY_MS: '0' },
    });
    cleanups.push(() => rescuer.close());
    const done = await until('the generation to complete on another worker', 30_000, async () => {
      const row = await s.generation(generationId);
      return row?.status === 'completed' ? row : undefined;
    });
    expect(done).toMatchObject({ status: 'completed', worker_id: rescuer.worker?.id, attempt: 2 });
    const { rows: ledger } = await s.sql.query<{ reason: string; amount: number }>(
      'SELECT reason, amount FROM credit_transactions WHERE generation_id = $1 ORDER BY id',
      [generationId],
    );
    expect(ledger.map((l) => l.reason)).toEqual(['generation_charge']);
    const { rows: media } = await s.sql.query('SELECT 1 FROM media WHERE generation_id = $1', [generationId]);
    expect(media).toHaveLength(1);

    const latency = Math.max(...answers.filter(ok).map((a) => a.ms));
    console.info(
      `[shutdown] SIGTERM under 6 keep-alive loops: ${answers.length} requests (${before.length} before the ` +
        `signal: ${JSON.stringify(countBy(before, outcome))}; ${after.length} after: ` +
        `${JSON.stringify(countBy(after, outcome))}); slowest success ${latency.toFixed(0)} ms; the in-flight ` +
        `insert answered ${slowAnswer.status} after ${slowAnswer.ms.toFixed(0)} ms; exit code ${exit?.code} ` +
        `${exitMs.toFixed(0)} ms after the signal (grace ${GRACE_MS} ms); project creates acknowledged ` +
        `${acked.length}, found ${projects.length}`,
    );
  }, 180_000);

  it('exits 0 within the grace period while a client keeps its keep-alive connection open', async () => {
    const s = await setting();
    const GRACE_MS = 3_000;
    const server = await startServer(s.db.url, s.dataDir, { SHUTDOWN_GRACE_MS: String(GRACE_MS) });
    const user = await register(s.http, server.base);
    await s.slowInserts(1);
    let signalAt = Number.POSITIVE_INFINITY;
    const slow = send(s.http, server.base, 'slow_create', 'POST', '/api/v1/projects', {
      token: user.token,
      json: { name: 'slow-in-flight' },
    });
    await until('the insert to be sleeping', 10_000, async () =>
      (await s.sleeping()) > 0 ? true : undefined,
    );
    signalAt = performance.now();
    server.child.kill('SIGTERM');
    expect((await slow).status).toBe(201);
    const exit = await Promise.race([server.exited, sleep(GRACE_MS + 5_000).then(() => null)]);
    expect(exit?.code, server.output()).toBe(0);
    expect((exit?.at ?? Number.POSITIVE_INFINITY) - signalAt).toBeLessThan(GRACE_MS);
  }, 120_000);

  it('ends open event streams and exits 0 within the grace period', async () => {
    const s = await setting();
    const GRACE_MS = 3_000;
    const server = await startServer(s.db.url, s.dataDir, { SHUTDOWN_GRACE_MS: String(GRACE_MS) });
    const user = await register(s.http, server.base);
    const created = await send(s.http, server.base, 'create', 'POST', '/api/v1/generations', {
      token: user.token,
      json: { model_id: 'velro-studio', prompt: 'a lighthouse at dusk', parameters: { steps: 40 } },
    });
    const generationId = (created.json as { id: string }).id;
    await until('the generation to run', 20_000, async () =>
      (await s.generation(generationId))?.status === 'processing' ? true : undefined,
    );
    const streamAgent = new Agent({ connections: 1 });
    cleanups.push(() => streamAgent.destroy());
    const stream = await request(`${server.base}/api/v1/generations/${generationId}/events`, {
      dispatcher: streamAgent,
      headers: { authorization: `Bearer ${user.token}`, accept: 'text/event-stream' },
    });
    expect(stream.statusCode).toBe(200);
    let text = '';
    const ended = (async () => {
      try {
        for await (const chunk of stream.body) text += chunk.toString();
        return 'ended';
      } catch (error) {
        return `broken: ${errorCode(error)}`;
      }
    })();
    await until('the first event', 10_000, async () => (text.includes('event: status') ? true : undefined));
    const signalAt = performance.now();
    server.child.kill('SIGTERM');
    const exit = await Promise.race([server.exited, sleep(GRACE_MS + 5_000).then(() => null)]);
    expect(exit?.code, server.output()).toBe(0);
    expect((exit?.at ?? Number.POSITIVE_INFINITY) - signalAt).toBeLessThan(GRACE_MS);
    expect(await ended).toBe('ended');
  }, 120_000);
});
