import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bearer, type SignedUp, settle, signUp, startTestApp, type TestApp } from './helpers/app.js';
import { callApi, type Method, until, useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';
import { ListenerProxy } from './helpers/listener-proxy.js';

/**
 * SPEC §6 rules 7–9 when invalidations are late or never come: instance A talks to PostgreSQL
 * directly; instance B goes through a relay that delays or freezes only B's LISTEN connection (its
 * pools are untouched, as when one instance's notification path is slow or silently dropped). Every
 * scenario here gave a stale or impossible "allow" before the fix it names.
 */

const API = '/api/v1';
const TOKEN = 'velro-consistency-token';

function send(
  t: TestApp,
  who: SignedUp,
  method: Method,
  url: string,
  options: { payload?: object; token?: string } = {},
): Promise<LightMyRequestResponse> {
  return callApi(t, who, method, url, options.payload, options.token ? { [TOKEN]: options.token } : {});
}

function expectStatus(res: LightMyRequestResponse, status: number, what: string): LightMyRequestResponse {
  if (res.statusCode !== status)
    throw new Error(`${what}: expected ${status}, got ${res.statusCode} ${res.body}`);
  return res;
}

function tokenOf(res: LightMyRequestResponse): string {
  const value = res.headers[TOKEN];
  if (typeof value !== 'string') throw new Error(`no consistency token: ${res.statusCode} ${res.body}`);
  return value;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Media storage shared by the instances, as a fleet's object store would be. */
let dataDir: string;
// Registered before the fixture, so it runs after the app has closed.
afterAll(async () => {
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

const fx = useTestApp(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'velro-lag-'));
  return { dataDir };
});
/** Instance A: the fixture's app, straight on PostgreSQL. */
let a: TestApp;
beforeAll(() => {
  a = fx.t;
});

/** Instance B behind its own relay, with settings of its own. */
async function startB(env: Record<string, string> = {}) {
  const proxy = ListenerProxy.forUrl(fx.db.url);
  await proxy.start();
  const b = await startTestApp({ databaseUrl: proxy.wrap(fx.db.url), dataDir, env });
  await settle(b);
  return {
    proxy,
    b,
    async close() {
      await b.close();
      await proxy.close();
    },
  };
}

interface World {
  owner: SignedUp;
  member: SignedUp;
  team: string;
  project: string;
  generation: string;
}

/** Owner O, team T with M as `role`, project P in T (`visibility`), generation G in P. */
async function world(role = 'viewer', visibility = 'team'): Promise<World> {
  const owner = await signUp(a.app);
  const member = await signUp(a.app);
  const team = expectStatus(
    await send(a, owner, 'POST', '/teams', { payload: { name: 'Lag' } }),
    201,
    'team',
  );
  const teamId = team.json().id as string;
  expectStatus(
    await send(a, owner, 'POST', `/teams/${teamId}/members`, { payload: { user_id: member.id, role } }),
    201,
    'add member',
  );
  const project = expectStatus(
    await send(a, owner, 'POST', '/projects', { payload: { name: 'P', team_id: teamId, visibility } }),
    201,
    'project',
  );
  const projectId = project.json().id as string;
  const generation = await insertGeneration(fx.sql, { userId: owner.id, projectId });
  return { owner, member, team: teamId, project: projectId, generation };
}

/** May `who` view the generation on `t` (the route a client uses)? */
async function viewGeneration(t: TestApp, who: SignedUp, id: string, token?: string) {
  const res = await send(t, who, 'GET', `/generations/${id}/authorize`, token ? { token } : {});
  if (res.statusCode !== 200 && res.statusCode !== 404)
    throw new Error(`authorize: ${res.statusCode} ${res.body}`);
  return { allowed: res.statusCode === 200, layer: String(res.headers['x-cache']) };
}

/** The same question through /authz/check, which says which layer answered a denial too. */
async function checkGeneration(t: TestApp, who: SignedUp, id: string) {
  const res = expectStatus(
    await send(t, who, 'POST', '/authz/check', {
      payload: { resource: { type: 'generation', id }, permission: 'view' },
    }),
    200,
    'check',
  );
  return { allowed: res.json().allowed === true, layer: String(res.headers['x-cache']) };
}

/** Until `who`'s view of G on `t` is answered from L1 (allowed). */
async function warmOn(t: TestApp, who: SignedUp, id: string) {
  await until(
    async () => {
      const answer = await viewGeneration(t, who, id);
      if (!answer.allowed) throw new Error('warming: denied');
      return answer.layer === 'l1';
    },
    10_000,
    'an L1 answer',
    5,
  );
}

const removeMember = async (w: World) =>
  tokenOf(
    expectStatus(await send(a, w.owner, 'DELETE', `/teams/${w.team}/members/${w.member.id}`), 204, 'remove'),
  );

describe('a LISTEN connection that goes silent (rule 7: bounded staleness under any network failure)', () => {
  const LEASE_MS = 600;
  let b: Awaited<ReturnType<typeof startB>>;

  beforeAll(async () => {
    b = await startB({ INVALIDATION_LEASE_MS: String(LEASE_MS), INVALIDATION_HEARTBEAT_MS: '100' });
  });
  afterAll(async () => b?.close());

  it('stops answering from the cache within the lease, replaces the connection and resyncs', async () => {
    const w = await world();
    await warmOn(b.b, w.member, w.generation);
    const lossesBefore = b.b.pipeline.listener.silentLosses;
    expect(b.proxy.freezeListeners()).toBe(1);

    await removeMember(w);
    const committed = performance.now();
    // Probe without a token until well past the lease: an allow is tolerated only within the lease
    // of the commit (measured from after the write answered, so later than the commit).
    const probes: { startedAt: number; allowed: boolean; layer: string }[] = [];
    while (performance.now() - committed < LEASE_MS + 1_500) {
      const startedAt = performance.now();
      probes.push({ startedAt, ...(await viewGeneration(b.b, w.member, w.generation)) });
      await sleep(20);
    }
    const lateAllows = probes.filter((p) => p.allowed && p.startedAt > committed + LEASE_MS);
    console.log(
      `[frozen LISTEN] ${probes.length} probes over ${Math.round(performance.now() - committed)} ms; ` +
        `allowed within the lease ${probes.filter((p) => p.allowed).length}, after it ${lateAllows.length}`,
    );
    expect(lateAllows).toEqual([]);
    expect(probes.at(-1)?.allowed).toBe(false);

    // The silent connection was detected and replaced (a new listener connection through the relay),
    // the cache was resynced, and answers from it again — with the removal applied.
    await until(
      () => b.b.pipeline.listener.silentLosses > lossesBefore,
      10_000,
      'the silent connection to be replaced',
      5,
    );
    await until(() => b.b.pipeline.cache.canAnswer(0), 10_000, 'the cache to answer again', 5);
    expect(b.proxy.listenerConnections).toBeGreaterThanOrEqual(1);
    await until(
      async () => (await checkGeneration(b.b, w.member, w.generation)).layer === 'l1',
      10_000,
      'an L1 denial',
      5,
    );
    expect((await checkGeneration(b.b, w.member, w.generation)).allowed).toBe(false);

    const stats = await b.b.app.inject({
      method: 'GET',
      url: `${API}/admin/cache/stats`,
      headers: bearer((await adminOf(b.b)).accessToken),
    });
    expect(stats.json().bus.silent_losses).toBeGreaterThan(0);
  }, 30_000);
});

async function adminOf(t: TestApp): Promise<SignedUp> {
  const admin = await signUp(t.app);
  await fx.sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
  await settle(t);
  return admin;
}

describe('an instance whose invalidations arrive 300 ms late', () => {
  let b: Awaited<ReturnType<typeof startB>>;

  beforeAll(async () => {
    b = await startB();
    b.proxy.delayMs = 300;
  });
  afterAll(async () => b?.close());

  const behind = (token: string) => b.b.pipeline.cache.appliedUpTo < Number(token);

  it('never combines a fresh fact with an older one (rule 8: the "new enemy")', async () => {
    const trials = 4;
    let lagged = 0;
    for (let i = 0; i < trials; i++) {
      // P private in T; M a member. M's memberships and P are cached on B.
      const w = await world('viewer', 'private');
      const check = (token?: string) =>
        send(b.b, w.member, 'POST', '/authz/check', {
          payload: { resource: { type: 'project', id: w.project }, permission: 'view' },
          ...(token ? { token } : {}),
        });
      await until(
        async () => {
          const res = expectStatus(await check(), 200, 'warm check');
          return res.json().allowed === false && res.headers['x-cache'] === 'l1';
        },
        10_000,
        'M denied from L1',
        5,
      );
      // A removes M (r1), then makes P team-visible (r2); O reads P on B with r2's token, which
      // puts P's new fact (stamped r2) into B's cache while B has not applied r1.
      const r1 = await removeMember(w);
      const r2 = tokenOf(
        expectStatus(
          await send(a, w.owner, 'PATCH', `/projects/${w.project}`, { payload: { visibility: 'team' } }),
          200,
          'make team-visible',
        ),
      );
      expectStatus(
        await send(b.b, w.owner, 'GET', `/projects/${w.project}`, { token: r2 }),
        200,
        'owner read',
      );
      if (behind(r1)) lagged += 1;
      // At no single revision could M view P: private while M was a member, team-visible after.
      expectStatus(await send(b.b, w.member, 'GET', `/projects/${w.project}`), 404, 'M reads P');
      const answer = expectStatus(await check(), 200, 'M checks P').json();
      expect(answer.allowed).toBe(false);
      await b.b.pipeline.bus.waitFor(Number(r2), 5_000);
    }
    expect(lagged).toBeGreaterThanOrEqual(trials - 1);
  }, 60_000);

  it('decides writes on fresh facts (rule 9): a removed admin cannot write through the lagging instance', async () => {
    const w = await world('admin');
    const admin = w.member;
    const other = expectStatus(
      await send(a, w.owner, 'POST', '/projects', {
        payload: { name: 'P2', team_id: w.team, visibility: 'team' },
      }),
      201,
      'second project',
    ).json().id as string;
    // Everything the writes need is cached on B.
    for (const [type, id] of [
      ['project', w.project],
      ['project', other],
      ['generation', w.generation],
    ] as const) {
      await until(
        async () => {
          const res = await send(b.b, admin, 'POST', '/authz/check', {
            payload: { resource: { type, id }, permission: 'view' },
          });
          return res.json().allowed === true && res.headers['x-cache'] === 'l1';
        },
        10_000,
        `${type} cached`,
        5,
      );
    }
    const removed = await removeMember(w);
    expect(behind(removed)).toBe(true);

    const attempts = await Promise.all([
      send(b.b, admin, 'PATCH', `/projects/${w.project}`, { payload: { visibility: 'public' } }),
      send(b.b, admin, 'DELETE', `/projects/${other}`),
      send(b.b, admin, 'DELETE', `/generations/${w.generation}`),
      send(b.b, admin, 'POST', '/generations', {
        payload: { model_id: 'velro-sketch', prompt: 'not yours', project_id: w.project },
      }),
    ]);
    expect(attempts.map((r) => r.statusCode)).toEqual([404, 404, 404, 404]);
    const state = await fx.sql.query(
      `SELECT (SELECT visibility FROM projects WHERE id = $1) AS visibility,
              (SELECT deleted_at IS NULL FROM projects WHERE id = $2) AS other_live,
              (SELECT deleted_at IS NULL FROM generations WHERE id = $3) AS generation_live,
              (SELECT count(*)::int FROM generations WHERE user_id = $4) AS created`,
      [w.project, other, w.generation, admin.id],
    );
    expect(state.rows[0]).toEqual({
      visibility: 'team',
      other_live: true,
      generation_live: true,
      created: 0,
    });
  }, 30_000);

  it('honours the token on media: a deleted generation’s media is gone with the delete’s token', async () => {
    const w = await world();
    const stored = await b.b.pipeline.storage.put(Buffer.from(randomBytes(64)), 'image/png');
    const media = await fx.sql.query<{ id: string }>(
      `INSERT INTO media (generation_id, mime, width, height, bytes, sha256, storage_key)
       VALUES ($1, 'image/png', 8, 8, $2, $3, $4) RETURNING id`,
      [w.generation, stored.bytes, stored.sha256, stored.key],
    );
    await fx.sql.query(`UPDATE generations SET status = 'completed', progress = 100 WHERE id = $1`, [
      w.generation,
    ]);
    const urls = expectStatus(
      await send(a, w.owner, 'GET', `/generations/${w.generation}/media-urls`),
      200,
      'urls',
    );
    const item = urls.json().items[0];
    expect(item.media_id).toBe(media.rows[0]?.id);
    const fetchOnB = (token?: string) =>
      b.b.app.inject({ method: 'GET', url: item.url, headers: token ? { [TOKEN]: token } : {} });
    expect((await fetchOnB()).statusCode).toBe(200);
    expect((await fetchOnB()).statusCode).toBe(200);

    const deleted = tokenOf(
      expectStatus(await send(a, w.owner, 'DELETE', `/generations/${w.generation}`), 204, 'delete'),
    );
    expect(behind(deleted)).toBe(true);
    expect((await fetchOnB(deleted)).statusCode).toBe(404);
  }, 30_000);

  it('honours the token on GET /projects: a downgrade is listed at once with its token', async () => {
    const w = await world('editor');
    const listed = async (token?: string) => {
      const res = expectStatus(
        await send(b.b, w.member, 'GET', '/projects', token ? { token } : {}),
        200,
        'list',
      );
      return (res.json().items as { id: string; permissions: string[] }[]).find((p) => p.id === w.project);
    };
    expect((await listed())?.permissions).toContain('edit');
    expect((await listed())?.permissions).toContain('edit');
    const downgraded = tokenOf(
      expectStatus(
        await send(a, w.owner, 'PATCH', `/teams/${w.team}/members/${w.member.id}`, {
          payload: { role: 'viewer' },
        }),
        200,
        'downgrade',
      ),
    );
    expect(behind(downgraded)).toBe(true);
    expect((await listed(downgraded))?.permissions).toEqual(['view']);
  }, 30_000);
});

describe('a write whose own invalidation is late (WRITE_VISIBILITY_WAIT_MS runs out)', () => {
  let b: Awaited<ReturnType<typeof startB>>;

  beforeAll(async () => {
    b = await startB({ WRITE_VISIBILITY_WAIT_MS: '20' });
    b.proxy.delayMs = 400;
  });
  afterAll(async () => b?.close());

  it('leaves the writing instance distrusting its cache until it has applied that revision', async () => {
    const w = await world();
    await warmOn(b.b, w.member, w.generation);
    const res = expectStatus(
      await send(b.b, w.owner, 'DELETE', `/teams/${w.team}/members/${w.member.id}`),
      204,
      'remove',
    );
    const token = Number(tokenOf(res));
    expect(b.b.pipeline.cache.appliedUpTo).toBeLessThan(token);
    expect((await viewGeneration(b.b, w.member, w.generation)).allowed).toBe(false);
    await b.b.pipeline.bus.waitFor(token, 5_000);
    // Once applied, the cache answers again, and says the same.
    await until(
      async () => (await checkGeneration(b.b, w.member, w.generation)).layer === 'l1',
      10_000,
      'L1 again',
      5,
    );
    expect((await checkGeneration(b.b, w.member, w.generation)).allowed).toBe(false);
  }, 30_000);
});

describe('event streams end when their reader loses access (rule: every read honours revocation)', () => {
  let b: Awaited<ReturnType<typeof startB>>;
  let base: string;

  beforeAll(async () => {
    b = await startB();
    b.proxy.delayMs = 50;
    await b.b.app.listen({ host: '127.0.0.1', port: 0 });
    const address = b.b.app.server.address();
    base = typeof address === 'object' && address ? `http://127.0.0.1:${address.port}` : '';
  });
  afterAll(async () => b?.close());

  /** Opens M's stream on B; resolves with everything it said once it ends. */
  async function openStream(who: SignedUp, id: string) {
    const controller = new AbortController();
    const res = await fetch(`${base}${API}/generations/${id}/events`, {
      headers: bearer(who.accessToken),
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = '';
    let ended = false;
    const done = (async () => {
      for (;;) {
        const chunk = await reader.read().catch(() => ({ done: true, value: undefined }));
        if (chunk.done) break;
        text += decoder.decode(chunk.value, { stream: true });
      }
      ended = true;
      return text;
    })();
    await until(() => text.includes('event: status'), 10_000, 'the first event', 5);
    return { done, text: () => text, ended: () => ended, abort: () => controller.abort() };
  }

  const publish = (id: string, progress: number) =>
    fx.sql.query(`SELECT pg_notify('velro_generation', $1)`, [
      JSON.stringify({ id, status: 'processing', progress, error: null }),
    ]);

  async function expectEndsOn(revoke: (w: World) => Promise<unknown>) {
    const w = await world();
    const stream = await openStream(w.member, w.generation);
    await publish(w.generation, 10);
    await until(() => stream.text().includes('"progress":10'), 10_000, 'an event before the revocation', 5);
    await revoke(w);
    await settle(b.b);
    // Ended by the invalidation, saying why; nothing after it.
    const said = await Promise.race([stream.done, sleep(4_000).then(() => null)]);
    stream.abort();
    expect(said, 'the stream was still open 4 s after the revocation').not.toBeNull();
    await publish(w.generation, 60);
    await sleep(100);
    expect(stream.text()).toContain('event: error');
    expect(stream.text()).toContain('access_revoked');
    expect(stream.text()).not.toContain('"progress":60');
  }

  it('when the reader is removed from the team', async () => {
    await expectEndsOn(removeMember);
  }, 30_000);

  it('when the reader logs out', async () => {
    await expectEndsOn(async (w) =>
      expectStatus(
        await a.app.inject({
          method: 'POST',
          url: `${API}/auth/logout`,
          headers: bearer(w.member.accessToken),
          payload: {},
        }),
        204,
        'logout',
      ),
    );
  }, 30_000);

  it('when the reader’s account is deactivated', async () => {
    await expectEndsOn((w) =>
      fx.sql.query('UPDATE users SET is_active = false WHERE id = $1', [w.member.id]),
    );
  }, 30_000);
});
