import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { type Child, freePort, startChild, stopChild, waitForHttp } from './lib/children.js';
import { ConnectionTracker, VuHttp } from './lib/loadtest-http.js';
import {
  type LoadOptions,
  MIXED_WEIGHTS,
  parseLoadOptions,
  SCENARIOS,
  type ScenarioName,
} from './lib/loadtest-options.js';
import { bar, duration, ProgressLine } from './lib/loadtest-progress.js';
import {
  endpointRows,
  generationSummary,
  groupRows,
  judgeTargets,
  type LoadReport,
  overallLatency,
  pct,
  round,
  type ServerView,
  toMarkdown,
  writeLoadReport,
} from './lib/loadtest-report.js';
import { type RunContext, seededRandom, TokenBucket, VirtualUser } from './lib/loadtest-scenarios.js';
import { API, buildWorld, sleep, type World } from './lib/loadtest-setup.js';
import {
  ERROR_OUTCOMES,
  GenerationCounters,
  type Outcome,
  Recorder,
  ScenarioCounters,
} from './lib/loadtest-stats.js';
import {
  cpuBetween,
  cpuSnapshot,
  ensureFdLimit,
  establishedTo,
  type FdLimit,
  fdLimitOf,
  listenOverflows,
  prlimit,
  rssMiB,
} from './lib/loadtest-system.js';
import { describeMachine } from './lib/report.js';

/**
 * `npm run loadtest -- --scenario mixed --users 10000 --duration 60`
 *
 * Seed 002's load test against a service started here in its own process (production mode,
 * embedded PostgreSQL unless DATABASE_URL is set, REDIS_URL passed through, abuse limits raised):
 * every virtual user has its own account (registered up front) and its own keep-alive connection,
 * thinks between steps, and runs one scenario (auth_heavy, generation_workflow, collaboration, or
 * the 40/35/25 mix). Loopback only; bounded in time (--duration) and in count (--users).
 */

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH_DIR);
const READY_TIMEOUT_MS = 180_000;
const UNLIMITED = '1000000000';
/** Sockets beyond one per user: the service's pools, PostgreSQL, pipes, the setup workers. */
const FD_MARGIN = 1_024;

const cleanups: (() => Promise<void>)[] = [];
let cleaning: Promise<void> | undefined;

function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const step of cleanups.reverse()) {
      try {
        await step();
      } catch (error) {
        process.stderr.write(`[loadtest] cleanup step failed: ${errorText(error)}\n`);
      }
    }
  })();
  return cleaning;
}

interface Service {
  origin: string;
  port: number;
  child: Child;
  database: 'embedded' | 'DATABASE_URL';
  fdLimit: FdLimit | null;
}

async function startService(
  options: LoadOptions,
  neededFds: number,
  progress: ProgressLine,
): Promise<Service> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    // The operator's environment (REDIS_URL, DATABASE_URL, WORKER_*, ARGON2_*, pool sizes) passes through…
    ...process.env,
    // …but these are the test's own.
    NODE_ENV: 'production',
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
    HOST: '127.0.0.1',
    PORT: String(port),
    JWT_SECRET: secret(),
    MEDIA_SIGNING_SECRET: secret(),
    // One address registers and signs in thousands of users: the abuse limits must not apply.
    LOGIN_RATE_LIMIT_PER_IP: UNLIMITED,
    LOGIN_RATE_LIMIT_PER_ACCOUNT: UNLIMITED,
    REGISTER_RATE_LIMIT_PER_IP: UNLIMITED,
    GENERATION_RATE_LIMIT_PER_MINUTE: UNLIMITED,
    MEMBER_ADDS_BY_EMAIL_PER_HOUR: UNLIMITED,
    USER_RATE_LIMIT_PER_MINUTE: UNLIMITED,
    // Setup of 10,000 users takes minutes: tokens from registration must outlive it.
    ACCESS_TOKEN_TTL_SECONDS: '86400',
    LOCAL_PROVIDER_STEP_DELAY_MS: String(options.stepDelayMs),
  };
  const database = process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded';
  if (database === 'embedded') {
    const dataDir = await mkdtemp(join(tmpdir(), 'velro-loadtest-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    env.DATA_DIR = dataDir;
  }
  // The child inherits our (raised) descriptor limit; prlimit makes sure, where it exists.
  const child = startChild('velro', join(ROOT, 'src', 'main.ts'), [], env);
  cleanups.push(() => stopChild(child));
  let fdLimit = child.process.pid ? await fdLimitOf(child.process.pid) : null;
  if (child.process.pid && (!fdLimit || fdLimit.soft < neededFds)) {
    await prlimit(child.process.pid, Math.max(neededFds, 65_535));
    fdLimit = await fdLimitOf(child.process.pid);
  }
  const origin = `http://127.0.0.1:${port}`;
  progress.log(`[loadtest] starting the service on ${origin} (production, database: ${database})`);
  try {
    await waitForHttp(child, `${origin}/ready`, READY_TIMEOUT_MS);
  } catch (error) {
    throw new Error(`${errorText(error)}\n--- last output of the service ---\n${child.tail() || '(none)'}`);
  }
  return { origin, port, child, database, fdLimit };
}

const secret = () => randomBytes(36).toString('base64url');

/** Scenario per user: exact counts from the weights, shuffled so every scenario ramps up together. */
function assignScenarios(options: LoadOptions, random: () => number): ScenarioName[] {
  if (options.scenario !== 'mixed') return new Array(options.users).fill(options.scenario);
  const counts = SCENARIOS.map((s) => Math.floor(options.users * MIXED_WEIGHTS[s]));
  let left = options.users - counts.reduce((a, b) => a + b, 0);
  for (let i = 0; left > 0; i = (i + 1) % counts.length, left--) counts[i] = (counts[i] ?? 0) + 1;
  const list = SCENARIOS.flatMap((s, i) => new Array<ScenarioName>(counts[i] ?? 0).fill(s));
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [list[i], list[j]] = [list[j]!, list[i]!];
  }
  return list;
}

interface Opsfetch {
  origin: string;
  token: string | undefined;
}

async function getJson(ops: Opsfetch, path: string): Promise<unknown> {
  try {
    const response = await fetch(`${ops.origin}${path}`, {
      headers: ops.token ? { authorization: `Bearer ${ops.token}` } : {},
      signal: AbortSignal.timeout(10_000),
    });
    return response.status === 200 ? await response.json() : null;
  } catch {
    return null;
  }
}

interface CacheCounters {
  l1Hits: number;
  l1Misses: number;
  l2Hits: number;
  l2Misses: number;
  databaseLoads: number;
}

function cacheCounters(dashboard: unknown): CacheCounters | null {
  const cache = (dashboard as { cache?: Record<string, unknown> } | null)?.cache;
  if (!cache) return null;
  const layer = (name: string) => (cache[name] ?? {}) as { hits?: number; misses?: number };
  return {
    l1Hits: layer('l1').hits ?? 0,
    l1Misses: layer('l1').misses ?? 0,
    l2Hits: layer('l2').hits ?? 0,
    l2Misses: layer('l2').misses ?? 0,
    databaseLoads: typeof cache.database_loads === 'number' ? cache.database_loads : 0,
  };
}

async function serverView(ops: Opsfetch, before: CacheCounters | null): Promise<ServerView | null> {
  const [validate, dashboard, health] = await Promise.all([
    getJson(ops, `${API}/performance/validate?window=1m`),
    getJson(ops, `${API}/performance/dashboard`),
    getJson(ops, `${API}/performance/health`),
  ]);
  if (!validate && !dashboard) return null;
  const after = cacheCounters(dashboard);
  const ratio = (hits: number, misses: number) => (hits + misses > 0 ? hits / (hits + misses) : null);
  const d = (dashboard ?? {}) as {
    cache?: { l1_hit_ratio_1m?: number | null };
    requests?: unknown;
    pools?: unknown;
    queue_depth?: number | null;
    alerts?: { rule?: { name?: string }; state?: string; value?: number | null }[];
    health?: string;
  };
  const targets = ((validate as { targets?: ServerView['targets'] } | null)?.targets ?? []).map((t) => ({
    ...t,
    value: t.value ?? null,
  }));
  return {
    window: '1m',
    validate,
    targets,
    l1HitRatioDuringRun:
      before && after ? ratio(after.l1Hits - before.l1Hits, after.l1Misses - before.l1Misses) : null,
    l2HitRatioDuringRun:
      before && after ? ratio(after.l2Hits - before.l2Hits, after.l2Misses - before.l2Misses) : null,
    databaseLoadsDuringRun: before && after ? after.databaseLoads - before.databaseLoads : null,
    l1HitRatio1m: d.cache?.l1_hit_ratio_1m ?? null,
    requests1m: d.requests ?? null,
    pools: d.pools ?? null,
    queueDepth: d.queue_depth ?? null,
    firingAlerts: (d.alerts ?? [])
      .filter((a) => a.state === 'firing')
      .map(
        (a) =>
          `${a.rule?.name ?? '?'} (${a.value === null || a.value === undefined ? '?' : round(a.value, 2)})`,
      ),
    health: (health as { status?: string } | null)?.status ?? d.health ?? null,
    eventLoopP99Ms: (health as { event_loop_p99_ms?: number } | null)?.event_loop_p99_ms ?? null,
    dashboard,
  };
}

async function main(): Promise<void> {
  const options = parseLoadOptions();
  const neededFds = options.users + FD_MARGIN;
  const fdSetup = await ensureFdLimit(neededFds);
  const progress = new ProgressLine();
  progress.log(
    `[loadtest] ${options.scenario}: ${options.users} users, ${options.durationSeconds} s ` +
      `(ramp ${options.rampSeconds} s), think ${options.thinkMinMs}–${options.thinkMaxMs} ms, seed ${options.seed}; ` +
      `open files: ${fdSetup.after?.soft ?? '?'} (needed ${neededFds}, ${fdSetup.method})`,
  );
  if (fdSetup.method === 'failed') {
    progress.log(
      `[loadtest] warning: could not raise the open-file limit to ${neededFds}; connections may fail`,
    );
  }

  const service = await startService(options, neededFds, progress);
  const ops: Opsfetch = { origin: service.origin, token: process.env.OPS_TOKEN };
  const setup = await buildWorld({
    origin: service.origin,
    users: options.users,
    teamSize: options.teamSize,
    concurrency: options.setupConcurrency,
    timeoutMs: Math.max(options.timeoutMs, 30_000),
    drainSeconds: options.drainSeconds,
    databaseUrl: process.env.DATABASE_URL,
    progress,
  });
  const world: World = setup.world;
  if (world.admin) cleanups.push(() => world.admin?.http.close() ?? Promise.resolve());

  const random = seededRandom(options.seed);
  const scenarioOf = assignScenarios(options, random);
  const recorder = new Recorder();
  const tracker = new ConnectionTracker();
  const generations = new GenerationCounters();
  const scenarios = new ScenarioCounters();
  for (const s of scenarioOf) scenarios.users.set(s, (scenarios.users.get(s) ?? 0) + 1);

  const cacheBefore = cacheCounters(await getJson(ops, `${API}/performance/dashboard`));
  const cpuStart = await cpuSnapshot(service.child.process.pid);
  const overflowsStart = await listenOverflows();
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();

  const start = performance.now();
  const durationMs = options.durationSeconds * 1000;
  const rampMs = options.rampSeconds * 1000;
  const deadline = start + durationMs;
  recorder.start(start);
  const ctx: RunContext = {
    origin: service.origin,
    world,
    recorder,
    generations,
    scenarios,
    random,
    thinkMinMs: options.thinkMinMs,
    thinkMaxMs: options.thinkMaxMs,
    sseMaxMs: options.sseMaxMs,
    sseShare: options.sseShare,
    logins: new TokenBucket(options.loginRate),
    creates: new TokenBucket(options.createRate),
    deadline,
  };

  const users: VirtualUser[] = [];
  let finished = 0;
  let serverEstablishedPeak: number | null = null;
  let serverRssPeak: number | null = null;
  let openAtDeadline = 0;
  let closedBeforeDeadline = 0;
  let openedBeforeDeadline = 0;

  const draw = (final = false) => {
    const now = performance.now();
    const elapsed = Math.min(now, deadline) - start;
    const last = recorder.lastSecond(now);
    const errorShare = recorder.total > 0 ? recorder.errors / recorder.total : 0;
    progress.update(
      `[run] ${bar(elapsed / durationMs)} ${duration(elapsed / 1000)}/${duration(options.durationSeconds)} ` +
        `VUs ${recorder.activeUsers}/${options.users}  ${last.requests} req/s  ` +
        `${recorder.total.toLocaleString('en-US')} req  errors ${recorder.errors} (${pct(errorShare)})  ` +
        `conns ${tracker.open}`,
      final,
    );
  };
  const ticker = setInterval(draw, 250);
  let expectedTick = performance.now() + 100;
  const lagTimer = setInterval(() => {
    const now = performance.now();
    recorder.noteLag(now, Math.max(0, now - expectedTick));
    expectedTick = now + 100;
  }, 100);
  const sampler = setInterval(() => {
    void (async () => {
      const [established, rss] = await Promise.all([
        establishedTo(service.port),
        service.child.process.pid ? rssMiB(service.child.process.pid) : Promise.resolve(null),
      ]);
      if (established !== null) serverEstablishedPeak = Math.max(serverEstablishedPeak ?? 0, established);
      if (rss !== null) serverRssPeak = Math.max(serverRssPeak ?? 0, rss);
    })();
  }, 2_000);
  const atDeadline = () => {
    openAtDeadline = tracker.open;
    closedBeforeDeadline = tracker.closed;
    openedBeforeDeadline = tracker.opened;
  };
  let deadlinePassed = false;
  const deadlineTimer = setTimeout(() => {
    deadlinePassed = true;
    atDeadline();
  }, durationMs);

  const runs: Promise<void>[] = [];
  for (let i = 0; i < options.users; i++) {
    const account = world.accounts[i]!;
    const scenario = scenarioOf[i]!;
    const offset = options.users > 1 ? (rampMs * i) / options.users : 0;
    runs.push(
      (async () => {
        await sleep(offset);
        if (performance.now() >= deadline) return;
        const vu = new VirtualUser(
          account,
          scenario,
          ctx,
          new VuHttp(service.origin, recorder, tracker, options.timeoutMs),
        );
        users.push(vu);
        recorder.activeUsers += 1;
        try {
          await vu.run();
        } catch (error) {
          progress.log(`[run] user ${i} stopped on an exception: ${errorText(error)}`);
          recorder.noteErrorCode('VU_EXCEPTION');
        } finally {
          recorder.activeUsers -= 1;
          finished += 1;
        }
      })(),
    );
  }

  // Every user stops starting requests at the deadline; in-flight ones get their timeout to finish.
  const drainMs = options.timeoutMs + options.sseMaxMs + 5_000;
  let drainTimer: NodeJS.Timeout | undefined;
  const drained = await Promise.race([
    Promise.all(runs).then(() => true),
    new Promise<boolean>((resolve) => {
      drainTimer = setTimeout(() => resolve(false), durationMs + drainMs);
    }),
  ]);
  clearTimeout(drainTimer);
  clearTimeout(deadlineTimer);
  if (!deadlinePassed) atDeadline();
  clearInterval(ticker);
  clearInterval(lagTimer);
  clearInterval(sampler);
  const end = performance.now();
  draw(true);
  progress.done();
  if (!drained) {
    progress.log(
      `[run] ${options.users - finished} users still busy ${drainMs} ms after the deadline: cut off`,
    );
  }
  loop.disable();
  const cpuEnd = await cpuSnapshot(service.child.process.pid);
  const overflowsEnd = await listenOverflows();
  const established = await establishedTo(service.port);
  if (established !== null) serverEstablishedPeak = Math.max(serverEstablishedPeak ?? 0, established);
  const peakOpen = tracker.peak;
  const loadGeneratorRss = await rssMiB('self');
  recorder.freeze();
  await Promise.all(users.map((u) => u.http.close()));

  const server = await serverView(ops, cacheBefore);

  const measuredSeconds = (end - start) / 1000;
  const endpoints = endpointRows(recorder.endpoints.values(), measuredSeconds);
  const outcomes: Record<Outcome, number> = {
    ok: 0,
    expected: 0,
    unexpected: 0,
    server_error: 0,
    timeout: 0,
    network: 0,
  };
  const statuses: Record<string, number> = {};
  for (const e of recorder.endpoints.values()) {
    for (const key of Object.keys(outcomes) as Outcome[]) outcomes[key] += e.outcomes[key];
    for (const [status, count] of e.statuses) statuses[status] = (statuses[status] ?? 0) + count;
  }
  const errors = ERROR_OUTCOMES.reduce((sum, o) => sum + outcomes[o], 0);
  const steadySeconds = Math.max(0, options.durationSeconds - Math.ceil(options.rampSeconds));
  const steadyRequests = recorder.requestsBetween(Math.ceil(options.rampSeconds), options.durationSeconds);
  const meanThinkMs = Math.max(1, (options.thinkMinMs + options.thinkMaxMs) / 2);

  const partial: Omit<LoadReport, 'targets'> = {
    date: new Date().toISOString(),
    machine: describeMachine(),
    settings: {
      ...options,
      database: service.database,
      redis: process.env.REDIS_URL ? 'REDIS_URL' : 'none',
      serverEnv: {
        LOCAL_PROVIDER_STEP_DELAY_MS: options.stepDelayMs,
        WORKER_ENABLED: process.env.WORKER_ENABLED ?? 'default (true)',
        WORKER_CONCURRENCY: process.env.WORKER_CONCURRENCY ?? 'default',
        ARGON2_MEMORY_KIB: process.env.ARGON2_MEMORY_KIB ?? 'default (19456)',
        ARGON2_TIME_COST: process.env.ARGON2_TIME_COST ?? 'default (2)',
        rateLimits:
          'LOGIN_RATE_LIMIT_PER_IP, LOGIN_RATE_LIMIT_PER_ACCOUNT, REGISTER_RATE_LIMIT_PER_IP, GENERATION_RATE_LIMIT_PER_MINUTE, MEMBER_ADDS_BY_EMAIL_PER_HOUR, USER_RATE_LIMIT_PER_MINUTE = 1e9',
      },
    },
    fdLimits: { loadGenerator: fdSetup, server: service.fdLimit },
    setup: setup.summary,
    run: {
      users: options.users,
      usersByScenario: Object.fromEntries(scenarios.users),
      iterationsByScenario: Object.fromEntries(scenarios.iterations),
      measuredSeconds: round(measuredSeconds, 2),
      rampSeconds: options.rampSeconds,
      totalRequests: recorder.total,
      reqPerSec: round(recorder.total / measuredSeconds, 1),
      steadyReqPerSec: steadySeconds > 0 ? round(steadyRequests / steadySeconds, 1) : 0,
      offeredCeilingReqPerSec: round((options.users * 1000) / meanThinkMs, 1),
      outcomes,
      errorRate: recorder.total > 0 ? errors / recorder.total : 0,
      unexpectedRate: recorder.total > 0 ? outcomes.unexpected / recorder.total : 0,
      statuses,
      errorCodes: Object.fromEntries(recorder.errorCodes),
      errorSamples: Object.fromEntries(recorder.samples),
      overall: overallLatency(recorder.endpoints.values()),
    },
    endpoints,
    groups: groupRows(recorder.endpoints.values()),
    generations: generationSummary(generations),
    connections: {
      peakOpen,
      openAtDeadline,
      opened: openedBeforeDeadline,
      closed: closedBeforeDeadline,
      connectFailures: tracker.failed,
      serverEstablishedPeak,
      listenOverflows:
        overflowsStart && overflowsEnd ? overflowsEnd.overflows - overflowsStart.overflows : null,
      listenDrops: overflowsStart && overflowsEnd ? overflowsEnd.drops - overflowsStart.drops : null,
    },
    resources: {
      cpu: cpuBetween(cpuStart, cpuEnd, cpus().length),
      loadGeneratorRssMiB: loadGeneratorRss,
      serverRssPeakMiB: serverRssPeak,
      loadGeneratorEventLoopP99Ms: round(loop.percentile(99) / 1e6, 2),
      loadGeneratorEventLoopMaxMs: round(loop.max / 1e6, 2),
    },
    server,
    timeline: recorder.timeline(),
  };
  const report: LoadReport = { ...partial, targets: judgeTargets(partial) };
  const markdown = toMarkdown(report);
  const files = await writeLoadReport(options.outDir ?? join(BENCH_DIR, 'results'), report, markdown);
  process.stdout.write(`\n${markdown}\n`);
  progress.log(`[loadtest] written: ${files.join(', ')}`);
}

const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error));

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`\n[loadtest] ${signal}: stopping the service\n`);
    void cleanUp().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (error) {
  process.stderr.write(`\n[loadtest] failed: ${errorText(error)}\n`);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
