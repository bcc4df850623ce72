import { afterAll, describe, expect, it } from 'vitest';
import { type SignedUp, settle, signUp, startTestApp, type TestApp } from './helpers/app.js';
import { callApi, useTestDatabase } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

/**
 * The cache kill switch is the operator's word for the whole fleet (issue: fleet-wide switches):
 * thrown on one instance, it holds on every other, on one started later, and after a reconnection;
 * the stats say which instances acknowledged it.
 */

const fx = useTestDatabase();
const apps: TestApp[] = [];
let admin: SignedUp;
let user: SignedUp;
let generationId: string;

async function start(env: Record<string, string> = {}): Promise<TestApp> {
  const app = await startTestApp({ databaseUrl: fx.db.url, env });
  apps.push(app);
  return app;
}

/** Which layer answered a check of the user's own generation on `t`, asked twice (the second may hit L1). */
async function layerOf(t: TestApp): Promise<string> {
  let layer = '';
  for (let i = 0; i < 2; i++) {
    const res = await callApi(t, user, 'POST', '/authz/check', {
      resource: { type: 'generation', id: generationId },
      permission: 'view',
    });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().allowed).toBe(true);
    layer = String(res.headers['x-cache']);
  }
  return layer;
}

afterAll(async () => {
  for (const t of apps) await t.close();
});

describe('the cache kill switch holds for the whole fleet', () => {
  it('thrown on A: B obeys, C started later obeys, and the stats list who acknowledged', async () => {
    const a = await start();
    const b = await start();
    admin = await signUp(a.app);
    await fx.sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    user = await signUp(a.app);
    generationId = await insertGeneration(fx.sql, { userId: user.id });
    await settle(a);
    await settle(b);
    expect(await layerOf(b)).toBe('l1');

    const off = await callApi(a, admin, 'PATCH', '/admin/flags', { cache_enabled: false });
    expect(off.statusCode, off.body).toBe(200);
    expect(off.json()).toEqual({ cache_enabled: false });
    expect(a.pipeline.cache.enabled).toBe(false);
    // B heard it on the invalidation channel, in commit order with everything else.
    await settle(b);
    expect(b.pipeline.bus.wantEnabled).toBe(false);
    expect(await layerOf(b)).toBe('miss');
    const flagsOnB = await callApi(b, admin, 'GET', '/admin/flags');
    expect(flagsOnB.json()).toEqual({ cache_enabled: false });

    // An instance started after the switch was thrown reads it at start.
    const c = await start();
    expect(c.pipeline.bus.wantEnabled).toBe(false);
    expect(await layerOf(c)).toBe('miss');

    const stats = await callApi(c, admin, 'GET', '/admin/cache/stats');
    expect(stats.statusCode).toBe(200);
    const fleet = stats.json().fleet as {
      instance_id: string;
      cache_enabled: boolean;
      changed_at_revision: number;
      instances: { instance_id: string; cache_enabled: boolean; current: boolean }[];
    };
    expect(fleet.cache_enabled).toBe(false);
    expect(fleet.changed_at_revision).toBeGreaterThan(0);
    // Acknowledgements are written after the switch is applied: wait for all three.
    const ids = [a, b, c].map((t) => t.pipeline.bus.instanceId);
    expect(new Set(ids).size).toBe(3);
    const deadline = Date.now() + 5_000;
    let acked: typeof fleet.instances = [];
    while (Date.now() < deadline) {
      const { rows } = await fx.sql.query<{ instance_id: string; flag_rev: string; cache_enabled: boolean }>(
        'SELECT instance_id, flag_rev, cache_enabled FROM cache_flag_acks WHERE instance_id = ANY($1)',
        [ids],
      );
      if (rows.length === 3 && rows.every((r) => Number(r.flag_rev) >= fleet.changed_at_revision)) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    acked = (await callApi(a, admin, 'GET', '/admin/cache/stats')).json().fleet.instances;
    for (const id of ids) {
      expect(acked.find((i) => i.instance_id === id)).toMatchObject({ cache_enabled: false, current: true });
    }

    // Switched back on through another instance: every instance answers from L1 again.
    const on = await callApi(c, admin, 'PATCH', '/admin/flags', { cache_enabled: true });
    expect(on.json()).toEqual({ cache_enabled: true });
    for (const t of [a, b, c]) {
      await settle(t);
      expect(t.pipeline.bus.wantEnabled).toBe(true);
      expect(await layerOf(t)).toBe('l1');
    }
  });

  it('an instance configured with CACHE_ENABLED=false stays off whatever the fleet says', async () => {
    const d = await start({ CACHE_ENABLED: 'false' });
    expect(d.pipeline.bus.fleetEnabled).toBe(true);
    expect(d.pipeline.bus.wantEnabled).toBe(false);
    const on = await callApi(d, admin, 'PATCH', '/admin/flags', { cache_enabled: true });
    expect(on.json()).toEqual({ cache_enabled: false });
    expect(await layerOf(d)).toBe('miss');
  });

  it('a switch no instance heard is obeyed once their connections come back (resync reads it)', async () => {
    const [a, b] = apps as [TestApp, TestApp];
    // Thrown in the database without its announcement: nobody hears it...
    await fx.sql.query(
      'UPDATE authz_revision SET rev = rev + 1, cache_enabled = false, cache_flag_rev = rev + 1 WHERE id',
    );
    // ...until the listening connections are lost and replaced: each instance then resyncs.
    const before = [a.pipeline.bus.reconnects, b.pipeline.bus.reconnects];
    await fx.sql.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE application_name = 'velro_listener' AND datname = current_database()`,
    );
    const deadline = Date.now() + 10_000;
    while (
      Date.now() < deadline &&
      !(
        a.pipeline.bus.reconnects > (before[0] as number) &&
        b.pipeline.bus.reconnects > (before[1] as number) &&
        a.pipeline.bus.healthy &&
        b.pipeline.bus.healthy
      )
    )
      await new Promise((resolve) => setTimeout(resolve, 20));
    expect(a.pipeline.bus.wantEnabled).toBe(false);
    expect(b.pipeline.bus.wantEnabled).toBe(false);
    expect(await layerOf(b)).toBe('miss');
    // Back on for whoever runs after.
    await callApi(a, admin, 'PATCH', '/admin/flags', { cache_enabled: true });
    for (const t of apps.slice(0, 3)) await settle(t);
    expect(b.pipeline.bus.wantEnabled).toBe(true);
  });
});
