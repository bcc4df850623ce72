import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { MEASURABLE_LAYERS } from '../src/platform/http/measurement.js';
import { openRuntime } from '../src/runtime.js';
import { describeMachine, median, writeResultFiles } from './lib/report.js';
import { buildWorkload, type Cleanup, provisionDatabase, seedWorld } from './lib/world.js';
import { CHECK_PATH } from './peers/common.js';

/**
 * `npm run bench:layers [-- --quick] [--rounds N] [--batch N]`
 *
 * What each per-request layer of a warm `POST /authz/check` costs, in one process: one app with
 * every layer on and one per layer with that layer off (`MEASURE_WITHOUT`), all sharing one
 * runtime (pools, fact cache, bus), answering the bench's check requests through `app.inject`
 * (the whole Fastify lifecycle — hooks, validation, serialization, headers — without a socket).
 * Each round times a batch on the full app, then on one layer's app, and so on for every layer;
 * a layer's cost in a round is the full app's µs/request minus that app's, and the report gives
 * the median over the rounds. Over HTTP on this machine a layer of a few µs drowns in the
 * round-to-round spread of the load generator sharing the two cores (`npm run bench --
 * --attribution` shows it); in process, with the app and its alternative a moment apart, it does
 * not. What this leaves out — the socket, HTTP parsing, writing the headers to the wire — is the
 * same for every variant except the header bytes, which `security_headers` still shows.
 */

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const cleanups: Cleanup[] = [];
const log = (message: string) => process.stderr.write(`[layers] ${message}\n`);

function parseOptions() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      rounds: { type: 'string' },
      batch: { type: 'string' },
    },
  });
  const quick = values.quick === true;
  return {
    quick,
    rounds: Number(values.rounds ?? (quick ? 3 : 15)),
    batch: Number(values.batch ?? (quick ? 300 : 2_000)),
  };
}

interface Request {
  headers: Record<string, string>;
  payload: string;
}

/** Which cache layer answered the timed checks (from X-Cache; `undefined` where it is switched off). */
const layersSeen = new Map<string, number>();

/** µs of this process's CPU per request over `count` sequential injects, starting at `offset`. */
async function timeBatch(app: FastifyInstance, requests: Request[], offset: number, count: number) {
  const before = process.cpuUsage();
  for (let i = 0; i < count; i++) {
    const r = requests[(offset + i) % requests.length] as Request;
    const res = await app.inject({ method: 'POST', url: CHECK_PATH, headers: r.headers, payload: r.payload });
    if (res.statusCode !== 200)
      throw new Error(`check answered ${res.statusCode}: ${res.body.slice(0, 200)}`);
    const layer = String(res.headers['x-cache']);
    layersSeen.set(layer, (layersSeen.get(layer) ?? 0) + 1);
  }
  const used = process.cpuUsage(before);
  return (used.user + used.system) / count;
}

async function main(): Promise<void> {
  const options = parseOptions();
  const database = await provisionDatabase('velro_layers', log, (step) => cleanups.push(step));
  const size = { users: 10_000, teams: 500, projects: 20_000, generations: 100_000 };
  await seedWorld(database.url, size, log);
  const jwtSecret = randomBytes(36).toString('base64url');
  const workload = await buildWorkload(database.url, {
    users: size.users,
    jwtSecret,
    pairs: 2_000,
    bulkRequests: 0,
    bulkSize: 100,
  });
  const requests: Request[] = workload.pairs.map((p) => ({
    headers: { authorization: `Bearer ${p.token}`, 'content-type': 'application/json' },
    payload: JSON.stringify({ resource: { type: 'generation', id: p.generationId }, permission: 'view' }),
  }));

  const dataDir = await mkdtemp(join(tmpdir(), 'velro-layers-'));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  // Production settings, as `npm run bench` runs its servers, with the limits out of reach.
  const config = loadConfig({
    NODE_ENV: 'production',
    DATABASE_URL: database.url,
    JWT_SECRET: jwtSecret,
    MEDIA_SIGNING_SECRET: randomBytes(36).toString('base64url'),
    DATA_DIR: dataDir,
    WORKER_ENABLED: 'false',
    CACHE_WARM_INTERVAL_SECONDS: '0',
    USER_RATE_LIMIT_PER_MINUTE: '1000000000',
    OVERLOAD_STARTUP_GRACE_SECONDS: '0',
  });
  const logger = pino({ level: 'error' });
  const runtime = await openRuntime(config, logger);
  cleanups.push(() => runtime.close());
  const variants = ['all', ...MEASURABLE_LAYERS] as const;
  const apps = new Map<string, FastifyInstance>();
  for (const variant of variants) {
    const app = await buildApp({
      ...runtime.deps,
      config: { ...config, MEASURE_WITHOUT: variant === 'all' ? '' : variant },
    });
    await app.ready();
    cleanups.push(() => app.close());
    apps.set(variant, app);
  }
  log(`${apps.size} apps ready; warming the cache and the code (every request once per app)`);
  for (const app of apps.values()) await timeBatch(app, requests, 0, requests.length);

  layersSeen.clear();
  const all = apps.get('all') as FastifyInstance;
  const cost: Record<string, number[]> = Object.fromEntries(MEASURABLE_LAYERS.map((l) => [l, []]));
  const absolute: Record<string, number[]> = Object.fromEntries(variants.map((v) => [v, []]));
  let offset = 0;
  for (let round = 1; round <= options.rounds; round++) {
    for (const layer of MEASURABLE_LAYERS) {
      const full = await timeBatch(all, requests, offset, options.batch);
      const without = await timeBatch(apps.get(layer) as FastifyInstance, requests, offset, options.batch);
      offset += options.batch;
      absolute.all?.push(full);
      absolute[layer]?.push(without);
      cost[layer]?.push(full - without);
    }
    log(
      `round ${round}/${options.rounds} (answered by ${JSON.stringify(Object.fromEntries(layersSeen))}): all ${median(absolute.all ?? []).toFixed(1)} µs/req; ` +
        MEASURABLE_LAYERS.map((l) => `${l} ${(cost[l]?.at(-1) ?? 0).toFixed(1)}`).join(', '),
    );
  }

  const fmt = (n: number) => n.toFixed(1);
  const spread = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return `${fmt(sorted[Math.floor(sorted.length * 0.25)] ?? Number.NaN)} … ${fmt(sorted[Math.floor(sorted.length * 0.75)] ?? Number.NaN)}`;
  };
  const report = {
    date: new Date().toISOString(),
    machine: describeMachine(),
    settings: { rounds: options.rounds, batch: options.batch, database: database.kind, quick: options.quick },
    world: size,
    allMicrosPerRequest: median(absolute.all ?? []),
    layers: MEASURABLE_LAYERS.map((layer) => ({
      layer,
      costMicrosPerRequest: median(cost[layer] ?? []),
      costPerRound: cost[layer],
      withoutMicrosPerRequest: median(absolute[layer] ?? []),
    })),
  };
  const markdown = [
    `# What each layer of a warm check costs, in process ${report.date}`,
    '',
    `Machine: ${report.machine.cpuCount} × ${report.machine.cpuModel}, Node ${report.machine.node}, build ${report.machine.build}. ` +
      `${options.rounds} rounds × ${options.batch} sequential \`app.inject\` checks per app and layer; ` +
      `the bench's world (${size.users.toLocaleString('en-US')} users, ${size.generations.toLocaleString('en-US')} generations) ` +
      'and request set; facts warm in L1.',
    '',
    `Every layer on: **${fmt(report.allMicrosPerRequest)} µs of CPU per request** (median), socket and HTTP parsing excluded.`,
    '',
    '| layer switched off | µs/req without it (median) | layer cost µs/req: median (inter-quartile) |',
    '|---|---:|---:|',
    ...report.layers.map(
      (l) =>
        `| ${l.layer} | ${fmt(l.withoutMicrosPerRequest)} | ${fmt(l.costMicrosPerRequest)} (${spread(l.costPerRound ?? [])}) |`,
    ),
    '',
    "A layer's cost in a round is the full app's µs/request minus the app without it, timed right after.",
    '',
  ].join('\n');
  const files = await writeResultFiles(
    join(BENCH_DIR, 'results'),
    `${options.quick ? 'quick-' : ''}${report.date.slice(0, 10)}-layers`,
    report,
    markdown,
  );
  process.stdout.write(`\n${markdown}\n`);
  log(`written: ${files.join(', ')}`);
}

try {
  await main();
} catch (error) {
  process.stderr.write(
    `[layers] failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 1;
} finally {
  for (const step of cleanups.reverse()) await step().catch(() => {});
}
