import {
  CliError,
  type Command,
  HELP_OPTION,
  JSON_OPTION,
  type OptionValues,
  stringOption,
  usageError,
} from './output.js';

/** What this command needs of bench/lib/seed.ts (a development checkout's bulk loader). */
interface SeedModule {
  seedData(
    url: string,
    options: {
      users: number;
      generations: number;
      teams?: number;
      projects?: number;
      seed?: number;
      password?: string;
      reset?: boolean;
      media?: boolean;
      ledger?: boolean;
      initialCredits?: number;
      argon2?: { memoryKib: number; timeCost: number };
    },
    onProgress?: (p: { phase: string; done: number; total: number }) => void,
  ): Promise<SeedReport>;
}

interface SeedReport {
  seed: number;
  password: string;
  emailPattern: string;
  counts: Record<string, unknown>;
  rows: number;
  totalMs: number;
  revision: number;
}

/** Resolved at run time: the loader is part of the benchmarks, which a deployment may not ship. */
const SEED_MODULE = new URL('../../bench/lib/seed.ts', import.meta.url);

function count(values: OptionValues, name: string): number | undefined {
  const raw = stringOption(values, name);
  if (raw === undefined) return undefined;
  const match = /^(\d+(?:\.\d+)?)([km]?)$/i.exec(raw.replaceAll('_', '').trim());
  const multiplier = { '': 1, k: 1_000, m: 1_000_000 }[(match?.[2] ?? '').toLowerCase()] ?? 1;
  const value = match ? Number(match[1]) * multiplier : Number.NaN;
  if (!Number.isSafeInteger(value) || value < 0) throw usageError(`--${name} is not a count: ${raw}`);
  return value;
}

export const seedData: Command = {
  name: 'seed-data',
  summary: 'bulk test data for benchmarks and load tests (bench/lib/seed.ts)',
  help: `usage: velro seed-data --users N --generations M [options] [--json]

Loads users, teams, projects, generations, media and a matching credit ledger with COPY, in one
transaction (bench/lib/seed.ts; needs a development checkout). Counts take k and m (100k, 10m).
Seeded users are user<N>@seed.velro.test with one shared password.

  --users N            users to create
  --generations M      generations to create
  --teams N            default users / 20
  --projects N         default users x 2
  --seed N             PRNG seed, default 1 (same seed, same data)
  --password P         every seeded user's password
  --reset              TRUNCATE the seeded tables (and sessions, service keys) first
  --no-media           no media rows
  --no-ledger          no credit ledger rows
  --json               print the report as JSON
`,
  options: {
    users: { type: 'string' },
    generations: { type: 'string' },
    teams: { type: 'string' },
    projects: { type: 'string' },
    seed: { type: 'string' },
    password: { type: 'string' },
    reset: { type: 'boolean', default: false },
    'no-media': { type: 'boolean', default: false },
    'no-ledger': { type: 'boolean', default: false },
    ...JSON_OPTION,
    ...HELP_OPTION,
  },
  async run({ values, positionals, out }) {
    if (positionals.length > 0) throw usageError(`unexpected argument: ${positionals[0]}`);
    const users = count(values, 'users');
    const generations = count(values, 'generations');
    if (users === undefined || generations === undefined)
      throw usageError('--users and --generations are required');
    const teams = count(values, 'teams');
    const projects = count(values, 'projects');
    const seed = count(values, 'seed');
    const password = stringOption(values, 'password');

    let loader: SeedModule;
    try {
      loader = (await import(SEED_MODULE.href)) as SeedModule;
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new CliError(`seed-data needs bench/lib/seed.ts from a development checkout (${reason})`);
    }
    if (typeof loader.seedData !== 'function')
      throw new CliError('bench/lib/seed.ts has no seedData function');

    const { withDatabase } = await import('./database.js');
    const report = await withDatabase(async ({ url, config }) => {
      let lastPhase = '';
      return loader.seedData(
        url,
        {
          users,
          generations,
          ...(teams !== undefined ? { teams } : {}),
          ...(projects !== undefined ? { projects } : {}),
          ...(seed !== undefined ? { seed } : {}),
          ...(password !== undefined ? { password } : {}),
          reset: values.reset === true,
          media: values['no-media'] !== true,
          ledger: values['no-ledger'] !== true,
          initialCredits: config.INITIAL_CREDITS,
          argon2: { memoryKib: config.ARGON2_MEMORY_KIB, timeCost: config.ARGON2_TIME_COST },
        },
        (p) => {
          if (p.phase !== lastPhase) out.note(`${p.phase}: ${p.total.toLocaleString('en-US')} rows`);
          lastPhase = p.phase;
        },
      );
    });
    out.result(
      [
        `seeded ${report.rows.toLocaleString('en-US')} rows in ${(report.totalMs / 1000).toFixed(1)} s (authz revision ${report.revision})`,
        ...Object.entries(report.counts).map(
          ([k, v]) => `  ${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`,
        ),
        `sign in as any ${report.emailPattern} with the password ${report.password}`,
      ].join('\n'),
      report,
    );
  },
};
