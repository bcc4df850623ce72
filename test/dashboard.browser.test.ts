import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BrowserContext, chromium, type Locator, type Page } from 'playwright-core';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bearer,
  createTestDatabase,
  type SignedUp,
  signUp,
  startTestApp,
  type TestApp,
} from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

/**
 * The live dashboard in a real browser (Debian's chromium driven by playwright-core): after traffic
 * across the route classes, /dashboard draws its charts with data, lists the alerts, logs no error
 * and asks no host but the app for anything. Skipped only on a developer machine without chromium;
 * under CI=true it always runs (`.ci/run` installs chromium).
 */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const runs = existsSync(CHROMIUM) || process.env.CI === 'true';
const ARTIFACTS = join(process.cwd(), 'test-artifacts');
const OPS_TOKEN = 'ops-token-for-the-dashboard-test-0123';

/** This machine's first non-loopback IPv4 address, if it has one. */
function lanAddress(): string | null {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const a of addresses ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return null;
}

async function listen(t: TestApp): Promise<string> {
  await t.app.listen({ host: '127.0.0.1', port: 0 });
  const address = t.app.server.address();
  if (!address || typeof address !== 'object') throw new Error('the app is not listening');
  return `http://127.0.0.1:${address.port}`;
}

async function launch(userDataDir: string): Promise<BrowserContext> {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1366, height: 768 },
    timeout: 30_000,
  });
}

/** Waits until the page has rendered at least `n` polls (it counts them on `#dashboard[data-points]`). */
async function waitForPoints(page: Page, n: number, timeout: number): Promise<void> {
  await expect
    .poll(async () => Number(await page.locator('#dashboard').getAttribute('data-points')), {
      timeout,
      interval: 100,
    })
    .toBeGreaterThanOrEqual(n);
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

/** One attribute of every element a locator matches. */
async function attributes(locator: Locator, name: string): Promise<(string | null)[]> {
  return Promise.all((await locator.all()).map((item) => item.getAttribute(name)));
}

/** What a page did that it should not: console errors, uncaught exceptions, requests elsewhere. */
function watch(page: Page, origin: string) {
  const problems = { consoleErrors: [] as string[], pageErrors: [] as string[], foreign: [] as string[] };
  const requests: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => problems.pageErrors.push(String(error)));
  page.on('request', (request) => {
    const url = request.url();
    requests.push(url);
    if (url.startsWith('data:') || url.startsWith('blob:')) return;
    if (new URL(url).origin !== origin) problems.foreign.push(url);
  });
  return { problems, requests };
}

describe.skipIf(!runs)('GET /dashboard in chromium', () => {
  const fx = useTestApp({ redis: true, worker: true, listen: true });
  let userDataDir: string;
  let context: BrowserContext;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM))
      throw new Error(`CI=true but there is no chromium at ${CHROMIUM} (.ci/run installs it)`);
    userDataDir = await mkdtemp(join(tmpdir(), 'velro-chromium-'));
    context = await launch(userDataDir);
  });

  afterAll(async () => {
    await context?.close();
    if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
  });

  /** Requests over real HTTP across every route class: ultra_fast, critical_auth, fast, standard, heavy. */
  async function traffic(users: SignedUp[], rounds: number) {
    for (let round = 0; round < rounds; round++) {
      for (const user of users) {
        const auth = bearer(user.accessToken);
        const json = { ...auth, 'content-type': 'application/json' };
        await fetch(`${fx.baseUrl}/health`);
        await fetch(`${fx.baseUrl}/api/v1/auth/me`, { headers: auth });
        await fetch(`${fx.baseUrl}/api/v1/models`);
        await fetch(`${fx.baseUrl}/api/v1/credits/balance`, { headers: auth });
        const project = await fetch(`${fx.baseUrl}/api/v1/projects`, {
          method: 'POST',
          headers: json,
          body: JSON.stringify({ name: `p${round}` }),
        });
        expect(project.status).toBe(201);
        const { id } = (await project.json()) as { id: string };
        await fetch(`${fx.baseUrl}/api/v1/authz/check`, {
          method: 'POST',
          headers: json,
          body: JSON.stringify({ resource: { type: 'project', id }, permission: 'view' }),
        });
        await fetch(`${fx.baseUrl}/api/v1/projects/${id}`, { headers: auth });
        if (round === 0) {
          const generation = await fetch(`${fx.baseUrl}/api/v1/generations`, {
            method: 'POST',
            headers: json,
            body: JSON.stringify({ model_id: 'velro-sketch', prompt: 'a dashboard test', project_id: id }),
          });
          expect(generation.status).toBe(202);
        }
      }
    }
  }

  it('renders live charts with data, the alerts list and the pools, using only the app', async () => {
    const users = await Promise.all([signUp(fx.app), signUp(fx.app), signUp(fx.app)]);
    await traffic(users, 2);

    const page = await context.newPage();
    const { problems, requests } = watch(page, fx.baseUrl);
    const response = await page.goto(`${fx.baseUrl}/dashboard`, { waitUntil: 'load' });
    expect(response?.status()).toBe(200);

    // Keep traffic flowing while the page polls, so the charts move between samples.
    const background = traffic(users, 2);
    await waitForPoints(page, 3, 20_000);
    await background;
    await waitForPoints(page, 4, 10_000);

    // Every chart has drawn a canvas of a real size, holding data points…
    const charts = {
      'chart-throughput': 4,
      'chart-cache': 4,
      'chart-queue': 4,
      'chart-latency-critical_auth': 12,
      'chart-latency-heavy': 12,
    };
    for (const [id, least] of Object.entries(charts)) {
      const box = await page.locator(`#${id} canvas`).boundingBox();
      expect(box, id).not.toBeNull();
      expect(box?.width, id).toBeGreaterThan(100);
      expect(box?.height, id).toBeGreaterThan(50);
      expect(Number(await page.locator(`#${id}`).getAttribute('data-values')), id).toBeGreaterThanOrEqual(
        least,
      );
    }
    // …and the lines are really painted: the series colours are on the canvases.
    expect(await painted(page.locator('#chart-throughput canvas'), [28, 126, 214])).toBeGreaterThan(50);
    expect(await painted(page.locator('#chart-latency-critical_auth canvas'), [224, 49, 49])).toBeGreaterThan(
      50,
    );
    // …with non-empty data: current figures are numbers, per-class latency is filled in.
    expect(Number(await page.locator('#kpi-throughput').textContent())).toBeGreaterThan(0);
    expect(Number((await page.locator('#kpi-requests').textContent())?.replace(/,/g, ''))).toBeGreaterThan(
      30,
    );
    expect(await page.locator('#kpi-l1').textContent()).toMatch(/^\d+(\.\d)? %$/);
    for (const routeClass of ['ultra_fast', 'critical_auth', 'fast', 'standard', 'heavy']) {
      const panel = page.locator(`#latency-grid [data-class="${routeClass}"]`);
      expect(await panel.locator('.fig-p95').textContent(), routeClass).toMatch(/^p95 \d/);
      expect(await panel.locator('.mini-rate').textContent(), routeClass).toMatch(/req\/s/);
    }

    // Pools: one row per typed pool.
    const pools = await attributes(page.locator('#pools tbody tr'), 'data-pool');
    expect(pools).toEqual(expect.arrayContaining(['authorization', 'write_heavy', 'generation']));
    expect(await page.locator('#kpi-queue').textContent()).toMatch(/^\d+$/);

    // Alerts: the list is there, and shows what the API says is firing (or says none is).
    const alerts = page.locator('#alerts');
    await expect.poll(() => alerts.locator('li').count()).toBeGreaterThan(0);
    await expect
      .poll(
        async () => {
          const api = await fetch(`${fx.baseUrl}/api/v1/performance/dashboard`);
          const body = (await api.json()) as { alerts: { state: string; rule: { name: string } }[] };
          const firing = body.alerts
            .filter((a) => a.state === 'firing')
            .map((a) => a.rule.name)
            .sort();
          const shown = (await attributes(alerts.locator('li[data-alert]'), 'data-alert')).sort();
          const empty = await alerts.locator('.alerts-empty').count();
          return firing.length === 0 ? shown.length === 0 && empty === 1 : shown.join() === firing.join();
        },
        { timeout: 10_000, interval: 500 },
      )
      .toBe(true);
    expect(await page.locator('#status-badge').getAttribute('data-status')).toMatch(
      /^(healthy|degraded|critical)$/,
    );
    expect(await page.locator('#poll-error').isHidden()).toBe(true);

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });

    expect(problems.consoleErrors).toEqual([]);
    expect(problems.pageErrors).toEqual([]);
    expect(problems.foreign).toEqual([]);
    expect(requests.some((url) => url.endsWith('/dashboard/assets/uPlot.iife.min.js'))).toBe(true);
    expect(
      requests.filter((url) => url.endsWith('/api/v1/performance/dashboard')).length,
    ).toBeGreaterThanOrEqual(4);
    await page.close();
  }, 90_000);

  // A service reached over plain http at a LAN address (not localhost, which browsers trust): the
  // pages must still load their own scripts and styles. With `upgrade-insecure-requests` in the
  // CSP the browser asks for them over https and the page stays blank.
  it.skipIf(!lanAddress())(
    'works over plain http at a LAN address: /dashboard and /docs',
    async () => {
      const host = lanAddress() as string;
      const lanDb = await createTestDatabase();
      const lan = await startTestApp({ databaseUrl: lanDb.url });
      try {
        await lan.app.listen({ host, port: 0 });
        const address = lan.app.server.address();
        if (!address || typeof address !== 'object') throw new Error('not listening');
        const lanBase = `http://${host}:${address.port}`;
        const page = await context.newPage();
        const failed: string[] = [];
        page.on('requestfailed', (request) => failed.push(request.url()));
        expect((await page.goto(`${lanBase}/dashboard`, { waitUntil: 'load' }))?.status()).toBe(200);
        await waitForPoints(page, 1, 10_000);
        // The activity panels too: drawn from the same poll (sums noted once drawn).
        for (const id of ['chart-signins', 'chart-generations', 'chart-credits', 'chart-denials'])
          expect(await page.locator(`#${id}`).getAttribute('data-total'), id).toMatch(/^\d+$/);
        expect(await page.locator('#endpoints tbody tr').count()).toBeGreaterThan(0);
        const docs = await context.newPage();
        docs.on('requestfailed', (request) => failed.push(request.url()));
        expect((await docs.goto(`${lanBase}/docs/`, { waitUntil: 'load' }))?.status()).toBe(200);
        // Swagger UI rendered the document: its operations are on the page.
        await docs.waitForSelector('.opblock', { timeout: 15_000 });
        expect(await docs.locator('.opblock').count()).toBeGreaterThan(20);
        expect(failed).toEqual([]);
        await Promise.all([page.close(), docs.close()]);
      } finally {
        await lan.close();
        await lanDb.drop();
      }
    },
    60_000,
  );

  it('sends #token=… as a bearer when the server has an OPS_TOKEN', async () => {
    const guardedDb = await createTestDatabase();
    const guarded = await startTestApp({ databaseUrl: guardedDb.url, env: { OPS_TOKEN } });
    try {
      const guardedBase = await listen(guarded);
      const page = await context.newPage();
      const { problems } = watch(page, guardedBase);
      // A browser cannot put a header on the address it navigates to: give the page request the
      // token the way a reverse proxy would, and let the page's own polls use the fragment.
      await page.route(`${guardedBase}/dashboard`, (route) =>
        route.continue({ headers: { ...route.request().headers(), authorization: `Bearer ${OPS_TOKEN}` } }),
      );
      const polls: number[] = [];
      page.on('response', (res) => {
        if (res.url().endsWith('/api/v1/performance/dashboard')) polls.push(res.status());
      });
      expect((await page.goto(`${guardedBase}/dashboard#token=${OPS_TOKEN}`))?.status()).toBe(200);
      await waitForPoints(page, 1, 10_000);
      expect(polls.length).toBeGreaterThan(0);
      expect(polls.every((status) => status === 200)).toBe(true);
      expect(problems).toEqual({ consoleErrors: [], pageErrors: [], foreign: [] });

      // Without the fragment the poll is refused and the page says how to fix it.
      const bare = await context.newPage();
      await bare.route(`${guardedBase}/dashboard`, (route) =>
        route.continue({ headers: { ...route.request().headers(), authorization: `Bearer ${OPS_TOKEN}` } }),
      );
      await bare.goto(`${guardedBase}/dashboard`);
      await bare.waitForSelector('#poll-error:not([hidden])', { timeout: 10_000 });
      expect(await bare.locator('#poll-error').textContent()).toContain('#token=');
      await Promise.all([page.close(), bare.close()]);
    } finally {
      await guarded.close();
      await guardedDb.drop();
    }
  }, 60_000);
});
