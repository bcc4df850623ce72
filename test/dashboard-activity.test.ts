import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { type BrowserContext, chromium, type Locator } from 'playwright-core';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bucketQuantile,
  FleetActivityReader,
  fleetActivityQuery,
  MinuteSeries,
  minuteGrid,
} from '../src/platform/observability/activity.js';
import { bearer, type SignedUp, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

/**
 * The dashboard for people (issue 16, part 7): after sign-ins (one failed), a generation completed
 * and one failed, credits spent and refunded, and denied checks, GET /api/v1/performance/dashboard
 * carries them per minute in `activity` (fleet-wide from the database, per instance from counters),
 * the database query behind it is cached and served by indexes, and /dashboard in chromium draws
 * every new panel with those figures.
 */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const browserRuns = existsSync(CHROMIUM) || process.env.CI === 'true';
const ARTIFACTS = join(process.cwd(), 'test-artifacts');

type Series = (number | null)[];
interface Payload {
  requests: { by_endpoint: Record<string, { count: number; p95_ms: number }> };
  pools: Record<string, { total: number; idle: number; waiting: number }>;
  activity: {
    minute_starts: string[];
    fleet: {
      scope: string;
      read_at: string | null;
      error: string | null;
      sign_ins: { ok: Series; failed: Series };
      generations: { created: Series; completed: Series; failed: Series; cancelled: Series };
      credits: { spent: Series; refunded: Series };
    };
    instance: {
      scope: string;
      since: string;
      denials: { hidden: Series; forbidden: Series };
      responses: { total: Series; client_errors: Series; server_errors: Series };
    };
  };
  db: {
    scope: string;
    pools: Record<
      string,
      {
        waits_1m: number;
        wait_p95_ms: number | null;
        errors_1m: { acquire: number; query: number };
        errors_total: { acquire: number; query: number };
      }
    >;
  };
}

const total = (values: Series) => values.reduce<number>((a, v) => a + (v ?? 0), 0);

/** Polls until `check` holds (bounded): the condition, never a fixed sleep. */
async function until<T>(what: string, read: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last: T = await read();
  while (!check(last)) {
    if (Date.now() > deadline)
      throw new Error(`${what}: not reached in ${timeoutMs} ms: ${JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    last = await read();
  }
  return last;
}

/** How many pixels of an element's screenshot are within a small distance of a colour. */
async function painted(locator: Locator, [r, g, b]: [number, number, number]): Promise<number> {
  const { data, info } = await sharp(await locator.screenshot())
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  let count = 0;
  for (let i = 0; i < data.length; i += info.channels) {
    const near = (offset: number, value: number) => Math.abs((data[i + offset] ?? 0) - value) <= 24;
    if (near(0, r) && near(1, g) && near(2, b)) count += 1;
  }
  return count;
}

const fx = useTestApp({ worker: true, listen: true });
let owner: SignedUp;
let stranger: SignedUp;
let sketchCost: number;

const dashboard = async (): Promise<Payload> => {
  const res = await fetch(`${fx.baseUrl}/api/v1/performance/dashboard`);
  expect(res.status).toBe(200);
  return (await res.json()) as Payload;
};

const post = (who: SignedUp, path: string, body: object) =>
  fetch(`${fx.baseUrl}/api/v1${path}`, {
    method: 'POST',
    headers: { ...bearer(who.accessToken), 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

async function generationStatus(who: SignedUp, id: string): Promise<string> {
  const res = await fetch(`${fx.baseUrl}/api/v1/generations/${id}`, { headers: bearer(who.accessToken) });
  return ((await res.json()) as { status: string }).status;
}

beforeAll(async () => {
  // A model whose provider does not exist: its generations fail (permanently) and are refunded.
  await fx.sql.query(
    `INSERT INTO models (id, name, kind, provider, provider_model, cost_credits, max_width, max_height,
                         default_width, default_height, max_steps, default_steps)
     VALUES ('broken-model', 'Broken', 'image', 'nowhere', 'x', 7, 256, 256, 64, 64, 4, 2)`,
  );
  await fx.t.pipeline.catalogue.load();
  sketchCost = (
    await fx.sql.query<{ cost: number }>(`SELECT cost_credits AS cost FROM models WHERE id = 'velro-sketch'`)
  ).rows[0]?.cost as number;
  owner = await signUp(fx.app);
  stranger = await signUp(fx.app);
}, 60_000);

describe('per-minute counting', () => {
  it('a minute slot reused an hour later starts from zero, and minutes before the start are null', () => {
    const series = new MinuteSeries();
    const t0 = Date.UTC(2026, 0, 1, 12, 0, 30);
    series.add(3, t0);
    series.add(2, t0 + 10_000);
    series.add(1, t0 + 60_000);
    let grid = minuteGrid(t0 + 60_000);
    expect(grid).toHaveLength(60);
    expect(series.values(grid, t0).slice(-3)).toEqual([null, 5, 1]);
    // An hour later the same slots hold other minutes: the old counts are not shown again.
    grid = minuteGrid(t0 + 3_600_000);
    series.add(4, t0 + 3_600_000);
    expect(series.values(grid, t0).reduce<number>((a, v) => a + (v ?? 0), 0)).toBe(5);
    expect(series.values(grid, t0).at(-1)).toBe(4);
  });

  it('interpolates a quantile inside its bucket as Prometheus histogram_quantile does', () => {
    const bounds = [0.001, 0.005, 0.01, Number.POSITIVE_INFINITY];
    // 100 observations: 90 under 1 ms, 10 between 5 and 10 ms.
    expect(bucketQuantile(0.95, bounds, [90, 90, 100, 100])).toBeCloseTo(7.5, 6);
    expect(bucketQuantile(0.5, bounds, [90, 90, 100, 100])).toBeCloseTo((0.5 * 100 * 1) / 90, 6);
    // Beyond the last finite bucket: its bound, as Prometheus answers.
    expect(bucketQuantile(0.95, bounds, [0, 0, 0, 10])).toBe(10);
    expect(bucketQuantile(0.95, bounds, [0, 0, 0, 0])).toBeNull();
  });

  it('a database that does not answer: the error is reported, and asked again only after the TTL', async () => {
    const unreachable = new Kysely({
      dialect: new PostgresDialect({
        pool: new pg.Pool({
          connectionString: 'postgres://nobody@127.0.0.1:1/none',
          connectionTimeoutMillis: 2_000,
        }),
      }),
    });
    let now = Date.now();
    const reader = new FleetActivityReader(
      () => unreachable as never,
      5_000,
      () => now,
    );
    try {
      const grid = minuteGrid(now);
      const first = await reader.read(grid);
      expect(first.error).toMatch(/ECONNREFUSED|connect/);
      expect(first.sign_ins.ok.every((v) => v === 0)).toBe(true);
      await reader.read(grid);
      expect(reader.queries).toBe(1);
      now += 5_000;
      await reader.read(grid);
      expect(reader.queries).toBe(2);
    } finally {
      await unreachable.destroy();
    }
  });
});

describe('GET /api/v1/performance/dashboard: activity', () => {
  it('counts sign-ins, generations by status, credits, denials and 4xx per minute, each labelled with its scope', async () => {
    const before = await dashboard();
    expect(before.activity.minute_starts).toHaveLength(60);
    expect(before.activity.fleet.scope).toBe('fleet');
    expect(before.activity.instance.scope).toBe('instance');
    // A fresh database: nothing happened yet but the two sign-ups (which are not sign-ins).
    expect(total(before.activity.fleet.sign_ins.ok)).toBe(0);
    expect(total(before.activity.fleet.generations.created)).toBe(0);
    // Minutes before this process started are unknown to it (null), not zero.
    expect(before.activity.instance.denials.hidden[0]).toBeNull();
    expect(before.activity.instance.denials.hidden.at(-1)).not.toBeNull();
    const answersBefore = total(before.activity.instance.responses.client_errors);

    // Two sign-ins, one failed.
    for (const password of [owner.password, owner.password, 'not the password']) {
      const res = await fetch(`${fx.baseUrl}/api/v1/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ email: owner.email, password }),
      });
      expect(res.status).toBe(password === owner.password ? 200 : 401);
    }

    // A project, a generation that completes and one that fails (and is refunded).
    const project = await post(owner, '/projects', { name: 'activity' });
    expect(project.status).toBe(201);
    const projectId = ((await project.json()) as { id: string }).id;
    const good = await post(owner, '/generations', { model_id: 'velro-sketch', prompt: 'a calm lake' });
    const bad = await post(owner, '/generations', { model_id: 'broken-model', prompt: 'doomed' });
    expect([good.status, bad.status]).toEqual([202, 202]);
    const goodId = ((await good.json()) as { id: string }).id;
    const badId = ((await bad.json()) as { id: string }).id;
    await until(
      'generation completed',
      () => generationStatus(owner, goodId),
      (s) => s === 'completed',
    );
    await until(
      'generation failed',
      () => generationStatus(owner, badId),
      (s) => s === 'failed',
    );

    // Denials: a check on someone else's project, and reading it (both 404-kind: hidden).
    const check = await post(stranger, '/authz/check', {
      resource: { type: 'project', id: projectId },
      permission: 'view',
    });
    expect(check.status).toBe(200);
    expect(((await check.json()) as { allowed: boolean }).allowed).toBe(false);
    const peek = await fetch(`${fx.baseUrl}/api/v1/projects/${projectId}`, {
      headers: bearer(stranger.accessToken),
    });
    expect(peek.status).toBe(404);

    // The fleet figures are a few seconds old at most: wait for the reading that has them.
    const after = await until(
      'activity with every event',
      dashboard,
      (d) =>
        total(d.activity.fleet.generations.failed) === 1 &&
        total(d.activity.fleet.credits.refunded) === 7 &&
        total(d.activity.fleet.sign_ins.failed) === 1,
    );
    const { fleet, instance } = after.activity;
    expect(fleet.error).toBeNull();
    expect(total(fleet.sign_ins.ok)).toBe(2);
    expect(total(fleet.sign_ins.failed)).toBe(1);
    expect(total(fleet.generations.created)).toBe(2);
    expect(total(fleet.generations.completed)).toBe(1);
    expect(total(fleet.generations.failed)).toBe(1);
    expect(total(fleet.generations.cancelled)).toBe(0);
    expect(total(fleet.credits.spent)).toBe(sketchCost + 7);
    expect(total(fleet.credits.refunded)).toBe(7);
    // Everything happened in the last minute or two: the recent minutes hold it all.
    expect(total(fleet.generations.created.slice(-3))).toBe(2);

    expect(total(instance.denials.hidden)).toBe(2);
    expect(total(instance.denials.forbidden)).toBe(0);
    // The failed sign-in (401) and the stranger's read (404), at least (the polls add 200s only).
    expect(total(instance.responses.client_errors) - answersBefore).toBeGreaterThanOrEqual(2);
    expect(total(instance.responses.server_errors)).toBe(0);
    expect(total(instance.responses.total)).toBeGreaterThan(10);

    // Database health per pool, in this process: waits measured, no failures.
    expect(after.db.scope).toBe('instance');
    const authorization = after.db.pools.authorization;
    expect(authorization?.waits_1m).toBeGreaterThan(0);
    expect(authorization?.wait_p95_ms).toEqual(expect.any(Number));
    expect(authorization?.errors_total).toEqual({ acquire: 0, query: 0 });
    // The top-endpoints table's source: the tracker's per-endpoint stats.
    expect(after.requests.by_endpoint['POST /api/v1/auth/login']?.count).toBe(3);
  }, 90_000);

  it('asks the database at most once per few seconds, however many dashboards poll', async () => {
    await dashboard(); // a reading in the cache
    const checkouts = fx.t.pools.checkouts.analytics;
    const started = Date.now();
    const answers = await Promise.all(Array.from({ length: 40 }, () => dashboard()));
    const elapsed = Date.now() - started;
    expect(answers.every((a) => a.activity.fleet.error === null)).toBe(true);
    // The cache lives 5 s: 40 concurrent polls cost one statement per 5 s elapsed, plus one.
    expect(fx.t.pools.checkouts.analytics - checkouts).toBeLessThanOrEqual(1 + Math.floor(elapsed / 5_000));
    // They all saw one reading or its successor, never forty.
    expect(new Set(answers.map((a) => a.activity.fleet.read_at)).size).toBeLessThanOrEqual(
      1 + Math.floor(elapsed / 5_000),
    );
  }, 60_000);
});

describe.skipIf(!browserRuns)('GET /dashboard in chromium: the activity panels', () => {
  let userDataDir: string;
  let context: BrowserContext;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM))
      throw new Error(`CI=true but there is no chromium at ${CHROMIUM} (.ci/run installs it)`);
    userDataDir = await mkdtemp(join(tmpdir(), 'velro-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
      ],
      viewport: { width: 1366, height: 768 },
      timeout: 30_000,
    });
  }, 60_000);

  afterAll(async () => {
    await context?.close();
    if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
  });

  it('draws sign-ins, generations, credits, denials, 4xx/5xx, the slowest endpoints and pool health', async () => {
    const page = await context.newPage();
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(String(e)));
    expect((await page.goto(`${fx.baseUrl}/dashboard`, { waitUntil: 'load' }))?.status()).toBe(200);

    // Each per-minute chart holds the events of the first test (data-total: the sum it draws).
    const least = {
      'chart-signins': 3,
      'chart-generations': 4,
      'chart-credits': sketchCost + 14,
      'chart-denials': 2,
      'chart-http-errors': 2,
    };
    for (const [id, n] of Object.entries(least)) {
      await expect
        .poll(async () => Number(await page.locator(`#${id}`).getAttribute('data-total')), {
          timeout: 20_000,
          interval: 200,
        })
        .toBeGreaterThanOrEqual(n);
      const box = await page.locator(`#${id} canvas`).boundingBox();
      expect(box?.width, id).toBeGreaterThan(100);
      expect(box?.height, id).toBeGreaterThan(50);
    }
    // …and really painted, even where the process saw a single minute (one dot, no line): the
    // series colours are on the canvases.
    const painting: [string, [number, number, number]][] = [
      ['chart-signins', [47, 158, 68]],
      ['chart-generations', [28, 126, 214]],
      ['chart-credits', [112, 72, 232]],
      ['chart-denials', [224, 49, 49]],
      ['chart-http-errors', [240, 140, 0]],
    ];
    for (const [id, colour] of painting)
      expect(await painted(page.locator(`#${id} canvas`), colour), id).toBeGreaterThan(10);
    expect(await page.locator('#fig-signins').textContent()).toMatch(/^2 ok · 1 failed/);
    expect(await page.locator('#fig-generations').textContent()).toMatch(
      /^2 created · 1 completed · 1 failed · 0 cancelled/,
    );
    expect(await page.locator('#fig-credits').textContent()).toContain(
      `${sketchCost + 7} spent · 7 refunded`,
    );
    expect(await page.locator('#fig-denials').textContent()).toMatch(/^2 hidden · 0 forbidden/);
    expect(await page.locator('#fig-http-errors').textContent()).toMatch(/^4xx \d+(\.\d+)? % · 5xx 0\.00 %/);

    // Fleet and instance panels say which they are.
    expect(await page.locator('#card-signins .scope').textContent()).toBe('fleet');
    expect(await page.locator('#card-denials .scope').textContent()).toBe('this instance');

    // The slowest endpoints, slowest first, from the last minute's requests.
    const endpoints = page.locator('#endpoints tbody tr[data-endpoint]');
    await expect.poll(() => endpoints.count(), { timeout: 10_000 }).toBeGreaterThan(2);
    const p95s = await page.locator('#endpoints tbody tr[data-endpoint] td:nth-child(3)').allTextContents();
    const values = p95s.map((v) => Number(v.replace(/,/g, '')));
    expect(values).toEqual([...values].sort((a, b) => b - a));

    // Pool health: a wait p95 for the authorization pool and its errors (none).
    const authorization = page.locator('#pools tbody tr[data-pool="authorization"]');
    expect(await authorization.locator('.pool-wait').textContent()).toMatch(/^\d[\d.,]* ms$/);
    expect(await authorization.locator('.pool-errors').textContent()).toBe('0 (0)');

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-activity.png'), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  }, 90_000);
});

describe('the fleet query on a large history', () => {
  it('reads the last hour through the time indexes, never a sequential scan', async () => {
    // 40,000 events of each kind from two days ago, then the planner's statistics.
    await fx.sql.query(
      `INSERT INTO generations (user_id, model_id, prompt, status, created_at, completed_at)
       SELECT $1, 'velro-sketch', 'old', 'completed', now() - interval '2 days', now() - interval '2 days'
         FROM generate_series(1, 40000)`,
      [owner.id],
    );
    await fx.sql.query(
      `INSERT INTO credit_transactions (user_id, amount, balance_after, reason, created_at)
       SELECT $1, -1, 0, 'generation_charge', now() - interval '2 days' FROM generate_series(1, 40000)`,
      [owner.id],
    );
    await fx.sql.query(
      `INSERT INTO audit_events (at, actor_id, action, decision)
       SELECT now() - interval '2 days', $1, 'auth.login', 'allow' FROM generate_series(1, 40000)`,
      [owner.id],
    );
    await fx.sql.query('ANALYZE generations; ANALYZE credit_transactions; ANALYZE audit_events');
    const insertedAt = Date.now();
    const kysely = new Kysely({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: fx.db.url }) }),
    });
    try {
      const compiled = fleetActivityQuery(new Date(Date.now() - 3_600_000)).compile(kysely);
      const { rows } = await fx.sql.query(`EXPLAIN (FORMAT JSON) ${compiled.sql}`, [...compiled.parameters]);
      const plan = JSON.stringify(rows[0]);
      expect(plan).not.toContain('Seq Scan');
      // Sign-ins: either of 006's indexes on the log's time (with the action first, or the time
      // alone and the action checked on the hour's rows): a range of the last hour either way.
      expect(plan).toMatch(/"Index Name":"audit_events_(action_at|at_id)_idx"/);
      for (const index of [
        'generations_created_at_idx',
        'generations_finished_at_idx',
        'credit_transactions_spending_at_idx',
      ])
        expect(plan).toContain(`"Index Name":"${index}"`);
      // And the old history is outside the hour: the figures did not move.
      const d = await until(
        'a reading made after the inserts',
        dashboard,
        (p) => Date.parse(p.activity.fleet.read_at ?? '') >= insertedAt,
      );
      expect(total(d.activity.fleet.generations.created)).toBe(2);
      expect(total(d.activity.fleet.generations.completed)).toBe(1);
      expect(total(d.activity.fleet.credits.spent)).toBe(sketchCost + 7);
      expect(total(d.activity.fleet.sign_ins.ok)).toBe(2);
    } finally {
      await kysely.destroy();
    }
  }, 120_000);
});
