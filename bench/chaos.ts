import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Agent, type Dispatcher, request } from 'undici';
import { connectRedis, waitForRedis } from '../src/platform/redis.js';
import { TcpProxy } from '../test/helpers/tcp-proxy.js';
import { provisionDatabase } from './lib/world.js';

/**
 * `npm run chaos [-- --duration 60 --loops 10 --grace 10000 --worker in-process|separate]`
 *
 * The long version of the resilience tests, against a real server process (`src/main.ts`, as
 * `npm start` runs it, with its in-process worker): concurrent request loops (writes and reads over
 * keep-alive) for `--duration` seconds while PostgreSQL and Redis, each behind a TCP relay, are cut
 * and frozen several times, the process is stopped and continued (SIGSTOP: a stuck event loop),
 * and finally SIGTERM arrives under load. Then every acknowledged write is looked up in the
 * database. Prints requests sent, answers by status, latencies, recovery times and writes
 * acknowledged vs found; exits 1 when an invariant broke (a 5xx other than 503, a request without
 * an answer before the signal, a hang, a lost acknowledged write, an unclean exit).
 *
 * A supervisor restarts a process that dies (as systemd or Kubernetes would) and reports each death.
 * `--worker separate` runs the generation worker as its own process (`src/worker.ts`, the API with
 * WORKER_ENABLED=false) instead of inside the service (the default, as `npm start` runs it).
 *
 * PostgreSQL: DATABASE_URL's server (a fresh database in it, dropped afterwards) or an embedded one.
 * Redis: REDIS_URL (under a key prefix of its own), or a `redis-server` started here; without
 * either, the Redis outages are skipped.
 */

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const STATEMENT_TIMEOUT_MS = 1_000;
const CONNECT_TIMEOUT_MS = 1_000;
/** Any answer slower than this is a hang (statement timeout, its client guard, connect, slack). */
const HANG_BOUND_MS = STATEMENT_TIMEOUT_MS + 1_000 + CONNECT_TIMEOUT_MS + 3_000;

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '60' },
    loops: { type: 'string', default: '10' },
    grace: { type: 'string', default: '10000' },
    worker: { type: 'string', default: 'in-process' },
  },
});
if (args.worker !== 'in-process' && args.worker !== 'separate') {
  throw new Error(`--worker must be in-process or separate, got ${args.worker}`);
}
const SEPARATE_WORKER = args.worker === 'separate';
const DURATION_MS = positive('duration', args.duration) * 1000;
const LOOPS = positive('loops', args.loops);
const GRACE_MS = positive('grace', args.grace);

function positive(name: string, raw: string | undefined): number {
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0)
    throw new Error(`--${name} must be a positive number, got ${raw}`);
  return value;
}

const log = (message: string) => process.stderr.write(`[chaos] ${message}\n`);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const cleanups: (() => Promise<unknown>)[] = [];

async function cleanUp(): Promise<void> {
  for (const step of cleanups.splice(0).reverse()) {
    try {
      await step();
    } catch (error) {
      log(`cleanup step failed: ${error instanceof Error ? error.message : String(error)}`);
    }
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

async function until<T>(what: string, withinMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = performance.now() + withinMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`${what}: not within ${withinMs} ms`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------------
// The servers under the service
// ---------------------------------------------------------------------------------------------

async function openDatabase(): Promise<{ url: string; where: string }> {
  const { url, kind } = await provisionDatabase(
    'velro_chaos',
    () => {},
    (step) => cleanups.push(step),
  );
  return { url, where: kind === 'embedded' ? 'embedded PostgreSQL' : "a database on DATABASE_URL's server" };
}

async function openRedis(prefix: string): Promise<{ url: string; where: string } | null> {
  const given = process.env.REDIS_URL;
  if (given) {
    cleanups.push(async () => {
      const redis = connectRedis(given, () => {});
      if (await waitForRedis(redis, 3_000)) {
        const keys = await redis.keys(`${prefix}*`);
        if (keys.length > 0) await redis.del(...keys);
      }
      redis.disconnect();
    });
    return { url: given, where: 'REDIS_URL' };
  }
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: 'ignore',
    },
  );
  const failed = await Promise.race([once(child, 'error').then(() => true), sleep(300).then(() => false)]);
  if (failed || child.exitCode !== null) return null;
  cleanups.push(async () => {
    child.kill('SIGTERM');
    await Promise.race([once(child, 'exit'), sleep(3_000)]);
  });
  const url = `redis://127.0.0.1:${port}`;
  const probe = connectRedis(url, () => {});
  const ready = await waitForRedis(probe, 5_000);
  probe.disconnect();
  return ready ? { url, where: `redis-server started here on port ${port}` } : null;
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  at: number;
}

interface Proc {
  child: ChildProcess;
  tail: () => string;
  /** The first fatal log line (close-with-grace's "stopping after an unexpected error", or level 60). */
  fatal: () => string | null;
  exited: Promise<Exit>;
}

interface Settings {
  port: number;
  dataDir: string;
  databaseUrl: string;
  redisUrl: string | null;
  prefix: string;
  secrets: { jwt: string; media: string };
}

/** The environment both processes share (the queue and pipeline settings are per database). */
function environment(settings: Settings, workerEnabled: boolean): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    HOST: '127.0.0.1',
    PORT: String(settings.port),
    DATA_DIR: settings.dataDir,
    DATABASE_URL: settings.databaseUrl,
    REDIS_KEY_PREFIX: settings.prefix,
    JWT_SECRET: settings.secrets.jwt,
    MEDIA_SIGNING_SECRET: settings.secrets.media,
    STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
    DB_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
    LOGIN_RATE_LIMIT_PER_IP: '1000000',
    LOGIN_RATE_LIMIT_PER_ACCOUNT: '1000000',
    REGISTER_RATE_LIMIT_PER_IP: '1000000',
    GENERATION_RATE_LIMIT_PER_MINUTE: '1000000',
    MEMBER_ADDS_BY_EMAIL_PER_HOUR: '1000000',
    USER_RATE_LIMIT_PER_MINUTE: '1000000000',
    ACCESS_TOKEN_TTL_SECONDS: '86400',
    WORKER_ENABLED: String(workerEnabled),
    WORKER_CONCURRENCY: '2',
    WORKER_HEARTBEAT_MS: '500',
    WORKER_STALE_AFTER_MS: '5000',
    JOB_RETRY_DELAY_SECONDS: '0',
    LOCAL_PROVIDER_STEP_DELAY_MS: '20',
    OVERLOAD_MAX_EVENT_LOOP_DELAY_MS: '250',
    SHUTDOWN_GRACE_MS: String(GRACE_MS),
    CACHE_WARM_INTERVAL_SECONDS: '0',
  };
  if (settings.redisUrl) env.REDIS_URL = settings.redisUrl;
  else delete env.REDIS_URL;
  return env;
}

function spawnProcess(script: string, env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src', script)], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let partial = '';
  let fatal: string | null = null;
  const collect = (chunk: Buffer) => {
    const text = chunk.toString();
    output = (output + text).slice(-8_000);
    if (fatal) return;
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    fatal =
      lines.find((line) =>
        /^\{"level":60,|"msg":"(worker )?stopping after an unexpected error"/.test(line),
      ) ?? null;
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<Exit>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, at: now() })),
  );
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    }
    await Promise.race([exited, sleep(5_000)]);
  });
  return { child, tail: () => output.trim(), fatal: () => fatal, exited };
}

const alive = (proc: Proc) => proc.child.exitCode === null && proc.child.signalCode === null;

interface Crash {
  at: number;
  code: number | null;
  cause: string;
  restartedAfterMs: number | null;
}

/**
 * Keeps one process running, as systemd or Kubernetes would: a process that dies is started again
 * (with a short back-off while it cannot start: the database may be why it died). Every death is
 * recorded: it is an invariant broken, whatever the cause.
 */
class Supervised {
  current!: Proc;
  readonly crashes: Crash[] = [];
  private restarting = false;
  private stopping = false;
  private watching: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    private readonly starter: () => Promise<Proc>,
  ) {}

  async start(): Promise<void> {
    this.current = await this.starter();
    this.watching = this.watch();
  }

  private async watch(): Promise<void> {
    for (;;) {
      const exit = await this.current.exited;
      if (this.stopping) return;
      const crash: Crash = {
        at: exit.at,
        code: exit.code,
        cause: causeOf(this.current.fatal() ?? this.current.tail()),
        restartedAfterMs: null,
      };
      this.crashes.push(crash);
      log(`${this.name} died (exit code ${exit.code}) at ${(crash.at / 1000).toFixed(1)} s: ${crash.cause}`);
      this.restarting = true;
      while (!this.stopping) {
        try {
          this.current = await this.starter();
          crash.restartedAfterMs = now() - crash.at;
          log(`${this.name} restarted, ${crash.restartedAfterMs.toFixed(0)} ms after it died`);
          break;
        } catch {
          await sleep(500);
        }
      }
      this.restarting = false;
    }
  }

  /** SIGTERM to a live process (after an ongoing restart); its exit, or null when it outlives the grace. */
  async stop(): Promise<{ exit: Exit | null; signalAt: number }> {
    await until(`${this.name} alive to be stopped`, 120_000, async () =>
      !this.restarting && alive(this.current) ? true : undefined,
    );
    this.stopping = true;
    const signalAt = now();
    this.current.child.kill('SIGTERM');
    const exit = await Promise.race([this.current.exited, sleep(GRACE_MS + 5_000).then(() => null)]);
    await this.watching;
    return { exit, signalAt };
  }
}

async function startApi(settings: Settings): Promise<Proc> {
  const proc = spawnProcess('main.ts', environment(settings, !SEPARATE_WORKER));
  const base = `http://127.0.0.1:${settings.port}`;
  try {
    await until('the service to be ready', 60_000, async () => {
      if (!alive(proc)) throw new Error(`the service exited early:\n${proc.tail()}`);
      const res = await fetch(`${base}/ready`, { signal: AbortSignal.timeout(1_000) }).catch(() => null);
      return res?.status === 200 ? true : undefined;
    });
  } catch (error) {
    if (alive(proc)) proc.child.kill('SIGKILL');
    throw error;
  }
  return proc;
}

async function startWorker(settings: Settings): Promise<Proc> {
  const proc = spawnProcess('worker.ts', environment(settings, true));
  // No port to poll: started is alive after its start-up (it exits at once when it cannot connect).
  await Promise.race([proc.exited, sleep(3_000)]);
  if (!alive(proc)) throw new Error(`the worker exited early:\n${proc.tail()}`);
  return proc;
}

/** The fatal line of a dead service's log: its message, the error and the frame that threw. */
function causeOf(tail: string): string {
  const lines = tail.split('\n').filter((l) => l.startsWith('{'));
  for (const line of lines.reverse()) {
    try {
      const entry = JSON.parse(line) as {
        level?: number;
        msg?: string;
        err?: { message?: string; stack?: string };
      };
      if ((entry.level ?? 0) < 50 || !entry.err) continue;
      const frames = (entry.err.stack ?? '').split('\n').map((f) => f.trim());
      // The frame that matters: whoever called into the database, not the driver itself.
      const frame =
        frames.find((f) => /pg-boss\/src\/manager/.test(f)) ??
        frames.find((f) => /\/src\//.test(f) && !f.includes('node_modules')) ??
        frames.find((f) => f.startsWith('at ') && !/node_modules\/pg(-pool)?\//.test(f));
      return `${entry.msg}: ${entry.err.message}${frame ? ` (${frame})` : ''}`;
    } catch {}
  }
  return tail.split('\n').at(-1)?.slice(0, 200) ?? '(no output)';
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

interface Answer {
  op: string;
  at: number;
  ms: number;
  status: number;
  error: string | null;
  code: string | undefined;
  json: unknown;
}

function errorCode(error: unknown): string {
  const e = error as { code?: unknown; cause?: { code?: unknown } };
  if (typeof e?.code === 'string') return e.code;
  if (typeof e?.cause?.code === 'string') return e.cause.code;
  return error instanceof Error ? error.name : 'unknown';
}

let epoch = performance.now();
const now = () => performance.now() - epoch;

async function send(
  http: Dispatcher,
  base: string,
  op: string,
  method: Dispatcher.HttpMethod,
  path: string,
  options: { token?: string; json?: unknown } = {},
): Promise<Answer> {
  const at = now();
  const started = performance.now();
  try {
    const res = await request(`${base}${path}`, {
      method,
      dispatcher: http,
      headers: {
        ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        ...(options.json === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: options.json === undefined ? null : JSON.stringify(options.json),
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
    const text = await res.body.text();
    let json: unknown = text;
    try {
      json = JSON.parse(text);
    } catch {}
    const code =
      (json as { error?: { code?: string } } | null)?.error?.code ??
      (res.statusCode === 503 && (json as { error?: unknown } | null)?.error === 'Service Unavailable'
        ? 'closing'
        : undefined);
    return { op, at, ms: performance.now() - started, status: res.statusCode, error: null, code, json };
  } catch (error) {
    return {
      op,
      at,
      ms: performance.now() - started,
      status: 0,
      error: errorCode(error),
      code: undefined,
      json: null,
    };
  }
}

interface User {
  id: string;
  token: string;
}

interface Ledger {
  answers: Answer[];
  projects: Map<string, string>; // id → name, acknowledged
  attemptedProjects: Set<string>;
  generations: Set<string>;
  profiles: Map<string, { value: string; acked: boolean }[]>;
  wrong: string[];
}

async function loop(
  i: number,
  user: User,
  http: Dispatcher,
  base: string,
  ledger: Ledger,
  stop: () => boolean,
) {
  const profile: { value: string; acked: boolean }[] = [];
  ledger.profiles.set(user.id, profile);
  let lastProject: string | null = null;
  let lastGeneration: string | null = null;
  const as = async (op: string, method: Dispatcher.HttpMethod, path: string, json?: unknown) => {
    const a = await send(http, base, op, method, path, { token: user.token, json });
    ledger.answers.push(a);
    return a;
  };
  for (let n = 0; !stop(); n++) {
    let a: Answer;
    switch (n % 10) {
      case 0: {
        const name = `c${i}-${n}-${randomBytes(3).toString('hex')}`;
        ledger.attemptedProjects.add(name);
        a = await as('create_project', 'POST', '/api/v1/projects', { name });
        if (a.status === 201) {
          lastProject = (a.json as { id: string }).id;
          ledger.projects.set(lastProject, name);
        }
        break;
      }
      case 1:
        a = await as('me', 'GET', '/api/v1/auth/me');
        if (a.status === 200 && (a.json as { id: string }).id !== user.id)
          ledger.wrong.push('me: another user');
        break;
      case 2:
        a = lastProject
          ? await as('read_project', 'GET', `/api/v1/projects/${lastProject}`)
          : await as('list_projects', 'GET', '/api/v1/projects?limit=5');
        break;
      case 3: {
        const value = `n${i}-${n}`;
        a = await as('update_profile', 'PATCH', '/api/v1/auth/profile', { display_name: value });
        profile.push({ value, acked: a.status === 200 });
        break;
      }
      case 4:
        a = lastProject
          ? await as('authz_check', 'POST', '/api/v1/authz/check', {
              resource: { type: 'project', id: lastProject },
              permission: 'manage',
            })
          : await as('models', 'GET', '/api/v1/models');
        if (a.op === 'authz_check' && a.status === 200 && (a.json as { allowed: boolean }).allowed !== true)
          ledger.wrong.push('check: the owner was denied');
        break;
      case 5:
        a = await as('list_projects', 'GET', '/api/v1/projects?limit=5');
        break;
      case 6:
        a = await as('models', 'GET', '/api/v1/models');
        break;
      case 7:
        if (n % 20 === 7) {
          a = await as('create_generation', 'POST', '/api/v1/generations', {
            model_id: 'velro-sketch',
            prompt: `chaos ${i} ${n}`,
            parameters: { width: 64, height: 64, steps: 4 },
          });
          if (a.status === 202) {
            lastGeneration = (a.json as { id: string }).id;
            ledger.generations.add(lastGeneration);
          }
        } else a = await as('balance', 'GET', '/api/v1/credits/balance');
        break;
      case 8:
        a = lastGeneration
          ? await as('read_generation', 'GET', `/api/v1/generations/${lastGeneration}`)
          : await as('me', 'GET', '/api/v1/auth/me');
        break;
      default:
        a = await send(http, base, 'health', 'GET', '/health');
        ledger.answers.push(a);
    }
    if (a.error === 'ECONNREFUSED' && stop()) return;
    // Pacing: instant 503s must not turn a loop into a busy loop.
    await sleep(a.status === 0 || a.status >= 500 ? 20 : 3);
  }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

interface Phase {
  name: string;
  start: number;
  end: number;
  readyDuring: number | null;
}

async function main(): Promise<void> {
  const prefix = `velro-chaos:${randomBytes(4).toString('hex')}:`;
  log('starting PostgreSQL and Redis');
  const database = await openDatabase();
  const redis = await openRedis(prefix);
  const pgRelay = TcpProxy.forUrl(database.url);
  await pgRelay.start();
  cleanups.push(() => pgRelay.cut());
  const redisRelay = redis ? TcpProxy.forUrl(redis.url) : null;
  await redisRelay?.start();
  if (redisRelay) cleanups.push(() => redisRelay.cut());
  log(`PostgreSQL: ${database.where}; Redis: ${redis?.where ?? 'none (Redis outages skipped)'}`);

  const dataDir = await mkdtemp(join(tmpdir(), 'velro-chaos-data-'));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  const settings: Settings = {
    port: await freePort(),
    dataDir,
    databaseUrl: pgRelay.wrap(database.url),
    redisUrl: redisRelay && redis ? redisRelay.wrap(redis.url) : null,
    prefix,
    secrets: { jwt: randomBytes(36).toString('base64url'), media: randomBytes(36).toString('base64url') },
  };
  const base = `http://127.0.0.1:${settings.port}`;
  const api = new Supervised('the service', () => startApi(settings));
  await api.start();
  const worker = SEPARATE_WORKER ? new Supervised('the worker', () => startWorker(settings)) : null;
  await worker?.start();
  log(
    `service (pid ${api.current.child.pid}) ready at ${base}; worker ` +
      `${worker ? `in its own process (pid ${worker.current.child.pid})` : 'inside the service'}`,
  );
  const http = new Agent({ connections: LOOPS * 2, keepAliveTimeout: 30_000 });
  cleanups.push(() => http.destroy());

  const users: User[] = [];
  for (let i = 0; i < LOOPS; i++) {
    const res = await send(http, base, 'register', 'POST', '/api/v1/auth/register', {
      json: {
        email: `chaos-${i}-${randomBytes(4).toString('hex')}@example.com`,
        password: randomBytes(12).toString('hex'),
      },
    });
    if (res.status !== 201) throw new Error(`register answered ${res.status}: ${JSON.stringify(res.json)}`);
    const body = res.json as { access_token: string; user: { id: string } };
    users.push({ id: body.user.id, token: body.access_token });
  }

  const ledger: Ledger = {
    answers: [],
    projects: new Map(),
    attemptedProjects: new Set(),
    generations: new Set(),
    profiles: new Map(),
    wrong: [],
  };
  let stopping = false;
  epoch = performance.now();
  log(`traffic: ${LOOPS} loops for ${DURATION_MS / 1000} s`);
  const loops = users.map((user, i) => loop(i, user, http, base, ledger, () => stopping));

  const phases: Phase[] = [];
  const outageMs = Math.min(3_000, DURATION_MS * 0.05);
  const readyNow = async () => (await send(http, base, 'ready', 'GET', '/ready')).status;
  const outage = async (name: string, breakIt: () => Promise<void> | void, restore: () => Promise<void>) => {
    const phase: Phase = { name, start: now(), end: 0, readyDuring: null };
    await breakIt();
    await sleep(outageMs / 2);
    phase.readyDuring = await readyNow();
    await sleep(Math.max(0, outageMs - (now() - phase.start)));
    await restore();
    phase.end = now();
    phases.push(phase);
    log(`${name}: ${(phase.end - phase.start).toFixed(0)} ms, /ready during it ${phase.readyDuring}`);
  };
  const restart = async (relay: TcpProxy) => {
    relay.thaw();
    await relay.cut();
    await relay.start();
  };
  const schedule: [number, () => Promise<void>][] = [
    [
      0.08,
      () =>
        outage(
          'PostgreSQL cut',
          () => pgRelay.cut(),
          () => pgRelay.start(),
        ),
    ],
    [
      0.28,
      () =>
        outage(
          'PostgreSQL frozen (hangs)',
          () => pgRelay.freeze(),
          () => restart(pgRelay),
        ),
    ],
    [
      0.6,
      () =>
        outage(
          'PostgreSQL and Redis cut',
          async () => {
            await pgRelay.cut();
            await redisRelay?.cut();
          },
          async () => {
            await pgRelay.start();
            await redisRelay?.start();
          },
        ),
    ],
    [
      0.72,
      async () => {
        // A stuck event loop: the whole process stopped and continued, five times.
        const phase: Phase = {
          name: 'process stopped 5 × 400 ms (SIGSTOP)',
          start: now(),
          end: 0,
          readyDuring: null,
        };
        for (let k = 0; k < 5; k++) {
          const target = api.current.child;
          target.kill('SIGSTOP');
          await sleep(400);
          target.kill('SIGCONT');
          await sleep(600);
        }
        phase.end = now();
        phases.push(phase);
        log(`${phase.name}: ${(phase.end - phase.start).toFixed(0)} ms`);
      },
    ],
    [
      0.86,
      () =>
        outage(
          'PostgreSQL cut (again)',
          () => pgRelay.cut(),
          () => pgRelay.start(),
        ),
    ],
  ];
  if (redisRelay) {
    schedule.push(
      [
        0.18,
        () =>
          outage(
            'Redis cut',
            () => redisRelay.cut(),
            () => redisRelay.start(),
          ),
      ],
      [
        0.45,
        () =>
          outage(
            'Redis frozen (hangs)',
            () => redisRelay.freeze(),
            () => restart(redisRelay),
          ),
      ],
    );
  }
  schedule.sort((x, y) => x[0] - y[0]);
  for (const [fraction, run] of schedule) {
    await sleep(Math.max(0, fraction * DURATION_MS - now()));
    await run();
  }
  await sleep(Math.max(0, DURATION_MS - now()));

  log('SIGTERM under load');
  const [apiStop, workerStop] = await Promise.all([api.stop(), worker?.stop() ?? Promise.resolve(null)]);
  stopping = true;
  await Promise.all(loops);
  // Clients leave once refused (an idle keep-alive connection would hold the process: a known bug).
  await http.close();
  const exit = apiStop.exit;
  const signalAt = apiStop.signalAt;
  const exitMs = exit ? exit.at - apiStop.signalAt : null;
  const crashes = [
    ...api.crashes.map((c) => ({ ...c, who: api.name })),
    ...(worker?.crashes ?? []).map((c) => ({ ...c, who: 'the worker' })),
  ];

  // ---- verification, straight from the database (not through the relay) ----
  const sql = new pg.Client({ connectionString: database.url });
  sql.on('error', () => {});
  await sql.connect();
  const projectIds = [...ledger.projects.keys()];
  const { rows: foundProjects } = await sql.query<{ id: string; name: string }>(
    'SELECT id, name FROM projects WHERE id = ANY($1)',
    [projectIds],
  );
  const projectsFound = foundProjects.filter((p) => ledger.projects.get(p.id) === p.name).length;
  const { rows: allProjects } = await sql.query<{ name: string }>(
    'SELECT name FROM projects WHERE owner_id = ANY($1)',
    [users.map((u) => u.id)],
  );
  const strayProjects = allProjects.filter((p) => !ledger.attemptedProjects.has(p.name)).length;
  const { rows: names } = await sql.query<{ id: string; display_name: string }>(
    'SELECT id, display_name FROM users WHERE id = ANY($1)',
    [users.map((u) => u.id)],
  );
  let profilesAcked = 0;
  let profilesLost = 0;
  for (const { id, display_name } of names) {
    const writes = ledger.profiles.get(id) ?? [];
    profilesAcked += writes.filter((w) => w.acked).length;
    const last = writes.map((w) => w.acked).lastIndexOf(true);
    if (last >= 0 && !writes.slice(last).some((w) => w.value === display_name)) profilesLost += 1;
  }
  const generationIds = [...ledger.generations];
  const { rows: generations } = await sql.query<{ id: string; status: string }>(
    'SELECT id, status FROM generations WHERE id = ANY($1)',
    [generationIds],
  );
  const { rows: charges } = await sql.query<{ generation_id: string; reason: string; n: number }>(
    `SELECT generation_id, reason, count(*)::int AS n FROM credit_transactions
      WHERE generation_id = ANY($1) GROUP BY generation_id, reason`,
    [generationIds],
  );
  const { rows: balances } = await sql.query<{ id: string; balance: number; sum: number }>(
    `SELECT u.id, u.credits_balance AS balance, coalesce(sum(c.amount), 0)::int AS sum
       FROM users u LEFT JOIN credit_transactions c ON c.user_id = u.id
      WHERE u.id = ANY($1) GROUP BY u.id`,
    [users.map((u) => u.id)],
  );
  await sql.end();
  const doubleCharged = charges.filter((c) => c.n > 1).length;
  const badRefunds = charges.filter(
    (c) =>
      c.reason === 'generation_refund' &&
      !['failed', 'cancelled'].includes(generations.find((g) => g.id === c.generation_id)?.status ?? ''),
  ).length;
  const ledgerMismatch = balances.filter((b) => b.balance !== b.sum).length;

  // ---- figures ----
  const answers = ledger.answers;
  const before = answers.filter((a) => a.at < signalAt);
  const after = answers.filter((a) => a.at >= signalAt);
  const outcome = (a: Answer) =>
    a.status === 0 ? `net:${a.error}` : a.status === 503 ? `503 ${a.code ?? ''}`.trim() : String(a.status);
  const tally = (keys: string[]) => {
    const out: Record<string, number> = {};
    for (const k of keys) out[k] = (out[k] ?? 0) + 1;
    return Object.fromEntries(Object.entries(out).sort(([x], [y]) => x.localeCompare(y)));
  };
  const countBy = (items: Answer[], key: (a: Answer) => string) => tally(items.map(key));
  const sorted = (xs: number[]) => Float64Array.from(xs).sort();
  const pct = (xs: Float64Array, p: number) =>
    xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] ?? 0;
  const latencies = sorted(before.map((a) => a.ms));
  const inPhase = (a: Answer) => phases.some((p) => a.at >= p.start && a.at <= p.end);
  const maxOf = (xs: Answer[]) => Math.max(0, ...xs.map((a) => a.ms));
  const ok = (a: Answer) => a.status >= 200 && a.status < 300;

  const lines: string[] = [];
  const out = (line = '') => lines.push(line);
  out();
  out(
    `chaos: ${DURATION_MS / 1000} s, ${LOOPS} loops, PostgreSQL: ${database.where}, Redis: ${redis?.where ?? 'none'}`,
  );
  out(`requests sent: ${answers.length} (${before.length} before SIGTERM, ${after.length} after)`);
  out(`answers before SIGTERM by status: ${JSON.stringify(countBy(before, outcome))}`);
  out(`answers after SIGTERM by status:  ${JSON.stringify(countBy(after, outcome))}`);
  out(
    `latency before SIGTERM: p50 ${pct(latencies, 50).toFixed(1)} ms, p99 ${pct(latencies, 99).toFixed(1)} ms, ` +
      `max ${maxOf(before).toFixed(0)} ms (during faults ${maxOf(before.filter(inPhase)).toFixed(0)} ms, ` +
      `outside them ${maxOf(before.filter((a) => !inPhase(a))).toFixed(0)} ms; hang bound ${HANG_BOUND_MS} ms)`,
  );
  out('faults:');
  for (const p of phases) {
    const during = answers.filter((a) => a.at >= p.start && a.at <= p.end);
    const firstOk = answers.filter((a) => a.at > p.end && ok(a) && a.op !== 'health' && a.op !== 'models');
    const recovered = firstOk.length > 0 ? Math.min(...firstOk.map((a) => a.at + a.ms)) - p.end : null;
    out(
      `  ${p.name.padEnd(38)} ${(p.end - p.start).toFixed(0).padStart(5)} ms: ${during.length} requests ` +
        `${JSON.stringify(countBy(during, outcome))}, max ${maxOf(during).toFixed(0)} ms` +
        `${p.readyDuring === null ? '' : `, /ready ${p.readyDuring}`}` +
        `${recovered === null ? '' : `; first database-backed success ${recovered.toFixed(0)} ms after`}`,
    );
  }
  out(
    `writes acknowledged vs found: projects ${ledger.projects.size} / ${projectsFound} ` +
      `(${strayProjects} rows never asked for), profile updates ${profilesAcked} acknowledged / ` +
      `${names.length - profilesLost} of ${names.length} users hold their last acknowledged name or a later one, ` +
      `generations ${ledger.generations.size} / ${generations.length} ` +
      `(${JSON.stringify(tally(generations.map((g) => g.status)))})`,
  );
  out(
    `credits: ${doubleCharged} double charges or refunds, ${badRefunds} refunds of unfailed generations, ` +
      `${ledgerMismatch} balances that differ from their ledger`,
  );
  if (workerStop) {
    const w = workerStop.exit;
    out(
      `worker shutdown: ${w ? `exit code ${w.code} ${(w.at - workerStop.signalAt).toFixed(0)} ms after SIGTERM` : 'did not exit'}`,
    );
  }
  out(
    `shutdown: ${exit ? `exit code ${exit.code}${exit.signal ? ` (${exit.signal})` : ''} ${exitMs?.toFixed(0)} ms after SIGTERM` : 'did not exit'} (grace ${GRACE_MS} ms)`,
  );
  if (ledger.wrong.length > 0) out(`wrong answers: ${ledger.wrong.slice(0, 5).join('; ')}`);
  out(`crashes: ${crashes.length}`);
  for (const c of crashes) {
    out(
      `  ${c.who} at ${(c.at / 1000).toFixed(1)} s, exit code ${c.code}: ${c.cause}; ` +
        `${c.restartedAfterMs === null ? 'not restarted' : `serving again after ${c.restartedAfterMs.toFixed(0)} ms`}`,
    );
  }

  const problems: string[] = [];
  if (crashes.length > 0) problems.push(`${crashes.length} process death(s) under faults`);
  if (workerStop && workerStop.exit?.code !== 0) problems.push('the worker did not exit 0 on SIGTERM');
  const fivexx = answers.filter((a) => a.status >= 500 && a.status !== 503);
  if (fivexx.length > 0) problems.push(`${fivexx.length} answers 5xx other than 503`);
  const unanswered = before.filter((a) => a.status === 0);
  if (unanswered.length > 0) problems.push(`${unanswered.length} requests before SIGTERM got no answer`);
  const badAfter = after.filter(
    (a) =>
      !(
        ok(a) ||
        a.status === 503 ||
        ['ECONNREFUSED', 'ECONNRESET', 'UND_ERR_SOCKET'].includes(a.error ?? '')
      ),
  );
  if (badAfter.length > 0) problems.push(`${badAfter.length} requests after SIGTERM failed otherwise`);
  const hung = answers.filter((a) => a.ms > HANG_BOUND_MS && a.op !== 'ready');
  if (hung.length > 0) problems.push(`${hung.length} answers slower than ${HANG_BOUND_MS} ms`);
  if (projectsFound !== ledger.projects.size) problems.push('acknowledged projects missing');
  if (strayProjects > 0) problems.push('project rows nobody asked for');
  if (profilesLost > 0) problems.push('acknowledged profile updates lost');
  if (generations.length !== ledger.generations.size) problems.push('acknowledged generations missing');
  if (doubleCharged + badRefunds + ledgerMismatch > 0) problems.push('credit ledger inconsistent');
  if (ledger.wrong.length > 0) problems.push(`${ledger.wrong.length} wrong answers`);
  if (exit?.code !== 0 || (exitMs ?? Number.POSITIVE_INFINITY) > GRACE_MS)
    problems.push('the service did not exit 0 within the grace period');
  out(problems.length === 0 ? 'result: every invariant held' : `result: BROKEN — ${problems.join('; ')}`);
  process.stdout.write(`${lines.join('\n')}\n`);
  if (problems.length > 0) {
    process.stdout.write(`--- last output of the service ---\n${api.current.tail() || '(none)'}\n`);
    process.exitCode = 1;
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`${signal}: cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (error) {
  log(`failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
