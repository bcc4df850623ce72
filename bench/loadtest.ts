import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type Child, freePort, startChild, stopChild, waitForHttp } from './lib/children.js';
import { type LoadOptions, parseLoadOptions } from './lib/loadtest-options.js';
import { ProgressLine } from './lib/loadtest-progress.js';
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
import { runPhase } from './lib/loadtest-run.js';
import { API, buildWorld, sleep, type World } from './lib/loadtest-setup.js';
import { judgeSoak, type SoakSample, SoakSampler, soakChartSvg, soakMarkdown } from './lib/loadtest-soak.js';
import { ERROR_OUTCOMES, type Outcome, Recorder } from './lib/loadtest-stats.js';
import {
  capacityPoint,
  renderPng,
  type StageSummary,
  type SweepReport,
  summarizeStage,
  sweepChartSvg,
  sweepMarkdown,
} from './lib/loadtest-sweep.js';
import { ensureFdLimit, type FdLimit, fdLimitOf, prlimit } from './lib/loadtest-system.js';
import { describeMachine, writeResultFiles } from './lib/report.js';

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
  for (const key of ['HOST', 'PORT', 'NODE_ENV']) {
    if (key in options.serviceEnv)
      throw new Error(`--service-env cannot set ${key}: the load test chooses it`);
  }
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
    // --service-env: what the operator wants measured (e.g. ADMISSION_CONTROL=false), over all of the above.
    ...options.serviceEnv,
  };
  const database = process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded';
  if (database === 'embedded') {
    const dataDir = await mkdtemp(join(tmpdir(), 'velro-loadtest-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    env.DATA_DIR = dataDir;
  }
  // The child inherits our (raised) descriptor limit; prlimit makes sure, where it exists.
  // --profile: where the service's CPU goes under this load (node --cpu-prof writes it on exit).
  const nodeArgs = options.profileDir ? ['--cpu-prof', '--cpu-prof-dir', options.profileDir] : [];
  const child = startChild('velro', join(ROOT, 'src', 'main.ts'), [], env, nodeArgs);
  cleanups.push(() => stopChild(child));
  if (options.serviceLog) {
    // The service's own lines (warming reports, warnings) beside the report, to line them up with it.
    const log = createWriteStream(options.serviceLog, { flags: 'a' });
    child.process.stdout?.pipe(log);
    child.process.stderr?.pipe(log);
  }
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

/** What admission control refused so far (from /metrics): by class budget and by the late loop. */
interface AdmissionCounters {
  byClass: Record<string, number>;
  byLoop: number;
}

async function admissionCounters(ops: Opsfetch): Promise<AdmissionCounters | null> {
  try {
    const response = await fetch(`${ops.origin}/metrics`, {
      headers: ops.token ? { authorization: `Bearer ${ops.token}` } : {},
      signal: AbortSignal.timeout(10_000),
    });
    if (response.status !== 200) return null;
    const counters: AdmissionCounters = { byClass: {}, byLoop: 0 };
    for (const line of (await response.text()).split('\n')) {
      const byClass = /^velro_admission_rejected_total\{class="([a-z_]+)"\} (\d+)/.exec(line);
      if (byClass) counters.byClass[byClass[1] as string] = Number(byClass[2]);
      const byLoop = /^velro_admission_loop_shed_total (\d+)/.exec(line);
      if (byLoop) counters.byLoop = Number(byLoop[1]);
    }
    return counters;
  } catch {
    return null;
  }
}

/** The refusals between two scrapes: the class budgets' (all classes) and the late loop's. */
function admissionDelta(before: AdmissionCounters | null, after: AdmissionCounters | null) {
  if (!before || !after) return null;
  const sum = (c: AdmissionCounters) => Object.values(c.byClass).reduce((a, b) => a + b, 0);
  return { byClassBudget: sum(after) - sum(before), byLateLoop: after.byLoop - before.byLoop };
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

/**
 * `--fresh-database`: a database of this run's own beside DATABASE_URL's (the service migrates it
 * at start), dropped when the run ends, and a Redis key prefix of its own (the shared entries and
 * the flush floor of another database's revisions must not meet this one's; what is left expires).
 * Without it the run adds its users, sessions and generations to DATABASE_URL's database, and each
 * run starts on a database the earlier ones grew (views to refresh, rows to warm).
 */
async function useFreshDatabase(progress: ProgressLine): Promise<void> {
  const base = process.env.DATABASE_URL;
  if (!base) return; // the embedded database is new for every run already
  const name = `velro_loadtest_${randomBytes(4).toString('hex')}`;
  const onBase = async (statement: string) => {
    const client = new pg.Client({ connectionString: base, application_name: 'velro_loadtest' });
    await client.connect();
    try {
      await client.query(statement);
    } finally {
      await client.end();
    }
  };
  await onBase(`CREATE DATABASE ${name}`);
  cleanups.push(() => onBase(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  const url = new URL(base);
  url.pathname = `/${name}`;
  process.env.DATABASE_URL = url.toString();
  process.env.REDIS_KEY_PREFIX = `${name}:`;
  databaseNotes.push('a fresh database of its own');
  progress.log(`[loadtest] fresh database ${name} (dropped at the end), Redis key prefix ${name}:`);
}

/** What the reports say of the database: where it was, and whether this run made and analysed it. */
const databaseNotes: string[] = [];
const databaseNote = (where: string) =>
  databaseNotes.length > 0 ? `${where} (${databaseNotes.join('; ')})` : where;

/** How often the tables are analysed when the server's autovacuum is off. */
const ANALYZE_EVERY_MS = 60_000;

/**
 * A production PostgreSQL analyses its tables as they grow (autovacuum); a server run with
 * `autovacuum = off` (test machines, for speed) never does, so a database that grows during the
 * run keeps no statistics and the planner guesses (a soak seq-scanned `teams` 24,005 times). When
 * DATABASE_URL's server has autovacuum off, the load test analyses the database after set-up and
 * every minute of the run, as autovacuum would, and says so.
 */
async function analyseLikeAutovacuum(progress: ProgressLine): Promise<void> {
  const url = process.env.DATABASE_URL;
  if (!url) return;
  const client = new pg.Client({ connectionString: url, application_name: 'velro_loadtest_analyze' });
  await client.connect();
  const { rows } = await client.query<{ autovacuum: string }>('SHOW autovacuum');
  if (rows[0]?.autovacuum === 'on') {
    await client.end();
    return;
  }
  const analyse = async () => {
    const started = performance.now();
    await client.query('ANALYZE');
    return Math.round(performance.now() - started);
  };
  databaseNotes.push(
    `analysed after set-up and every ${ANALYZE_EVERY_MS / 1000} s: the server's autovacuum is off`,
  );
  progress.log(
    `[loadtest] the server's autovacuum is off: analysing the database now (${await analyse()} ms) and every ${ANALYZE_EVERY_MS / 1000} s`,
  );
  let running: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    running = analyse().catch((error) => progress.log(`[loadtest] ANALYZE failed: ${errorText(error)}`));
  }, ANALYZE_EVERY_MS);
  timer.unref();
  cleanups.push(async () => {
    clearInterval(timer);
    await running;
    await client.end();
  });
}

async function main(): Promise<void> {
  const options = parseLoadOptions();
  const neededFds = options.users + FD_MARGIN;
  const fdSetup = await ensureFdLimit(neededFds);
  const progress = new ProgressLine();
  progress.log(
    `[loadtest] ${options.scenario}: ${options.sweep ? `sweep ${options.sweep.join(', ')} users (a stage each)` : `${options.users} users`}, ${options.durationSeconds} s ` +
      `(ramp ${options.rampSeconds} s), think ${options.thinkMinMs}–${options.thinkMaxMs} ms, seed ${options.seed}; ` +
      `open files: ${fdSetup.after?.soft ?? '?'} (needed ${neededFds}, ${fdSetup.method})`,
  );
  if (fdSetup.method === 'failed') {
    progress.log(
      `[loadtest] warning: could not raise the open-file limit to ${neededFds}; connections may fail`,
    );
  }

  if (options.freshDatabase) await useFreshDatabase(progress);
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
  await analyseLikeAutovacuum(progress);

  if (options.sweep) {
    await sweep(options, options.sweep, service, setup, progress, ops);
    return;
  }

  const cacheBefore = cacheCounters(await getJson(ops, `${API}/performance/dashboard`));
  const admissionBefore = await admissionCounters(ops);
  const recorder = new Recorder();
  const soak = options.soak
    ? new SoakSampler(service.origin, service.child.process.pid, recorder, options.soak.sampleSeconds)
    : null;
  soak?.start();
  const phase = await runPhase({
    origin: service.origin,
    port: service.port,
    child: service.child,
    world,
    options,
    progress,
    recorder,
  });
  const soakSamples = (await soak?.stop()) ?? null;
  const { generations, scenarios } = phase;

  const server = await serverView(ops, cacheBefore);
  const admissionAfter = await admissionCounters(ops);
  const refusals =
    admissionBefore && admissionAfter
      ? {
          byClass: Object.fromEntries(
            Object.entries(admissionAfter.byClass).map(([name, n]) => [
              name,
              n - (admissionBefore.byClass[name] ?? 0),
            ]),
          ),
          byLateLoop: admissionAfter.byLoop - admissionBefore.byLoop,
        }
      : null;

  const measuredSeconds = phase.measuredSeconds;
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
      database: databaseNote(service.database),
      redis: process.env.REDIS_URL ? 'REDIS_URL' : 'none',
      serverEnv: {
        LOCAL_PROVIDER_STEP_DELAY_MS: options.stepDelayMs,
        WORKER_ENABLED: process.env.WORKER_ENABLED ?? 'default (true)',
        WORKER_CONCURRENCY: process.env.WORKER_CONCURRENCY ?? 'default',
        ARGON2_MEMORY_KIB: process.env.ARGON2_MEMORY_KIB ?? 'default (19456)',
        ARGON2_TIME_COST: process.env.ARGON2_TIME_COST ?? 'default (2)',
        rateLimits:
          'LOGIN_RATE_LIMIT_PER_IP, LOGIN_RATE_LIMIT_PER_ACCOUNT, REGISTER_RATE_LIMIT_PER_IP, GENERATION_RATE_LIMIT_PER_MINUTE, MEMBER_ADDS_BY_EMAIL_PER_HOUR, USER_RATE_LIMIT_PER_MINUTE = 1e9',
        extra: options.serviceEnv,
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
    connections: phase.connections,
    resources: phase.resources,
    server,
    refusals,
    timeline: recorder.timeline(),
  };
  const report: LoadReport = { ...partial, targets: judgeTargets(partial) };
  const outDir = options.outDir ?? join(BENCH_DIR, 'results');
  if (options.soak && soakSamples) {
    await writeSoakReport(outDir, report, soakSamples, options, progress);
    return;
  }
  const markdown = toMarkdown(report);
  const files = await writeLoadReport(outDir, report, markdown);
  process.stdout.write(`\n${markdown}\n`);
  progress.log(`[loadtest] written: ${files.join(', ')}`);
}

const span = (seconds: number) => (seconds >= 120 ? `${Math.round(seconds / 60)} min` : `${seconds} s`);

/** `--soak`: the run's report, then the samples over time, their verdict and the chart (PNG). */
async function writeSoakReport(
  outDir: string,
  report: LoadReport,
  samples: SoakSample[],
  options: LoadOptions,
  progress: ProgressLine,
): Promise<void> {
  const judgeSeconds = options.soak?.judgeSeconds ?? 1_200;
  const verdict = judgeSoak(samples, options.durationSeconds, judgeSeconds);
  const base = `loadtest-soak-${report.date.slice(0, 10)}`;
  await mkdir(outDir, { recursive: true });
  const svg = soakChartSvg(
    samples,
    verdict,
    `Velro soak, ${options.scenario}, ${options.users.toLocaleString('en-US')} users, ${span(options.durationSeconds)} (ramp ${span(options.rampSeconds)}), build ${report.machine.build}`,
    options.durationSeconds,
  );
  const svgPath = join(outDir, `${base}.svg`);
  const pngPath = join(outDir, `${base}.png`);
  await writeFile(svgPath, svg);
  const skipped = await renderPng(svg, pngPath);
  // The SVG stays only when it is the chart (no PNG could be rendered).
  if (!skipped) await rm(svgPath, { force: true });
  const chartFile = skipped ? `${base}.svg` : `${base}.png`;
  const markdown = `${toMarkdown(report).replace(/^# Load test:/, '# Soak:')}\n${soakMarkdown(
    samples,
    verdict,
    options.soak?.sampleSeconds ?? 30,
    {
      file: chartFile,
      skipped,
    },
  )}`;
  const files = await writeResultFiles(
    outDir,
    base,
    { ...report, soak: { verdict, samples } },
    `${markdown}\n`,
  );
  process.stdout.write(`\n${markdown}\n`);
  progress.log(
    `[soak] RSS ${verdict.rss ? `${(verdict.rss.drift * 100).toFixed(1)} %` : '?'}, p95 ${verdict.p95 ? `${(verdict.p95.drift * 100).toFixed(1)} %` : '?'} ` +
      `trend over the judged window: ${verdict.flat ? 'flat' : 'NOT flat'}; written: ${[...files, chartFile].join(', ')}`,
  );
}

/**
 * `--sweep`: one stage per user count against the same service and world, the smallest first. Each
 * stage ramps its first N users up (not counted), runs them for the rest of --duration, and waits for
 * every request in flight; the service then settles before the next stage starts.
 */
async function sweep(
  options: LoadOptions,
  counts: number[],
  service: Service,
  setup: Awaited<ReturnType<typeof buildWorld>>,
  progress: ProgressLine,
  ops: Opsfetch,
): Promise<void> {
  const stages: StageSummary[] = [];
  // The ramp is left out of a stage's figures, unless it is the whole stage.
  const warmUp = options.rampSeconds > 0 && options.rampSeconds < options.durationSeconds;
  for (const [index, users] of counts.entries()) {
    const stageOptions: LoadOptions = { ...options, users };
    const admissionBefore = await admissionCounters(ops);
    progress.log(
      `[sweep] stage ${index + 1}/${counts.length}: ${users} users, ${options.durationSeconds} s (ramp ${options.rampSeconds} s${warmUp ? ', not counted' : ''})`,
    );
    const phase = await runPhase({
      origin: service.origin,
      port: service.port,
      child: service.child,
      world: setup.world,
      options: stageOptions,
      progress,
      label: `[${users} users]`,
      countAfterRamp: warmUp,
    });
    // How long after the load dropped the service answered quickly again (the next stage starts then).
    const quickAgain = await settle(service.origin, progress);
    const refusals = admissionDelta(admissionBefore, await admissionCounters(ops));
    const recoveryMs = quickAgain === null ? null : Math.round(quickAgain - phase.deadlineAt);
    const seconds = options.durationSeconds - (warmUp ? options.rampSeconds : 0);
    const stage = summarizeStage(users, seconds, phase.recorder.endpoints.values(), phase.recorder.refusals);
    stage.notes = {
      serviceCpuPct: phase.resources.cpu.serverPct,
      postgresCpuPct: phase.resources.cpu.postgresPct,
      machineCpuPct: phase.resources.cpu.machinePct,
      loadGeneratorLagP99Ms: phase.resources.loadGeneratorEventLoopP99Ms,
      drained: phase.drained,
      recoveryMs,
      refusals,
      // What these users would ask of an instant service: attempted req/s far below it means they wait.
      offeredCeilingPerSec: round(
        (users * 1000) / Math.max(1, (options.thinkMinMs + options.thinkMaxMs) / 2),
        1,
      ),
      peakOpenConnections: phase.connections.peakOpen,
      connectFailures: phase.connections.connectFailures,
      errorCodes: Object.fromEntries(phase.recorder.errorCodes),
      errorSamples: Object.fromEntries(phase.recorder.samples),
      endpoints: endpointRows(phase.recorder.endpoints.values(), Math.max(seconds, 1)),
    };
    stages.push(stage);
    progress.log(
      `[sweep] ${users} users: ${stage.throughputPerSec} ok req/s of ${stage.attemptedPerSec} attempted, ` +
        `errors ${pct(stage.errorRate)} (503 overloaded ${stage.overloaded503}, other 5xx ${stage.other5xx}, ` +
        `timeouts ${stage.timeouts}); ${stage.qualifies ? 'within targets' : stage.misses.join('; ')}`,
    );
  }

  const capacity = capacityPoint(stages);
  progress.log(
    capacity
      ? `[sweep] capacity point: ${capacity.users} users (${capacity.throughputPerSec} successful req/s)`
      : '[sweep] no stage is within the targets: the capacity point is below the smallest stage',
  );
  const date = new Date().toISOString();
  const dir = options.outDir ?? join(BENCH_DIR, 'results');
  const suffix = Object.entries(options.serviceEnv)
    .map(([k, v]) => `-${k}-${v}`.toLowerCase().replace(/[^a-z0-9-]+/g, '_'))
    .join('');
  const base = `loadtest-sweep-${date.slice(0, 10)}${suffix}`;
  const envText = Object.entries(options.serviceEnv).map(([k, v]) => `${k}=${v}`);
  const svg = sweepChartSvg(
    stages,
    capacity?.users ?? null,
    `Velro load sweep, ${options.scenario}${envText.length ? ` (${envText.join(', ')})` : ''}: ` +
      (capacity ? `capacity ${capacity.users} users` : 'no stage within targets'),
  );
  await mkdir(dir, { recursive: true });
  const pngPath = join(dir, `${base}.png`);
  const pngSkipped = await renderPng(svg, `${pngPath}.tmp.png`);
  if (pngSkipped === null) await rename(`${pngPath}.tmp.png`, pngPath);
  else await writeFile(join(dir, `${base}.svg`), `${svg}\n`);
  const chartFile = pngSkipped === null ? `${base}.png` : `${base}.svg`;
  const report: SweepReport = {
    date,
    machine: describeMachine(),
    settings: {
      ...options,
      database: databaseNote(service.database),
      redis: process.env.REDIS_URL ? 'REDIS_URL' : 'none',
    },
    serviceEnv: options.serviceEnv,
    setup: setup.summary,
    stages,
    capacity: capacity ? { users: capacity.users, throughputPerSec: capacity.throughputPerSec } : null,
    chart: {
      svg: pngSkipped === null ? null : `${base}.svg`,
      png: pngSkipped === null ? `${base}.png` : null,
      pngSkipped,
    },
  };
  const markdown = sweepMarkdown(report, chartFile);
  const files = await writeResultFiles(dir, base, report, `${markdown}\n`);
  process.stdout.write(`\n${markdown}\n`);
  progress.log(`[loadtest] written: ${[...files, join(dir, chartFile)].join(', ')}`);
}

/**
 * After a stage: every request of it has finished (runPhase waited for them); the service is quick
 * again when /ready (a database and Redis round trip) answers within 50 ms three times in a row,
 * 50 ms apart. Returns when that happened (performance.now() of the first of the three), or null
 * when it did not within 60 s. The stage's recovery is counted from its deadline, when the users
 * stopped sending: the issue's "back to full speed within 5 s after the load drops".
 */
async function settle(origin: string, progress: ProgressLine): Promise<number | null> {
  const deadline = performance.now() + 60_000;
  let streak: number[] = [];
  while (streak.length < 3 && performance.now() < deadline) {
    const started = performance.now();
    const ok = await fetch(`${origin}/ready`, { signal: AbortSignal.timeout(5_000) })
      .then((r) => r.status === 200)
      .catch(() => false);
    streak = ok && performance.now() - started < 50 ? [...streak, started] : [];
    if (streak.length < 3) await sleep(50);
  }
  if (streak.length < 3) {
    progress.log('[sweep] the service did not answer /ready quickly within 60 s; going on');
    return null;
  }
  return streak[0] as number;
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
