/**
 * The audit log, read: GET /admin/audit (administrators, filters, keyset pages, indexes) and
 * GET /auth/security-events (a user's own security history, and nobody else's: BOLA through
 * filters and forged cursors). Also the authorization counters at /metrics and the probing rule
 * (`authz_denial_spike`) on the in-process tracker.
 */
import { createHash, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { type AuditFilter, auditQuery, SECURITY_ACTIONS } from '../src/modules/audit/read.js';
import { encodeCursor } from '../src/platform/http/cursor.js';
import { ALERT_RULES } from '../src/platform/observability/alert-rules.js';
import { AuthzTally } from '../src/platform/observability/authz-tally.js';
import { PerformanceTracker, type ProcessSource } from '../src/platform/observability/tracker.js';
import { bearer, errorOf, type SignedUp, settle, signUp } from './helpers/app.js';
import { until, useTestApp } from './helpers/fixture.js';

/** Per test and hook: generous, the suite shares two cores with every other file. */
const SLOW_MS = 120_000;

const fx = useTestApp({ hookTimeoutMs: SLOW_MS });

interface Event {
  id: number;
  at: string;
  actor_id?: string | null;
  action: string;
  resource_type: string | null;
  resource_id: string | null;
  decision: 'allow' | 'deny' | null;
  reason: string | null;
  ip: string | null;
  request_id: string | null;
  details: Record<string, unknown> | null;
}
interface Page {
  items: Event[];
  next_cursor: string | null;
}

const get = (url: string, token?: string) =>
  fx.app.inject({ method: 'GET', url, ...(token ? { headers: bearer(token) } : {}) });

const qs = (params: Record<string, string | number | undefined>) => {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined) as [string, string][];
  return entries.length === 0
    ? ''
    : `?${new URLSearchParams(entries.map(([k, v]) => [k, String(v)] as [string, string]))}`;
};

async function audit(token: string, params: Record<string, string | number | undefined> = {}): Promise<Page> {
  const res = await get(`/api/v1/admin/audit${qs(params)}`, token);
  expect(res.statusCode, res.body).toBe(200);
  return res.json();
}

async function securityEvents(token: string, params: Record<string, string | number | undefined> = {}) {
  const res = await get(`/api/v1/auth/security-events${qs(params)}`, token);
  expect(res.statusCode, res.body).toBe(200);
  return res.json() as Page;
}

/** Every page of a list, following next_cursor; `between` runs after each page (writes meanwhile). */
async function allPages(
  fetchPage: (cursor: string | undefined) => Promise<Page>,
  between: () => Promise<void> = async () => {},
): Promise<Event[]> {
  const out: Event[] = [];
  let cursor: string | undefined;
  for (let pages = 0; pages < 1_000; pages++) {
    const page = await fetchPage(cursor);
    out.push(...page.items);
    if (!page.next_cursor) return out;
    cursor = page.next_cursor;
    await between();
  }
  throw new Error('more than 1,000 pages');
}

async function login(user: SignedUp, password = user.password) {
  return fx.app.inject({
    method: 'POST',
    url: '/api/v1/auth/login',
    payload: { email: user.email, password },
  });
}

async function makeAdmin(user: SignedUp) {
  await fx.sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [user.id]);
  await settle(fx.t);
}

async function newKey(user: SignedUp, scopes: string[]): Promise<{ id: string; key: string }> {
  const res = await fx.call(user, 'POST', '/service-keys', {
    name: `key ${randomUUID().slice(0, 8)}`,
    scopes,
  });
  expect(res.statusCode, res.body).toBe(201);
  return res.json();
}

async function newProject(user: SignedUp, visibility = 'private'): Promise<string> {
  const res = await fx.call(user, 'POST', '/projects', { name: 'audit test', visibility });
  expect(res.statusCode, res.body).toBe(201);
  return res.json().id;
}

/** Ids of an actor's events, straight from the table. */
async function idsOf(actorId: string): Promise<Set<number>> {
  const { rows } = await fx.sql.query<{ id: string }>('SELECT id FROM audit_events WHERE actor_id = $1', [
    actorId,
  ]);
  return new Set(rows.map((r) => Number(r.id)));
}

describe('GET /api/v1/admin/audit', { timeout: SLOW_MS }, () => {
  let admin: SignedUp;
  let alice: SignedUp;
  let bob: SignedUp;
  let aliceKeyId: string;
  let bobsProject: string;

  beforeAll(async () => {
    admin = await signUp(fx.app);
    await makeAdmin(admin);
    alice = await signUp(fx.app);
    bob = await signUp(fx.app);
    expect((await login(alice, 'not her password')).statusCode).toBe(401);
    expect((await login(alice)).statusCode).toBe(200);
    const key = await newKey(alice, ['generations:read']);
    aliceKeyId = key.id;
    const revoked = await fx.call(alice, 'DELETE', `/service-keys/${key.id}`);
    expect(revoked.statusCode).toBeLessThan(300);
    bobsProject = await newProject(bob);
    // Alice asks for Bob's private project: 404, audited as a denial (buffered, written shortly).
    expect((await get(`/api/v1/projects/${bobsProject}`, alice.accessToken)).statusCode).toBe(404);
    await until(
      async () => {
        const { rows } = await fx.sql.query(
          `SELECT count(*)::int AS n FROM audit_events WHERE actor_id = $1 AND decision = 'deny'`,
          [alice.id],
        );
        return rows[0].n >= 2 ? true : undefined;
      },
      15_000,
      'the denial and the failed sign-in to be written',
      50,
    );
  }, SLOW_MS);

  it('is for administrators: 401 without a token, 403 for a user and for a key without the admin scope', async () => {
    const anonymous = await get('/api/v1/admin/audit');
    expect(anonymous.statusCode).toBe(401);
    errorOf(anonymous);
    const user = await get('/api/v1/admin/audit', alice.accessToken);
    expect(user.statusCode).toBe(403);
    expect(errorOf(user).code).toBe('admin_required');
    expect(user.body).not.toContain(alice.id);

    const adminKeyWithoutScope = await newKey(admin, ['projects:read']);
    const scoped = await get('/api/v1/admin/audit', adminKeyWithoutScope.key);
    expect(scoped.statusCode).toBe(403);
    expect(errorOf(scoped).code).toBe('insufficient_scope');

    // A user's key with the admin scope is still a user's.
    const userKey = await newKey(bob, ['admin']);
    expect((await get('/api/v1/admin/audit', userKey.key)).statusCode).toBe(403);

    const adminKey = await newKey(admin, ['admin']);
    expect((await get('/api/v1/admin/audit?limit=1', adminKey.key)).statusCode).toBe(200);
  });

  it('filters by actor, action, resource, decision and time, each alone and together', async () => {
    const mine = await allPages((cursor) =>
      audit(admin.accessToken, { actor: alice.id, limit: 100, cursor }),
    );
    expect(mine.length).toBeGreaterThanOrEqual(6);
    expect(new Set(mine.map((e) => e.actor_id))).toEqual(new Set([alice.id]));
    expect(new Set(mine.map((e) => e.id))).toEqual(await idsOf(alice.id));
    const actions = mine.map((e) => e.action);
    for (const action of [
      'auth.register',
      'auth.login',
      'service_key.create',
      'service_key.revoke',
      'project.view',
    ])
      expect(actions, action).toContain(action);

    const created = await audit(admin.accessToken, { actor: alice.id, action: 'service_key.create' });
    expect(created.items).toHaveLength(1);
    expect(created.items[0]).toMatchObject({
      action: 'service_key.create',
      resource_type: 'service_key',
      resource_id: aliceKeyId,
      details: { scopes: ['generations:read'] },
    });
    expect(created.items[0]?.request_id).toEqual(expect.any(String));

    const aboutTheKey = await audit(admin.accessToken, {
      resource_type: 'service_key',
      resource_id: aliceKeyId,
    });
    expect(aboutTheKey.items.map((e) => e.action)).toEqual(['service_key.revoke', 'service_key.create']);
    const byIdAlone = await audit(admin.accessToken, { resource_id: aliceKeyId });
    expect(byIdAlone.items.map((e) => e.id)).toEqual(aboutTheKey.items.map((e) => e.id));

    const denials = await audit(admin.accessToken, { actor: alice.id, decision: 'deny' });
    expect(denials.items.map((e) => e.action).sort()).toEqual(['auth.login', 'project.view']);
    expect(denials.items.every((e) => e.decision === 'deny')).toBe(true);
    const probe = denials.items.find((e) => e.action === 'project.view');
    expect(probe).toMatchObject({ resource_type: 'project', resource_id: bobsProject });

    const allowed = await audit(admin.accessToken, { actor: alice.id, decision: 'allow' });
    expect(allowed.items.map((e) => e.action)).toEqual(['auth.login']);

    // Bob's project, by everyone: Bob's creation and Alice's denied view.
    const project = await audit(admin.accessToken, { resource_type: 'project', resource_id: bobsProject });
    expect(project.items.map((e) => [e.action, e.actor_id]).sort()).toEqual(
      [
        ['project.create', bob.id],
        ['project.view', alice.id],
      ].sort(),
    );

    // Time: `from` is inclusive, `to` exclusive.
    const revoke = aboutTheKey.items[0] as Event;
    const from = await audit(admin.accessToken, { actor: alice.id, from: revoke.at });
    expect(from.items.map((e) => e.id)).toContain(revoke.id);
    expect(from.items.every((e) => e.at >= revoke.at)).toBe(true);
    const to = await audit(admin.accessToken, { actor: alice.id, to: revoke.at, limit: 100 });
    expect(to.items.map((e) => e.id)).not.toContain(revoke.id);
    expect(to.items.every((e) => e.at < revoke.at)).toBe(true);
    expect(to.items.length + from.items.length).toBe(mine.length);
    const future = await audit(admin.accessToken, { from: new Date(Date.now() + 3_600_000).toISOString() });
    expect(future).toEqual({ items: [], next_cursor: null });
  });

  it('answers 400 naming the field for a bad filter, and for a cursor it did not make', async () => {
    const cases: [Record<string, string>, string][] = [
      [{ actor: 'not-a-uuid' }, 'query.actor'],
      [{ decision: 'maybe' }, 'query.decision'],
      [{ from: 'yesterday' }, 'query.from'],
      [{ to: '2026-13-45T99:00:00Z' }, 'query.to'],
      [{ from: '2026-12-07T10:00:00Z', to: '2026-12-07T09:00:00Z' }, 'query.to'],
      [{ resource_type: 'Project; DROP TABLE audit_events' }, 'query.resource_type'],
      [{ limit: '0' }, 'query.limit'],
      [{ limit: '101' }, 'query.limit'],
      [{ action: 'x'.repeat(101) }, 'query.action'],
      [{ action: 'auth.login\u0000' }, 'query.action'],
      [{ resource_id: 'a\u0001b' }, 'query.resource_id'],
      [{ from: '0000-01-01T00:00:00Z' }, 'query.from'],
      [{ to: '2026-12-07T10:00:00+23:00' }, 'query.to'],
      [{ cursor: 'not a cursor' }, 'query.cursor'],
      [{ cursor: encodeCursor(['yesterday', 5]) }, 'query.cursor'],
      [{ cursor: encodeCursor(['2026-02-31 00:00:00+00', 5]) }, 'query.cursor'],
      [{ cursor: encodeCursor(['2026-12-07 24:00:00+00', 5]) }, 'query.cursor'],
      [{ cursor: encodeCursor(['2026-12-07 10:00:00+16', 5]) }, 'query.cursor'],
      [{ cursor: encodeCursor(['2026-12-07 01:00:00+00', 'x']) }, 'query.cursor'],
      [{ cursor: encodeCursor(['2026-12-07 01:00:00+00']) }, 'query.cursor'],
      [{ cursor: encodeCursor(['2026-12-07 01:00:00+00', 1, 2]) }, 'query.cursor'],
      [{ cursor: encodeCursor(['2026-12-07 01:00:00+00', 1.5]) }, 'query.cursor'],
    ];
    for (const [params, field] of cases) {
      const res = await get(`/api/v1/admin/audit${qs(params)}`, admin.accessToken);
      expect(res.statusCode, JSON.stringify(params)).toBe(400);
      const error = errorOf(res);
      expect(error.code).toBe('validation_error');
      expect(
        (error.details as { field: string }[]).map((d) => d.field),
        JSON.stringify(params),
      ).toContain(field);
    }
    // A real cursor with one character changed.
    const page = await audit(admin.accessToken, { limit: 1 });
    const cursor = page.next_cursor as string;
    const tampered = `${cursor.slice(0, 5)}${cursor[5] === 'A' ? 'B' : 'A'}${cursor.slice(6)}`;
    const res = await get(`/api/v1/admin/audit?cursor=${tampered}`, admin.accessToken);
    expect(res.statusCode).toBe(400);
  });

  it('keyset pages: every event once, in order, while new events are being written', async () => {
    const actor = randomUUID();
    // 45 events: 15 in one transaction (one timestamp: ties broken by id), then 30 one by one.
    await fx.sql.query(
      `INSERT INTO audit_events (actor_id, action, at)
       SELECT $1, 'test.tied', now() - interval '1 hour' FROM generate_series(1, 15)`,
      [actor],
    );
    for (let i = 0; i < 30; i++)
      await fx.sql.query(`INSERT INTO audit_events (actor_id, action, at) VALUES ($1, 'test.single', $2)`, [
        actor,
        new Date(Date.now() - 1_800_000 + i * 1_000).toISOString(),
      ]);
    const before = await idsOf(actor);
    expect(before.size).toBe(45);
    let written = 0;
    const seen = await allPages(
      (cursor) => audit(admin.accessToken, { actor, limit: 7, cursor }),
      async () => {
        // Meanwhile, the same actor keeps producing events (newer than every page read so far).
        await fx.sql.query(
          `INSERT INTO audit_events (actor_id, action) VALUES ($1, 'test.meanwhile'), ($1, 'test.meanwhile')`,
          [actor],
        );
        written += 2;
      },
    );
    expect(written).toBeGreaterThan(0);
    const ids = seen.map((e) => e.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(new Set(ids)).toEqual(before);
    // Newest first: (at, id) strictly decreasing.
    for (let i = 1; i < seen.length; i++) {
      const [a, b] = [seen[i - 1] as Event, seen[i] as Event];
      expect(a.at > b.at || (a.at === b.at && a.id > b.id), `${a.id} before ${b.id}`).toBe(true);
    }
    // The events written meanwhile are on a fresh first page.
    const fresh = await audit(admin.accessToken, { actor, action: 'test.meanwhile', limit: 100 });
    expect(fresh.items).toHaveLength(written);
  });

  it('every filtered page is read through the index made for its filter, the cursor bounding the scan', async () => {
    // A log large enough that the planner would rather scan and sort than walk a poor index, with
    // the skew of a real one: mostly reads allowed, rare denials, rare team changes.
    await fx.sql.query(`
      INSERT INTO audit_events (actor_id, action, resource_type, resource_id, decision, at)
      SELECT ('00000000-0000-4000-8000-' || lpad((g % 500)::text, 12, '0'))::uuid,
             CASE WHEN g % 500 = 0 THEN 'team.member_add' WHEN g % 3 = 0 THEN 'auth.login' ELSE 'project.view' END,
             CASE WHEN g % 700 = 0 THEN 'team' ELSE (ARRAY['project', 'generation'])[1 + g % 2] END,
             md5(g::text),
             CASE WHEN g % 300 = 0 THEN 'deny' WHEN g % 2 = 0 THEN 'allow' END,
             now() - (g || ' seconds')::interval
        FROM generate_series(1, 60000) g`);
    await fx.sql.query('ANALYZE audit_events');
    // A next page from the middle of the log.
    const middle = await fx.sql.query<{ at: string }>(
      `SELECT (now() - interval '30000 seconds')::text AS at`,
    );
    const cursor = encodeCursor([middle.rows[0]?.at as string, 999_999_999]);
    const filters: [AuditFilter, string][] = [
      [{}, 'audit_events_at_id_idx'],
      [{ from: '2026-01-01T00:00:00Z', to: '2027-01-01T00:00:00Z' }, 'audit_events_at_id_idx'],
      [{ actorId: '00000000-0000-4000-8000-000000000007' }, 'audit_events_actor_at_idx'],
      [{ action: 'team.member_add' }, 'audit_events_action_at_idx'],
      [{ resourceId: md5(123) }, 'audit_events_resource_id_at_idx'],
      [{ resourceType: 'team', resourceId: md5(124) }, 'audit_events_resource_id_at_idx'],
      [{ resourceType: 'team' }, 'audit_events_resource_type_at_idx'],
      [{ decision: 'deny' }, 'audit_events_decision_at_idx'],
      [
        { actorId: '00000000-0000-4000-8000-000000000007', actions: SECURITY_ACTIONS },
        'audit_events_security_idx',
      ],
    ];
    for (const [filter, index] of filters) {
      for (const pageCursor of [undefined, cursor]) {
        const compiled = auditQuery(fx.t.pools.db.analytics, filter, {
          limit: 20,
          cursor: pageCursor,
        }).compile();
        const parameters = [...compiled.parameters];
        // As planned for these values (the administrators' pool plans each statement with its values)
        // and, for the security events, also as a generic plan: their pool (authorization) forces
        // generic plans.
        const custom = await fx.sql.query(`EXPLAIN (FORMAT JSON) ${compiled.sql}`, parameters);
        const plans: [string, pg.QueryResult][] = [['custom', custom]];
        if (filter.actions) {
          await fx.sql.query(`SET plan_cache_mode = force_generic_plan`);
          await fx.sql.query(`PREPARE audit_page AS ${compiled.sql}`);
          // EXECUTE takes its arguments in the statement (a utility statement has no bind parameters).
          const args = parameters.map((p) => fx.sql.escapeLiteral(String(p))).join(', ');
          const generic = await fx.sql
            .query(`EXPLAIN (FORMAT JSON) EXECUTE audit_page${parameters.length ? `(${args})` : ''}`)
            .finally(() => fx.sql.query('DEALLOCATE audit_page; RESET plan_cache_mode'));
          plans.push(['generic', generic]);
        }
        for (const [kind, result] of plans) {
          const plan = JSON.stringify(result.rows[0]['QUERY PLAN']);
          const what = `${JSON.stringify(filter)} ${pageCursor ? 'next page' : 'first page'} (${kind} plan): ${plan}`;
          expect(plan, what).not.toContain('Seq Scan');
          // Bounded work: a page walks its index range (at most a sort of the few rows a selective
          // index returns), far below reading the 60,000-row table (a sequential scan costs ~2,500).
          expect(result.rows[0]['QUERY PLAN'][0].Plan['Total Cost'], what).toBeLessThan(500);
          expect(plan, what).toContain(`"Index Name":"${index}"`);
          // The cursor is a bound of the scan, not a filter applied to rows after reading them.
          if (pageCursor) expect(plan, what).toMatch(/"Index Cond":"[^"]*\bat\b[^"]*id\b/);
        }
      }
    }
  });
});

function md5(n: number): string {
  return createHash('md5').update(String(n)).digest('hex');
}

describe('GET /api/v1/auth/security-events', { timeout: SLOW_MS }, () => {
  it('shows a user their own sign-ins, failures, refresh reuse, key changes, password changes and sign-outs', async () => {
    const ann = await signUp(fx.app);
    // Failed attempts are written off the request path: each is awaited before the next step, so
    // the history has one order to expect.
    const written = (action: string) =>
      until(
        async () => {
          const { rows } = await fx.sql.query(
            `SELECT 1 FROM audit_events WHERE actor_id = $1 AND action = $2 AND decision = 'deny'`,
            [ann.id, action],
          );
          return rows.length > 0 ? true : undefined;
        },
        15_000,
        `${action} to be written`,
        50,
      );
    expect((await login(ann, 'wrong password')).statusCode).toBe(401);
    await written('auth.login');
    // A second session whose refresh token is then replayed: the family is revoked.
    const second = (await login(ann)).json();
    const rotated = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/auth/refresh',
      payload: { refresh_token: second.refresh_token },
    });
    expect(rotated.statusCode).toBe(200);
    const replay = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/auth/refresh',
      payload: { refresh_token: second.refresh_token },
    });
    expect(errorOf(replay).code).toBe('refresh_token_reused');
    const key = await newKey(ann, ['generations:read']);
    expect((await fx.call(ann, 'DELETE', `/service-keys/${key.id}`)).statusCode).toBeLessThan(300);
    const wrongCurrent = await fx.call(ann, 'POST', '/auth/password', {
      current_password: 'not it',
      new_password: 'a new horse battery',
    });
    expect(wrongCurrent.statusCode).toBe(403);
    await written('auth.password_change_failed');
    const changed = await fx.call(ann, 'POST', '/auth/password', {
      current_password: ann.password,
      new_password: 'a new horse battery',
    });
    expect(changed.statusCode).toBe(200);
    const third = (await login({ ...ann, password: 'a new horse battery' })).json();
    const logout = await fx.call(third.access_token, 'POST', '/auth/logout');
    expect(logout.statusCode).toBe(204);
    // A denial of someone else's resource is in the audit log, not in the security history.
    expect((await get(`/api/v1/projects/${randomUUID()}`, ann.accessToken)).statusCode).toBe(404);

    const expected = [
      'auth.register',
      'auth.login:deny',
      'auth.login:allow',
      'auth.refresh_token_reuse:deny',
      'service_key.create',
      'service_key.revoke',
      'auth.password_change_failed:deny',
      'auth.password_changed',
      'auth.login:allow',
      'auth.logout',
    ];
    const events = await allPages((cursor) => securityEvents(ann.accessToken, { limit: 3, cursor }));
    expect(events.map((e) => (e.decision ? `${e.action}:${e.decision}` : e.action)).reverse()).toEqual(
      expected,
    );
    const byAction = (action: string) => events.find((e) => e.action === action) as Event;
    expect(byAction('auth.login')).toMatchObject({ resource_type: 'user', resource_id: ann.id });
    expect(events.find((e) => e.action === 'auth.login' && e.decision === 'deny')?.reason).toBe(
      'wrong password',
    );
    expect(byAction('service_key.create')).toMatchObject({
      resource_id: key.id,
      details: { scopes: ['generations:read'] },
    });
    expect(byAction('auth.refresh_token_reuse').resource_type).toBe('session');
    expect(byAction('auth.password_changed').details).toMatchObject({ revoked_sessions: expect.any(Number) });
    // Sign-out: its session, and how many it revoked (written in the same statement as the revocation).
    expect(byAction('auth.logout')).toMatchObject({
      resource_type: 'session',
      resource_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      details: { revoked_sessions: 1 },
    });
    expect(events.every((e) => e.ip === '127.0.0.1')).toBe(true);
    expect(events.every((e) => !('actor_id' in e))).toBe(true);
    // All of them Ann's, by the table.
    const hers = await idsOf(ann.id);
    expect(events.every((e) => hers.has(e.id))).toBe(true);
    await until(
      async () => {
        const { rows } = await fx.sql.query(
          `SELECT 1 FROM audit_events WHERE actor_id = $1 AND action = 'project.view'`,
          [ann.id],
        );
        return rows.length > 0 ? true : undefined;
      },
      15_000,
      'the buffered denial to be written',
      50,
    );
    const again = await allPages((cursor) => securityEvents(ann.accessToken, { limit: 100, cursor }));
    expect(again.map((e) => e.action)).not.toContain('project.view');
    expect(again).toHaveLength(expected.length);
  });

  it('BOLA: no filter, parameter or cursor shows a user another user’s events', async () => {
    const victim = await signUp(fx.app);
    expect((await login(victim, 'guess')).statusCode).toBe(401);
    await newKey(victim, ['projects:read']);
    const attacker = await signUp(fx.app);
    const victimIds = await until(
      async () => {
        const ids = await idsOf(victim.id);
        return ids.size >= 3 ? ids : undefined;
      },
      15_000,
      'the victim’s failed sign-in to be written',
      50,
    );

    const victimPage = await securityEvents(victim.accessToken, { limit: 1 });
    const victimCursor = victimPage.next_cursor as string;
    expect(victimCursor).toEqual(expect.any(String));
    const newest = victimPage.items[0] as Event;
    const attempts: Record<string, string | number>[] = [
      {},
      { actor: victim.id },
      { actor_id: victim.id, user_id: victim.id, subject: victim.id },
      { cursor: victimCursor },
      { cursor: victimCursor, actor: victim.id },
      // A cursor made by hand just above the victim's newest event.
      { cursor: encodeCursor([newest.at.replace('T', ' ').replace('Z', '+00'), newest.id + 1]) },
      { cursor: encodeCursor(['9999-12-31 00:00:00+00', Number.MAX_SAFE_INTEGER]) },
    ];
    const attackers = await idsOf(attacker.id);
    for (const params of attempts) {
      const seen = await allPages((cursor) =>
        securityEvents(attacker.accessToken, { ...params, ...(cursor ? { cursor } : {}) }),
      );
      const ids = seen.map((e) => e.id);
      expect(
        ids.filter((id) => victimIds.has(id)),
        JSON.stringify(params),
      ).toEqual([]);
      expect(
        ids.every((id) => attackers.has(id)),
        JSON.stringify(params),
      ).toBe(true);
      expect(JSON.stringify(seen)).not.toContain(victim.id);
    }
    // The victim's own cursor, in the victim's hands, continues the victim's list.
    const rest = await securityEvents(victim.accessToken, { cursor: victimCursor, limit: 100 });
    expect(rest.items.map((e) => e.id).every((id) => victimIds.has(id) && id !== newest.id)).toBe(true);
  });

  it('401 without a token, 403 for a service key whatever its scopes, 400 for a cursor it did not make', async () => {
    const user = await signUp(fx.app);
    const anonymous = await get('/api/v1/auth/security-events');
    expect(anonymous.statusCode).toBe(401);
    expect(errorOf(anonymous).code).toBeTruthy();
    const key = await newKey(user, ['projects:read', 'generations:read', 'authz:check', 'admin']);
    const byKey = await get('/api/v1/auth/security-events', key.key);
    expect(byKey.statusCode).toBe(403);
    expect(byKey.body).not.toContain('auth.register');
    for (const cursor of ['%%%', 'W10', encodeCursor(['not a time', 1]), encodeCursor([1, 2])]) {
      const res = await get(
        `/api/v1/auth/security-events?cursor=${encodeURIComponent(cursor)}`,
        user.accessToken,
      );
      expect(res.statusCode, cursor).toBe(400);
      expect((errorOf(res).details as { field: string }[])[0]?.field).toBe('query.cursor');
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Counters at /metrics.

interface Sample {
  labels: Record<string, string>;
  value: number;
}

function samples(body: string, name: string): Sample[] {
  const out: Sample[] = [];
  for (const line of body.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const match = /^[a-z_]+(?:\{(.*)\})? ([0-9.e+-]+)$/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const [, k, v] of (match[1] ?? '').matchAll(/([a-z_]+)="([^"]*)"/g))
      labels[k as string] = v as string;
    out.push({ labels, value: Number(match[2]) });
  }
  return out;
}

const sum = (list: Sample[], where: Record<string, string>) =>
  list
    .filter((s) => Object.entries(where).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);

async function scrape() {
  const res = await fx.app.inject({ method: 'GET', url: '/metrics' });
  expect(res.statusCode).toBe(200);
  return res.body;
}

describe('authorization counters at /metrics', { timeout: SLOW_MS }, () => {
  it('decisions by result, method and layer, and denials by reason, move with allows and denies', async () => {
    const owner = await signUp(fx.app);
    const other = await signUp(fx.app);
    const project = await newProject(owner);
    const otherProject = await newProject(other);
    const key = await newKey(owner, ['authz:check', 'projects:read']);
    const check = (token: string, id: string, permission = 'view') =>
      fx.call(token, 'POST', '/authz/check', { resource: { type: 'project', id }, permission });

    const before = await scrape();
    // Every label combination is there from the first scrape, at zero or more.
    for (const result of ['allow', 'deny'])
      for (const method of ['session', 'service_key'])
        for (const layer of ['l1', 'l2', 'db'])
          expect(
            samples(before, 'velro_authz_decisions_total').some(
              (s) => s.labels.result === result && s.labels.method === method && s.labels.layer === layer,
            ),
          ).toBe(true);
    for (const reason of ['not_found', 'deleted', 'no_access', 'lacks_permission'])
      expect(samples(before, 'velro_authz_denials_total').some((s) => s.labels.reason === reason)).toBe(true);

    expect((await check(owner.accessToken, project)).json().allowed).toBe(true);
    expect((await check(owner.accessToken, project)).json().allowed).toBe(true); // warm, usually l1
    expect((await check(owner.accessToken, otherProject)).json().allowed).toBe(false);
    expect((await check(owner.accessToken, randomUUID())).json().allowed).toBe(false);
    expect((await check(key.key, project, 'manage')).json().allowed).toBe(true);
    // Through a resource route: 404 for the other's project.
    expect((await get(`/api/v1/projects/${otherProject}`, owner.accessToken)).statusCode).toBe(404);
    expect((await get(`/api/v1/projects/${project}`, key.key)).statusCode).toBe(200);
    // Visible, but not the permission: a public project's `edit`.
    const publicProject = await newProject(other, 'public');
    expect((await check(owner.accessToken, publicProject, 'edit')).json().allowed).toBe(false);

    const after = await scrape();
    const delta = (name: string, where: Record<string, string>) =>
      sum(samples(after, name), where) - sum(samples(before, name), where);
    expect(delta('velro_authz_decisions_total', { result: 'allow', method: 'session' })).toBe(2);
    // Each decision names one of the three layers (which one depends on whether the cache may
    // answer at that moment: under load its freshness lease can lapse, and the database answers).
    expect(
      ['l1', 'l2', 'db'].reduce(
        (n, layer) => n + delta('velro_authz_decisions_total', { result: 'allow', method: 'session', layer }),
        0,
      ),
    ).toBe(2);
    expect(delta('velro_authz_decisions_total', { result: 'allow', method: 'service_key' })).toBe(2);
    expect(delta('velro_authz_decisions_total', { result: 'deny', method: 'session' })).toBe(4);
    expect(delta('velro_authz_decisions_total', { result: 'deny', method: 'service_key' })).toBe(0);
    expect(delta('velro_authz_denials_total', { reason: 'not_found' })).toBe(1);
    expect(delta('velro_authz_denials_total', { reason: 'no_access' })).toBe(2);
    expect(delta('velro_authz_denials_total', { reason: 'lacks_permission' })).toBe(1);
    expect(delta('velro_authz_denials_total', {})).toBe(4);
    // No user or resource id in any label.
    for (const id of [owner.id, other.id, project, otherProject]) expect(after).not.toContain(id);
  });

  it('the probing figure: one subject refused many ids it cannot see, not one refused edits it can see', async () => {
    const prober = await signUp(fx.app);
    const reader = await signUp(fx.app);
    const owner = await signUp(fx.app);
    const publicProject = await newProject(owner, 'public');
    const bulk = (user: SignedUp, checks: unknown[]) =>
      fx.call(user, 'POST', '/authz/check-bulk', { checks });
    // 100 "may I edit?" on a project the reader can see: 403-class denials, not probing.
    const edits = await bulk(
      reader,
      Array.from({ length: 100 }, () => ({
        resource: { type: 'project', id: publicProject },
        permission: 'edit',
      })),
    );
    expect(edits.statusCode).toBe(200);
    const figureOf = async () =>
      sum(samples(await scrape(), 'velro_authz_denials_subject_max'), { window: '1m' });
    const quiet = await figureOf();
    expect(quiet).toBeLessThan(100);
    // 80 ids that do not exist, in one request, then 10 one by one through a resource route.
    const probe = await bulk(
      prober,
      Array.from({ length: 80 }, () => ({
        resource: { type: 'generation', id: randomUUID() },
        permission: 'view',
      })),
    );
    expect(probe.json().results.every((r: { allowed: boolean }) => !r.allowed)).toBe(true);
    for (let i = 0; i < 10; i++)
      expect((await get(`/api/v1/generations/${randomUUID()}`, prober.accessToken)).statusCode).toBe(404);
    expect(await figureOf()).toBeGreaterThanOrEqual(90);
    const body = await scrape();
    expect(sum(samples(body, 'velro_authz_denials_subject_max'), { window: '5m' })).toBeGreaterThanOrEqual(
      90,
    );
    expect(body).not.toContain(prober.id);
  });
});

// ---------------------------------------------------------------------------------------------
// The rule on the in-process tracker, with an injected clock.

describe('authz_denial_spike', { timeout: SLOW_MS }, () => {
  const rule = ALERT_RULES.find((r) => r.name === 'authz_denial_spike');
  const quietProcess: ProcessSource = {
    cpuSeconds: () => 0,
    residentBytes: () => 1,
    memoryLimitBytes: () => 100,
  };

  function world() {
    let now = 1_800_000_000_000;
    const tally = new AuthzTally();
    const fired: string[] = [];
    const tracker = new PerformanceTracker(
      { l1: () => ({ hits: 0, misses: 0 }), denials: (ms) => tally.probing(ms) },
      [rule as NonNullable<typeof rule>],
      (state) => fired.push(`${state.rule.name}:${state.state}`),
      () => now,
      quietProcess,
    );
    /** Moves the clock by 10 s, as the app's timer does for the tally, and evaluates. */
    const step = () => {
      now += 10_000;
      tally.rotate();
      return tracker.tick().find((s) => s.rule.name === 'authz_denial_spike');
    };
    return { tally, fired, step };
  }

  it('fires when one subject is refused more than 50 hidden resources a minute for a minute, and resolves', () => {
    expect(rule).toMatchObject({ threshold: 50, minSamples: 50, forSeconds: 60, window: '1m' });
    const w = world();
    const prober = randomUUID();
    const states: string[] = [];
    // 15 denials of ids that do not exist every 10 s: 90 a minute.
    for (let i = 0; i < 12; i++) {
      for (let k = 0; k < 15; k++) w.tally.denied(false, 'l1', 'not_found', prober);
      states.push(w.step()?.state ?? 'none');
    }
    expect(states.slice(0, 2)).not.toContain('firing');
    expect(states).toContain('pending');
    expect(states.at(-1)).toBe('firing');
    expect(w.fired).toEqual(['authz_denial_spike:firing']);
    // It stops: a minute later the window is clean and the alert resolves.
    for (let i = 0; i < 8; i++) w.step();
    expect(w.fired).toEqual(['authz_denial_spike:firing', 'authz_denial_spike:ok']);
  });

  it('does not fire for many subjects a few each, for 403-class denials, or for a short burst', () => {
    const busy = world();
    for (let i = 0; i < 30; i++) {
      // 200 denials every 10 s, spread over 40 subjects.
      for (let k = 0; k < 200; k++) busy.tally.denied(k % 2 === 0, 'miss', 'no_access', `subject-${k % 40}`);
      // And one subject refused 100 edits it can see.
      for (let k = 0; k < 100; k++) busy.tally.denied(false, 'l1', 'lacks_permission', 'editor');
      busy.step();
    }
    expect(busy.fired).toEqual([]);

    const burst = world();
    const prober = randomUUID();
    for (let k = 0; k < 200; k++) burst.tally.denied(false, 'l1', 'not_found', prober);
    for (let i = 0; i < 12; i++) burst.step();
    expect(burst.fired).toEqual([]);
  });
});
