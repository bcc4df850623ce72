import { cpus } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Child } from './children.js';
import { ConnectionTracker, VuHttp } from './loadtest-http.js';
import { type LoadOptions, MIXED_WEIGHTS, SCENARIOS, type ScenarioName } from './loadtest-options.js';
import { bar, duration, type ProgressLine } from './loadtest-progress.js';
import { pct, round } from './loadtest-report.js';
import { type RunContext, seededRandom, TokenBucket, VirtualUser } from './loadtest-scenarios.js';
import { sleep, type World } from './loadtest-setup.js';
import { GenerationCounters, Recorder, ScenarioCounters } from './loadtest-stats.js';
import {
  type CpuUsage,
  cpuBetween,
  cpuSnapshot,
  establishedTo,
  listenOverflows,
  rssMiB,
} from './loadtest-system.js';

/**
 * The timed phase of a load test, on its own so that one service and one world can serve several
 * phases (`--sweep`): the first `options.users` accounts of the world become virtual users, ramp up
 * over `options.rampSeconds`, run until `options.durationSeconds`, and are waited for until every
 * request in flight has finished (or its timeout has passed).
 */
export interface PhaseInput {
  origin: string;
  port: number;
  child: Child;
  world: World;
  options: LoadOptions;
  progress: ProgressLine;
  /** Prefix of the progress line. */
  label?: string;
  /** Count only what completes after the ramp (a sweep stage measures N users, all active). */
  countAfterRamp?: boolean;
  /** Where the requests are counted, when the caller watches them while the phase runs (a soak). */
  recorder?: Recorder;
}

export interface PhaseResult {
  recorder: Recorder;
  tracker: ConnectionTracker;
  generations: GenerationCounters;
  scenarios: ScenarioCounters;
  /** From the start to the moment the last user stopped, ramp included. */
  measuredSeconds: number;
  /** False when some users were still busy long after the deadline and were cut off. */
  drained: boolean;
  /** performance.now() at the deadline: when the users stopped starting requests (the load dropped). */
  deadlineAt: number;
  connections: {
    peakOpen: number;
    openAtDeadline: number;
    opened: number;
    closed: number;
    connectFailures: number;
    serverEstablishedPeak: number | null;
    listenOverflows: number | null;
    listenDrops: number | null;
  };
  resources: {
    cpu: CpuUsage;
    loadGeneratorRssMiB: number | null;
    serverRssPeakMiB: number | null;
    loadGeneratorEventLoopP99Ms: number;
    loadGeneratorEventLoopMaxMs: number;
  };
}

/** Scenario per user: exact counts from the weights, shuffled so every scenario ramps up together. */
export function assignScenarios(options: LoadOptions, random: () => number): ScenarioName[] {
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

export async function runPhase(input: PhaseInput): Promise<PhaseResult> {
  const { options, progress, world } = input;
  const label = input.label ?? '[run]';
  if (options.users > world.accounts.length) {
    throw new Error(`${options.users} users asked for, the world has ${world.accounts.length} accounts`);
  }
  const random = seededRandom(options.seed);
  const scenarioOf = assignScenarios(options, random);
  const recorder = input.recorder ?? new Recorder();
  const tracker = new ConnectionTracker();
  const generations = new GenerationCounters();
  const scenarios = new ScenarioCounters();
  for (const s of scenarioOf) scenarios.users.set(s, (scenarios.users.get(s) ?? 0) + 1);

  const pid = input.child.process.pid;
  const cpuStart = await cpuSnapshot(pid);
  const overflowsStart = await listenOverflows();
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();

  const start = performance.now();
  const durationMs = options.durationSeconds * 1000;
  const rampMs = options.rampSeconds * 1000;
  const deadline = start + durationMs;
  recorder.start(start, input.countAfterRamp ? rampMs : 0);
  const ctx: RunContext = {
    origin: input.origin,
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
      `${label} ${bar(elapsed / durationMs)} ${duration(elapsed / 1000)}/${duration(options.durationSeconds)} ` +
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
        establishedTo(input.port),
        pid ? rssMiB(pid) : Promise.resolve(null),
      ]);
      if (established !== null) serverEstablishedPeak = Math.max(serverEstablishedPeak ?? 0, established);
      if (rss !== null) serverRssPeak = Math.max(serverRssPeak ?? 0, rss);
    })();
  }, 2_000);
  let deadlineAt = 0;
  const atDeadline = () => {
    deadlineAt = performance.now();
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
          new VuHttp(input.origin, recorder, tracker, options.timeoutMs),
        );
        users.push(vu);
        recorder.activeUsers += 1;
        try {
          await vu.run();
        } catch (error) {
          progress.log(`${label} user ${i} stopped on an exception: ${errorText(error)}`);
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
      `${label} ${options.users - finished} users still busy ${drainMs} ms after the deadline: cut off`,
    );
  }
  loop.disable();
  const cpuEnd = await cpuSnapshot(pid);
  const overflowsEnd = await listenOverflows();
  const established = await establishedTo(input.port);
  if (established !== null) serverEstablishedPeak = Math.max(serverEstablishedPeak ?? 0, established);
  const peakOpen = tracker.peak;
  const loadGeneratorRss = await rssMiB('self');
  recorder.freeze();
  await Promise.all(users.map((u) => u.http.close()));

  return {
    recorder,
    tracker,
    generations,
    scenarios,
    measuredSeconds: (end - start) / 1000,
    drained,
    deadlineAt,
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
  };
}

const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error));
