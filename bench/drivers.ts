import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { cpuUsage } from 'node:process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import postgres from 'postgres';
import { FACT_ONE_STATEMENT } from '../src/modules/authz/facts.js';
import { buildPairs, loadWorld } from './lib/micro-world.js';
import { describeMachine, median, writeResultFiles } from './lib/report.js';
import { type Cleanup, cpuBetween, provisionDatabase, withClient } from './lib/world.js';

/**
 * `npm run bench:drivers [-- --quick] [--rounds N] [--time-ms N]`
 *
 * node-postgres (`pg`, the service's driver) against postgres.js (`postgres`) on the statements
 * the cold path sends: `SELECT 1` and the one-check facts statement (FACT_ONE_STATEMENT, exactly as
 * the service prepares it), one at a time and 16 in flight. What is measured is this process's own
 * CPU per statement (user + system, `process.cpuUsage`) and statements per second; both drivers
 * use named prepared statements and 16 connections, and answer the same rows (checked first). The
 * drivers alternate within each round (which goes first flips every round), so the machine's drift
 * falls on both alike. postgres.js runs SELECT 1 as a tagged template (its idiomatic, cached form)
 * and the facts statement through `unsafe(text, values, { prepare: true })`, the only way to send a
 * prebuilt statement text.
 */

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const CONCURRENCY = 16;
const log = (message: string) => process.stderr.write(`[drivers] ${message}\n`);
const cleanups: Cleanup[] = [];

type Params = [string, string, string, string | null];
interface Driver {
  name: 'node-postgres' | 'postgres.js';
  select1(): Promise<unknown>;
  facts(params: Params): Promise<unknown[]>;
  close(): Promise<void>;
}

function nodePostgres(url: string): Driver {
  const pool = new pg.Pool({ connectionString: url, max: CONCURRENCY, application_name: 'velro_bench_pg' });
  return {
    name: 'node-postgres',
    select1: () => pool.query('SELECT 1'),
    facts: async (values) =>
      (await pool.query<{ f: unknown[] }>({ ...FACT_ONE_STATEMENT, values })).rows[0]?.f ?? [],
    close: () => pool.end(),
  };
}

function postgresJs(url: string): Driver {
  const sql = postgres(url, {
    max: CONCURRENCY,
    prepare: true,
    onnotice: () => {},
    connection: { application_name: 'velro_bench_postgresjs' },
  });
  return {
    name: 'postgres.js',
    // Its idiomatic form: a tagged template, cached by the template's identity.
    select1: () => sql`SELECT 1`,
    facts: async (values) =>
      ((await sql.unsafe(FACT_ONE_STATEMENT.text, values, { prepare: true }))[0]?.f as unknown[]) ?? [],
    close: () => sql.end({ timeout: 5 }),
  };
}

interface CaseDef {
  name: string;
  what: string;
  inFlight: number;
  op: (driver: Driver, i: number) => Promise<unknown>;
}

interface Sample {
  opsPerSec: number;
  cpuUsPerOp: number;
  /** PostgreSQL's CPU per statement (all its processes), when the server is embedded; else NaN. */
  dbCpuUsPerOp: number;
}

/** Runs `op` with `inFlight` callers for `ms`, after a short warm-up; returns rate and CPU per op. */
async function measure(
  c: CaseDef,
  driver: Driver,
  ms: number,
  dbCpu: () => Map<number, number> | null,
): Promise<Sample> {
  let next = 0;
  const runFor = async (until: number) => {
    let ops = 0;
    await Promise.all(
      Array.from({ length: c.inFlight }, async () => {
        while (performance.now() < until) {
          await c.op(driver, next++);
          ops += 1;
        }
      }),
    );
    return ops;
  };
  await runFor(performance.now() + Math.min(300, ms / 4));
  const dbBefore = dbCpu();
  const cpu = cpuUsage();
  const started = performance.now();
  const ops = await runFor(started + ms);
  const elapsed = performance.now() - started;
  const used = cpuUsage(cpu);
  return {
    opsPerSec: (ops * 1000) / elapsed,
    cpuUsPerOp: (used.user + used.system) / ops,
    dbCpuUsPerOp: (cpuBetween(dbBefore, dbCpu()) * 1e6) / ops,
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      rounds: { type: 'string' },
      'time-ms': { type: 'string' },
    },
  });
  const rounds = Number(values.rounds ?? (values.quick ? 1 : 3));
  const timeMs = Number(values['time-ms'] ?? (values.quick ? 500 : 3000));
  const database = await provisionDatabase('velro_drivers', log, (step) => cleanups.push(step));
  const world = await loadWorld(database.url);
  log(`world: ${world.users} users, ${world.generations} generations in ${world.loadMs} ms`);
  const pairs = await buildPairs(database.url);
  // A live session per subject: the statement verifies it in the same round trip, as in service.
  const sessionOf = await withClient(database.url, async (client) => {
    const { rows } = await client.query<{ id: string; user_id: string }>(
      `INSERT INTO sessions (user_id, expires_at)
       SELECT DISTINCT s, now() + interval '1 day' FROM unnest($1::uuid[]) AS s
       WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = s)
       RETURNING id, user_id`,
      [[...new Set(pairs.map((p) => p.subjectId))]],
    );
    // Settled before measuring: no autovacuum or checkpoint of the load in PostgreSQL's CPU figures.
    await client.query('VACUUM (ANALYZE)');
    await client.query('CHECKPOINT');
    return new Map(rows.map((r) => [r.user_id, r.id]));
  });
  const params: Params[] = pairs.map((p) => [
    'generation',
    p.generationId,
    p.subjectId,
    sessionOf.get(p.subjectId) ?? null,
  ]);

  const drivers = [nodePostgres(database.url), postgresJs(database.url)];
  cleanups.push(async () => {
    await Promise.all(drivers.map((d) => d.close()));
  });

  // Same answers: every pair's row, through both drivers.
  for (const p of params) {
    const [a, b] = await Promise.all(drivers.map((d) => d.facts(p)));
    if (JSON.stringify(a) !== JSON.stringify(b))
      throw new Error(
        `the drivers disagree on ${p.join(', ')}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`,
      );
  }
  log(`both drivers return the same facts row for all ${params.length} pairs`);

  const pick = (i: number) => params[i % params.length] as Params;
  const cases: CaseDef[] = [
    { name: 'select1', what: 'SELECT 1, one at a time', inFlight: 1, op: (d) => d.select1() },
    {
      name: 'facts',
      what: 'one-check facts statement, one at a time',
      inFlight: 1,
      op: (d, i) => d.facts(pick(i)),
    },
    {
      name: `facts_x${CONCURRENCY}`,
      what: `one-check facts statement, ${CONCURRENCY} in flight`,
      inFlight: CONCURRENCY,
      op: (d, i) => d.facts(pick(i)),
    },
  ];
  const samples = new Map<string, Sample[]>();
  const loads: number[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const c of cases) {
      const order = round % 2 === 0 ? drivers : [...drivers].reverse();
      for (const d of order) {
        const s = await measure(c, d, timeMs, database.processCpu);
        const key = `${c.name}|${d.name}`;
        samples.set(key, [...(samples.get(key) ?? []), s]);
        log(
          `round ${round + 1}/${rounds} ${c.name.padEnd(10)} ${d.name.padEnd(13)} ` +
            `${Math.round(s.opsPerSec).toLocaleString('en-US')} /s, ${s.cpuUsPerOp.toFixed(1)} µs CPU/op`,
        );
      }
    }
    loads.push(Math.round((loadavg()[0] ?? 0) * 100) / 100);
  }

  const rows = cases.flatMap((c) =>
    drivers.map((d) => {
      const s = samples.get(`${c.name}|${d.name}`) ?? [];
      return {
        case: c.name,
        what: c.what,
        driver: d.name,
        opsPerSec: median(s.map((x) => x.opsPerSec)),
        opsPerSecRange: [Math.min(...s.map((x) => x.opsPerSec)), Math.max(...s.map((x) => x.opsPerSec))],
        cpuUsPerOp: median(s.map((x) => x.cpuUsPerOp)),
        cpuUsPerOpRange: [Math.min(...s.map((x) => x.cpuUsPerOp)), Math.max(...s.map((x) => x.cpuUsPerOp))],
        dbCpuUsPerOp: median(s.map((x) => x.dbCpuUsPerOp)),
      };
    }),
  );
  const report = {
    date: new Date().toISOString(),
    machine: describeMachine(),
    settings: { quick: values.quick, rounds, timeMs, connections: CONCURRENCY, database: database.kind },
    world: { users: world.users, generations: world.generations, pairs: params.length },
    rows,
    loadAverages: loads,
  };
  const n = (v: number) => Math.round(v).toLocaleString('en-US');
  const ratio = (name: string, field: 'opsPerSec' | 'cpuUsPerOp') => {
    const [a, b] = drivers.map((d) => rows.find((r) => r.case === name && r.driver === d.name)?.[field] ?? 0);
    return (b ?? 0) / (a || 1);
  };
  const markdown = [
    `# node-postgres against postgres.js ${report.date}`,
    '',
    `Machine: ${report.machine.cpuCount} × ${report.machine.cpuModel}, Node ${report.machine.node}, build ${report.machine.build}; ` +
      `load average after each round: ${loads.join(', ')}.`,
    `Settings: ${rounds} interleaved rounds, ${timeMs} ms per case and driver, ${CONCURRENCY} connections per driver, ` +
      `named prepared statements, database: ${database.kind}. Facts for ${params.length} (subject, generation) pairs ` +
      `of the micro world (${n(world.users)} users, ${n(world.generations)} generations), each with a live session; ` +
      'both drivers returned the same row for every pair.',
    '',
    '| case | driver | statements/s median (min–max) | Node CPU µs/statement median (min–max) | PostgreSQL CPU µs/statement |',
    '|---|---|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.what} | ${r.driver} | ${n(r.opsPerSec)} (${n(r.opsPerSecRange[0] ?? 0)}–${n(r.opsPerSecRange[1] ?? 0)}) | ` +
        `${r.cpuUsPerOp.toFixed(1)} (${(r.cpuUsPerOpRange[0] ?? 0).toFixed(1)}–${(r.cpuUsPerOpRange[1] ?? 0).toFixed(1)}) | ` +
        `${Number.isNaN(r.dbCpuUsPerOp) ? '– (not our server)' : r.dbCpuUsPerOp.toFixed(1)} |`,
    ),
    '',
    `postgres.js ÷ node-postgres: ${cases
      .map(
        (c) =>
          `${c.name} ${ratio(c.name, 'opsPerSec').toFixed(2)} × the rate at ${ratio(c.name, 'cpuUsPerOp').toFixed(2)} × the CPU`,
      )
      .join('; ')}.`,
    '',
  ].join('\n');
  const base = `${values.quick ? 'quick-' : ''}drivers-${report.date.slice(0, 10)}`;
  const files = await writeResultFiles(join(BENCH_DIR, 'results'), base, report, markdown);
  process.stdout.write(`\n${markdown}\n`);
  log(`written: ${files.join(', ')}`);
  return 0;
}

let exitCode = 1;
try {
  exitCode = await main();
} catch (error) {
  process.stderr.write(
    `[drivers] failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
} finally {
  for (const step of cleanups.reverse()) {
    try {
      await step();
    } catch (error) {
      log(`cleanup step failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}
process.exit(exitCode);
