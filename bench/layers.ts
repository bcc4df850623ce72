import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector';
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
import { topSelfTime } from './lib/profile.js';
import { describeMachine, median, writeResultFiles } from './lib/report.js';
import { buildWorkload, type Cleanup, provisionDatabase, seedWorld } from './lib/world.js';
import { addCheckRoute, BULK_PATH, BULK_SIZE, CHECK_PATH, createPeer } from './peers/common.js';

/**
 * `npm run bench:layers [-- --quick] [--rounds N] [--batch N] [--bulk]`
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
 *
 * `--bulk`: the same for `POST /authz/check-bulk` with 100 warm checks per request (the bench's
 * bulk bodies), where the per-check work outweighs the per-request layers: µs per request of 100
 * checks, against `none` only (the bare_check peer has no bulk route) → <date>-layers-bulk.*.
 */

/** Reference apps timed against the full one: every layer off at once, and the bare_check peer. */
const REFERENCES = ['none', 'bare_check'] as const;
const REFERENCE_NAMES: Record<(typeof REFERENCES)[number], string> = {
  none: 'Velro with every layer above off at once (`none`)',
  bare_check: "the bench's `bare_check` peer (same request, JWT verified, no decision)",
};

/** The bare_check peer (bench/peers/bare-check.ts) built in this process. */
function bareCheckApp(jwtSecret: string): FastifyInstance {
  process.env.JWT_SECRET = jwtSecret;
  const app = createPeer();
  addCheckRoute(app, () => true);
  return app;
}

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const cleanups: Cleanup[] = [];
const log = (message: string) => process.stderr.write(`[layers] ${message}\n`);

function parseOptions() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      rounds: { type: 'string' },
      batch: { type: 'string' },
      profile: { type: 'string' },
      bulk: { type: 'boolean', default: false },
    },
  });
  const quick = values.quick === true;
  const bulk = values.bulk === true;
  return {
    quick,
    /** `POST /authz/check-bulk` with 100 checks per request instead of single checks. */
    bulk,
    rounds: Number(values.rounds ?? (quick ? 3 : 15)),
    batch: Number(values.batch ?? (bulk ? (quick ? 30 : 200) : quick ? 300 : 2_000)),
    /** Variants to CPU-profile after the timed rounds (comma-separated; `all`, a layer, a reference). */
    profile: (values.profile ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  };
}

interface Request {
  url: string;
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
    const res = await app.inject({ method: 'POST', url: r.url, headers: r.headers, payload: r.payload });
    if (res.statusCode !== 200)
      throw new Error(`check answered ${res.statusCode}: ${res.body.slice(0, 200)}`);
    const layer = String(res.headers['x-cache']);
    layersSeen.set(layer, (layersSeen.get(layer) ?? 0) + 1);
  }
  const used = process.cpuUsage(before);
  return (used.user + used.system) / count;
}

/** A CPU profile of `count` sequential checks on one app, summarised by self time. */
async function profileVariant(app: FastifyInstance, requests: Request[], count: number) {
  const dir = await mkdtemp(join(tmpdir(), 'velro-layers-profile-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const session = new Session();
  session.connect();
  const post = <T>(method: string, params?: object) =>
    new Promise<T>((resolve, reject) =>
      session.post(method, params, (error, result) => (error ? reject(error) : resolve(result as T))),
    );
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
  await timeBatch(app, requests, 0, count);
  const { profile } = await post<{ profile: object }>('Profiler.stop');
  session.disconnect();
  await writeFile(join(dir, 'layers.cpuprofile'), JSON.stringify(profile));
  return topSelfTime(dir, join(BENCH_DIR, '..'), undefined, 25);
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
    bulkRequests: options.bulk ? 200 : 0,
    bulkSize: BULK_SIZE,
  });
  const headers = (token: string) => ({
    authorization: `Bearer ${token}`,
    'content-type': 'application/json',
  });
  const requests: Request[] = options.bulk
    ? workload.bulk.map((b) => ({
        url: BULK_PATH,
        headers: headers(b.token),
        payload: JSON.stringify({
          checks: b.generationIds.map((id) => ({ resource: { type: 'generation', id }, permission: 'view' })),
        }),
      }))
    : workload.pairs.map((p) => ({
        url: CHECK_PATH,
        headers: headers(p.token),
        payload: JSON.stringify({ resource: { type: 'generation', id: p.generationId }, permission: 'view' }),
      }));
  // The bare_check peer answers single checks only.
  const references = options.bulk ? REFERENCES.filter((r) => r !== 'bare_check') : [...REFERENCES];

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
    // Admission's class budgets stay (sequential checks never reach them); its loop shedding would
    // refuse checks whenever this shared machine is busy, which is not what is measured here.
    ADMISSION_LOOP_DELAY_TARGET_MS: '0',
  });
  const logger = pino({ level: 'error' });
  const runtime = await openRuntime(config, logger);
  cleanups.push(() => runtime.close());
  const variants = ['all', ...MEASURABLE_LAYERS, ...references];
  const apps = new Map<string, FastifyInstance>();
  for (const variant of variants) {
    const app =
      variant === 'bare_check'
        ? bareCheckApp(jwtSecret)
        : await buildApp({
            ...runtime.deps,
            config: {
              ...config,
              MEASURE_WITHOUT:
                variant === 'all' ? '' : variant === 'none' ? MEASURABLE_LAYERS.join(',') : variant,
            },
          });
    await app.ready();
    cleanups.push(() => app.close());
    apps.set(variant, app);
  }
  log(`${apps.size} apps ready; warming the cache and the code (every request once per app)`);
  for (const app of apps.values()) await timeBatch(app, requests, 0, requests.length);

  layersSeen.clear();
  const all = apps.get('all') as FastifyInstance;
  const cost: Record<string, number[]> = Object.fromEntries(
    [...MEASURABLE_LAYERS, ...references].map((l) => [l, []]),
  );
  const absolute: Record<string, number[]> = Object.fromEntries(variants.map((v) => [v, []]));
  let offset = 0;
  for (let round = 1; round <= options.rounds; round++) {
    // Each layer's app, then each reference, right after a batch of the full app.
    for (const variant of [...MEASURABLE_LAYERS, ...references]) {
      const full = await timeBatch(all, requests, offset, options.batch);
      const other = await timeBatch(apps.get(variant) as FastifyInstance, requests, offset, options.batch);
      offset += options.batch;
      absolute.all?.push(full);
      absolute[variant]?.push(other);
      cost[variant]?.push(full - other);
    }
    log(
      `round ${round}/${options.rounds} (answered by ${JSON.stringify(Object.fromEntries(layersSeen))}): all ${median(absolute.all ?? []).toFixed(1)} µs/req; ` +
        [...MEASURABLE_LAYERS, ...references]
          .map((l) => `${l} ${(cost[l]?.at(-1) ?? 0).toFixed(1)}`)
          .join(', '),
    );
  }

  const profiles = [];
  for (const variant of options.profile) {
    const app = apps.get(variant);
    if (!app)
      throw new Error(`--profile: unknown variant ${variant} (known: ${[...apps.keys()].join(', ')})`);
    log(`profiling ${variant}: ${options.batch * 5} checks`);
    profiles.push({ variant, ...(await profileVariant(app, requests, options.batch * 5)) });
  }

  const fmt = (n: number) => n.toFixed(1);
  const spread = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return `${fmt(sorted[Math.floor(sorted.length * 0.25)] ?? Number.NaN)} … ${fmt(sorted[Math.floor(sorted.length * 0.75)] ?? Number.NaN)}`;
  };
  const report = {
    date: new Date().toISOString(),
    machine: describeMachine(),
    settings: {
      rounds: options.rounds,
      batch: options.batch,
      database: database.kind,
      quick: options.quick,
      route: options.bulk ? `${BULK_PATH} (${BULK_SIZE} checks per request)` : CHECK_PATH,
    },
    world: size,
    allMicrosPerRequest: median(absolute.all ?? []),
    layers: MEASURABLE_LAYERS.map((layer) => ({
      layer,
      costMicrosPerRequest: median(cost[layer] ?? []),
      costPerRound: cost[layer],
      withoutMicrosPerRequest: median(absolute[layer] ?? []),
    })),
    profiles,
    references: references.map((reference) => ({
      reference,
      microsPerRequest: median(absolute[reference] ?? []),
      gapMicrosPerRequest: median(cost[reference] ?? []),
      gapPerRound: cost[reference],
    })),
  };
  const markdown = [
    `# What each layer of a warm ${options.bulk ? `bulk check (${BULK_SIZE} checks per request)` : 'check'} costs, in process ${report.date}`,
    '',
    `Machine: ${report.machine.cpuCount} × ${report.machine.cpuModel}, Node ${report.machine.node}, build ${report.machine.build}. ` +
      `${options.rounds} rounds × ${options.batch} sequential \`app.inject\` ${options.bulk ? `bulk requests of ${BULK_SIZE} checks` : 'checks'} per app and layer; ` +
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
    '| reference | µs/req (median) | full app minus it, µs/req: median (inter-quartile) |',
    '|---|---:|---:|',
    ...report.references.map(
      (r) =>
        `| ${REFERENCE_NAMES[r.reference]} | ${fmt(r.microsPerRequest)} | ${fmt(r.gapMicrosPerRequest)} (${spread(r.gapPerRound ?? [])}) |`,
    ),
    '',
    'What the full app costs beyond `none` is the sum of its measurable layers; what `none` costs ' +
      "beyond `bare_check` is the rest of Velro's request path (its app's hooks and plugins, the " +
      "route's own work: the check, the answer's schema) that no switch removes.",
    '',
    ...profiles.flatMap((p) => [
      `## Where \`${p.variant}\` spends its CPU (in-process profile, self time)`,
      '',
      '| area | self % |',
      '|---|---:|',
      ...p.areas.map((a) => `| ${a.area} | ${a.selfPercent} |`),
      '',
      '| function | location | self % |',
      '|---|---|---:|',
      ...p.functions.map((f) => `| ${f.function} | ${f.location} | ${f.selfPercent} |`),
      '',
    ]),
  ].join('\n');
  const files = await writeResultFiles(
    join(BENCH_DIR, 'results'),
    `${options.quick ? 'quick-' : ''}${report.date.slice(0, 10)}-layers${options.bulk ? '-bulk' : ''}`,
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
