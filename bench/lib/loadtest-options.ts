import { parseArgs } from 'node:util';

/** The scenarios of seed 002, and their mix. */
export const SCENARIOS = ['auth_heavy', 'generation_workflow', 'collaboration'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];
export type ScenarioChoice = ScenarioName | 'mixed';

/** Seed 002 (and SPEC §7): 40 % auth, 35 % generation workflow, 25 % collaboration. */
export const MIXED_WEIGHTS: Record<ScenarioName, number> = {
  auth_heavy: 0.4,
  generation_workflow: 0.35,
  collaboration: 0.25,
};

export interface LoadOptions {
  scenario: ScenarioChoice;
  users: number;
  durationSeconds: number;
  rampSeconds: number;
  thinkMinMs: number;
  thinkMaxMs: number;
  /** Per request: headers and body each, and the connect. */
  timeoutMs: number;
  /** Registrations and fixture requests in flight during setup. */
  setupConcurrency: number;
  /** Users per team built in setup (an owner and its members, one team project, one generation). */
  teamSize: number;
  /** Password sign-ins per second across all virtual users (argon2id costs ~15 ms of CPU each). */
  loginRate: number;
  /** Generation creates per second across all virtual users (the in-process worker renders them). */
  createRate: number;
  /** Longest time a virtual user reads one generation's event stream. */
  sseMaxMs: number;
  /** Share of generation observations done through the event stream instead of polling. */
  sseShare: number;
  /** LOCAL_PROVIDER_STEP_DELAY_MS for the server under test. */
  stepDelayMs: number;
  /** How long to wait after setup for the generation queue to drain. */
  drainSeconds: number;
  seed: number;
  /** Where the JSON and Markdown reports go. */
  outDir: string | null;
  /** `--sweep 500,1000,…`: one stage per user count (ascending), one world built for the largest. */
  sweep: number[] | null;
  /** `--service-env KEY=VALUE` (repeatable): extra environment of the service under test. */
  serviceEnv: Record<string, string>;
  /** `--profile DIR`: the service runs under `node --cpu-prof` and writes its profile into DIR on exit. */
  profileDir: string | null;
  /** `--service-log FILE`: everything the service prints is appended to FILE (e.g. with LOG_LEVEL=info). */
  serviceLog: string | null;
  /**
   * `--fresh-database`: with DATABASE_URL, run in a new database created for this run (migrated by
   * the service at start, dropped at the end) under a Redis key prefix of its own, so consecutive
   * runs start from the same empty state instead of on the rows every earlier run left.
   */
  freshDatabase: boolean;
  /**
   * `--soak`: one long run (default 30 min with a 5-min ramp) sampled every `sampleSeconds`: the
   * service's RSS, heap and event loop, and the users' latency, over time, judged flat or not over
   * the last `judgeSeconds` (see loadtest-soak.ts). Null when not a soak.
   */
  soak: { sampleSeconds: number; judgeSeconds: number } | null;
}

const USAGE = `npm run loadtest -- [--scenario mixed|auth_heavy|generation_workflow|collaboration]
  [--users N] [--duration S] [--ramp-seconds S] [--think-ms MIN-MAX|MS] [--timeout-ms MS]
  [--setup-concurrency N] [--team-size N] [--login-rate N] [--create-rate N]
  [--sse-max-ms MS] [--sse-share 0..1] [--step-delay-ms MS] [--drain-seconds S] [--seed N] [--out DIR]
  [--sweep N,N,…] [--service-env KEY=VALUE]… [--profile DIR] [--service-log FILE]
  [--fresh-database]
  [--soak [--sample-seconds S] [--judge-minutes M]]

--sweep runs one stage per user count against one service and one world (built for the largest
count); --duration is then per stage (default 30 s) and --users is not used.
--soak runs --users for --duration (default 1800 s, ramp 300 s), samples the service's memory and
event loop and the users' latency every --sample-seconds (default 30), and judges RSS and p95 flat
(trend within 10 %) over the last --judge-minutes (default 20); the chart is a PNG beside the report.`;

export function parseLoadOptions(argv: string[] = process.argv.slice(2)): LoadOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      scenario: { type: 'string', default: 'mixed' },
      users: { type: 'string' },
      duration: { type: 'string' },
      'ramp-seconds': { type: 'string' },
      'think-ms': { type: 'string' },
      'timeout-ms': { type: 'string' },
      'setup-concurrency': { type: 'string' },
      'team-size': { type: 'string' },
      'login-rate': { type: 'string' },
      'create-rate': { type: 'string' },
      'sse-max-ms': { type: 'string' },
      'sse-share': { type: 'string' },
      'step-delay-ms': { type: 'string' },
      'drain-seconds': { type: 'string' },
      seed: { type: 'string' },
      out: { type: 'string' },
      sweep: { type: 'string' },
      'service-env': { type: 'string', multiple: true },
      profile: { type: 'string' },
      'service-log': { type: 'string' },
      'fresh-database': { type: 'boolean', default: false },
      soak: { type: 'boolean', default: false },
      'sample-seconds': { type: 'string' },
      'judge-minutes': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const scenario = values.scenario ?? 'mixed';
  if (scenario !== 'mixed' && !(SCENARIOS as readonly string[]).includes(scenario)) {
    throw new Error(`--scenario must be mixed or one of ${SCENARIOS.join(', ')}, got ${scenario}`);
  }
  const sweep = values.sweep === undefined ? null : parseSweep(values.sweep);
  if (sweep && values.users !== undefined) {
    throw new Error('--users and --sweep exclude each other: the sweep names its user counts');
  }
  const soak = values.soak === true;
  if (soak && sweep) throw new Error('--soak and --sweep exclude each other');
  const users = sweep ? Math.max(...sweep) : integer('users', values.users, 200, 1, 100_000);
  const durationSeconds = integer('duration', values.duration, sweep ? 30 : soak ? 1_800 : 60, 1, 7_200);
  const rampSeconds =
    values['ramp-seconds'] === undefined
      ? soak
        ? Math.min(300, Math.round(durationSeconds / 6))
        : Math.max(1, Math.round(durationSeconds * 0.1))
      : integer('ramp-seconds', values['ramp-seconds'], 0, 0, durationSeconds);
  if (!soak && (values['sample-seconds'] !== undefined || values['judge-minutes'] !== undefined))
    throw new Error('--sample-seconds and --judge-minutes belong to --soak');
  const [thinkMinMs, thinkMaxMs] = thinkRange(values['think-ms'] ?? '500-1500');
  const teamSize = integer('team-size', values['team-size'], 5, 2, 50);
  return {
    scenario: scenario as ScenarioChoice,
    users,
    durationSeconds,
    rampSeconds,
    thinkMinMs,
    thinkMaxMs,
    timeoutMs: integer('timeout-ms', values['timeout-ms'], 10_000, 100, 120_000),
    setupConcurrency: integer('setup-concurrency', values['setup-concurrency'], 8, 1, 256),
    teamSize,
    loginRate: number('login-rate', values['login-rate'], 10, 0, 10_000),
    createRate: number('create-rate', values['create-rate'], 5, 0, 10_000),
    sseMaxMs: integer('sse-max-ms', values['sse-max-ms'], 5_000, 100, 60_000),
    sseShare: number('sse-share', values['sse-share'], 0.25, 0, 1),
    stepDelayMs: integer('step-delay-ms', values['step-delay-ms'], 5, 0, 10_000),
    drainSeconds: integer('drain-seconds', values['drain-seconds'], 120, 0, 3_600),
    seed: integer('seed', values.seed, Math.floor(Math.random() * 2 ** 31), 0, 2 ** 31),
    outDir: values.out ?? null,
    sweep,
    serviceEnv: parseServiceEnv(values['service-env'] ?? []),
    profileDir: values.profile ?? null,
    serviceLog: values['service-log'] ?? null,
    freshDatabase: values['fresh-database'] === true,
    soak: soak
      ? {
          sampleSeconds: integer('sample-seconds', values['sample-seconds'], 30, 1, 600),
          judgeSeconds: 60 * integer('judge-minutes', values['judge-minutes'], 20, 1, 120),
        }
      : null,
  };
}

/** `500,1000,2000`: distinct positive user counts, returned in ascending order. */
export function parseSweep(raw: string): number[] {
  const counts = raw.split(',').map((part) => part.trim());
  const values = counts.map((part) => Number(part));
  if (
    counts.length === 0 ||
    values.some((v, i) => counts[i] === '' || !Number.isInteger(v) || v < 1 || v > 100_000)
  ) {
    throw new Error(`--sweep must be user counts from 1 to 100000 separated by commas, got ${raw}`);
  }
  return [...new Set(values)].sort((a, b) => a - b);
}

/** `KEY=VALUE` pairs; the last one of a key wins. */
export function parseServiceEnv(pairs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const match = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(pair);
    if (!match) throw new Error(`--service-env must be KEY=VALUE, got ${pair}`);
    env[match[1]!] = match[2]!;
  }
  return env;
}

function thinkRange(raw: string): [number, number] {
  const match = /^(\d+)(?:-(\d+))?$/.exec(raw.trim());
  if (!match) throw new Error(`--think-ms must be MS or MIN-MAX (milliseconds), got ${raw}`);
  const min = Number(match[1]);
  const max = match[2] === undefined ? min : Number(match[2]);
  if (max < min) throw new Error(`--think-ms: ${max} is below ${min}`);
  return [min, max];
}

function integer(flag: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`--${flag} must be an integer from ${min} to ${max}, got ${raw}`);
  }
  return value;
}

function number(flag: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new Error(`--${flag} must be a number from ${min} to ${max}, got ${raw}`);
  }
  return value;
}
