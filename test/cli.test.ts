import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signUp, startTestApp, TEST_ENV, type TestApp } from './helpers/app.js';
import { useTestDatabase } from './helpers/fixture.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const fx = useTestDatabase();
let dataDir: string;

/** `npm run velro -- …`, as a child process on this file's database. */
function velro(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', ...args],
      {
        cwd: ROOT,
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '',
          ...TEST_ENV,
          DATABASE_URL: fx.db.url,
          DATA_DIR: dataDir,
        },
        timeout: 60_000,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function json<T = Record<string, unknown>>(run: Run): T {
  if (run.code !== 0) throw new Error(`exit ${run.code}: ${run.stderr}`);
  return JSON.parse(run.stdout) as T;
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'velro-cli-'));
});

afterAll(async () => {
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

// Each run is a fresh process (tsx, then the database): slow on a busy machine.
describe('velro CLI', { timeout: 180_000 }, () => {
  it('lists its commands, and each command has --help', async () => {
    const top = await velro('--help');
    expect(top.code).toBe(0);
    for (const command of [
      'status',
      'migrate',
      'create-admin',
      'grant-credits',
      'service-key',
      'cache',
      'seed-data',
    ]) {
      expect(top.stdout).toContain(command);
    }
    const help = await velro('grant-credits', '--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: velro grant-credits --email EMAIL --amount N/);
  });

  it('refuses unknown commands and options with exit 2 and says why', async () => {
    const [unknown, badOption, missing] = await Promise.all([
      velro('frobnicate'),
      velro('migrate', '--nope'),
      velro('grant-credits', '--amount', '5'),
    ]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown command: frobnicate');
    expect(badOption.code).toBe(2);
    expect(badOption.stderr).toContain("Unknown option '--nope'");
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('--email is required');
  });

  it('status: the database in use, versions, migrations and queue depth, in text and JSON', async () => {
    const report = json<{
      database: { kind: string; url: string; running: boolean };
      versions: { node: string; postgresql: string };
      migrations: { applied: number; pending: string[] };
      queue: { waiting: number; running: number };
      redis: { configured: boolean };
    }>(await velro('status', '--json'));
    expect(report.database).toEqual({ kind: 'external', url: fx.db.url, running: true });
    expect(report.versions.postgresql).toMatch(/^\d+/);
    expect(report.migrations.pending).toEqual([]);
    expect(report.migrations.applied).toBeGreaterThan(0);
    expect(report.queue).toEqual({ waiting: 0, running: 0 });
    expect(report.redis).toEqual({ configured: false });
    const text = await velro('status');
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/API URL: http:\/\/127\.0\.0\.1:\d+\/api\/v1/);
    expect(text.stdout).toContain(`DATABASE_URL: ${fx.db.url} (DATABASE_URL)`);
    expect(text.stdout).toContain('none pending');
  });

  it('migrate: reports the database up to date', async () => {
    const run = await velro('migrate', '--json');
    expect(json(run)).toEqual({ applied: [], database: expect.stringContaining(fx.db.name) });
    const text = await velro('migrate');
    expect(text.stdout).toContain('is up to date');
  });

  it('create-admin: creates with a generated password, promotes, and is idempotent', async () => {
    const created = json<{ action: string; user: { id: string; role: string }; password: string }>(
      await velro('create-admin', '--email', 'Root@Example.com', '--json'),
    );
    expect(created.action).toBe('created');
    expect(created.user.role).toBe('admin');
    expect(created.password.length).toBeGreaterThanOrEqual(16);
    const { rows } = await fx.sql.query(
      `SELECT u.role, u.credits_balance, (SELECT count(*)::int FROM credit_transactions c WHERE c.user_id = u.id AND c.reason = 'signup') AS signups
         FROM users u WHERE email = 'root@example.com'`,
    );
    expect(rows[0]).toEqual({ role: 'admin', credits_balance: 1000, signups: 1 });

    const again = json<{ action: string }>(
      await velro('create-admin', '--email', 'root@example.com', '--json'),
    );
    expect(again.action).toBe('unchanged');

    await fx.sql.query(
      `INSERT INTO users (email, password_hash, display_name) VALUES ('plain@example.com', 'x', 'p')`,
    );
    const promoted = await velro('create-admin', '--email', 'plain@example.com');
    expect(promoted.code).toBe(0);
    expect(promoted.stdout).toContain('promoted plain@example.com');
    const role = await fx.sql.query(`SELECT role FROM users WHERE email = 'plain@example.com'`);
    expect(role.rows[0].role).toBe('admin');

    const bad = await velro('create-admin', '--email', 'not-an-email');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--email must match format "email"');
    const short = await velro('create-admin', '--email', 'x@example.com', '--password', 'short');
    expect(short.code).toBe(2);
    expect(short.stderr).toContain('--password');
  });

  it('grant-credits: writes an admin_grant ledger row; unknown email fails with a clear message', async () => {
    await velro('create-admin', '--email', 'rich@example.com', '--password', 'correct horse battery');
    const granted = json<{ credits_balance: number; amount: number }>(
      await velro(
        'grant-credits',
        '--email',
        'RICH@example.com',
        '--amount',
        '250',
        '--note',
        'launch',
        '--json',
      ),
    );
    expect(granted).toMatchObject({ amount: 250, credits_balance: 1250 });
    const { rows } = await fx.sql.query(
      `SELECT c.amount, c.balance_after, c.reason FROM credit_transactions c JOIN users u ON u.id = c.user_id
        WHERE u.email = 'rich@example.com' ORDER BY c.id DESC LIMIT 1`,
    );
    expect(rows[0]).toEqual({ amount: 250, balance_after: 1250, reason: 'admin_grant' });
    const audit = await fx.sql.query(`SELECT details FROM audit_events WHERE action = 'credits.grant'`);
    expect(audit.rows[0].details).toMatchObject({ amount: 250, note: 'launch', via: 'cli' });

    const unknown = await velro('grant-credits', '--email', 'nobody@example.com', '--amount', '5');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no user with the email nobody@example.com');
    const unknownJson = await velro(
      'grant-credits',
      '--email',
      'nobody@example.com',
      '--amount',
      '5',
      '--json',
    );
    expect(unknownJson.code).toBe(1);
    expect(JSON.parse(unknownJson.stderr)).toEqual({
      error: { code: 'user_not_found', message: 'no user with the email nobody@example.com' },
    });
    const amounts = ['0', '1000001', '2.5', 'lots'];
    const refusals = await Promise.all(
      amounts.map((amount) => velro('grant-credits', '--email', 'rich@example.com', '--amount', amount)),
    );
    for (const [i, refused] of refusals.entries()) {
      expect(refused.code, amounts[i]).toBe(2);
      expect(refused.stderr).toContain('--amount must be a whole number from 1 to 1000000');
    }
  });

  describe('with a running server', () => {
    let t: TestApp;
    let url: string;
    let adminToken: string;

    beforeAll(async () => {
      t = await startTestApp({ databaseUrl: fx.db.url });
      await t.app.listen({ host: '127.0.0.1', port: 0 });
      url = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
      await velro('create-admin', '--email', 'ops@example.com', '--password', 'correct horse battery');
      const login = await t.app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        payload: { email: 'ops@example.com', password: 'correct horse battery' },
      });
      adminToken = login.json().access_token;
    });

    afterAll(async () => {
      await t?.close();
    });

    it('service-key: create prints the secret once, it works, list shows it, revoke stops it', async () => {
      const user = await signUp(t.app);
      const created = json<{ id: string; key: string; scopes: string[]; prefix: string }>(
        await velro(
          'service-key',
          'create',
          '--email',
          user.email,
          '--name',
          'ci',
          '--scopes',
          'generations:read,projects:read',
          '--json',
        ),
      );
      expect(created.key).toMatch(/^vk_/);
      expect(created.scopes).toEqual(['generations:read', 'projects:read']);
      const me = await fetch(`${url}/api/v1/generations`, {
        headers: { authorization: `Bearer ${created.key}` },
      });
      expect(me.status).toBe(200);

      const text = await velro(
        'service-key',
        'create',
        '--email',
        user.email,
        '--name',
        'other',
        '--scopes',
        'authz:check',
      );
      expect(text.code).toBe(0);
      expect(text.stdout).toMatch(/\nvk_\S+\n$/);
      expect(text.stderr).toContain('shown once');

      const listed = json<{ items: { id: string; prefix: string; revoked_at: string | null }[] }>(
        await velro('service-key', 'list', '--email', user.email, '--json'),
      );
      expect(listed.items.map((k) => k.id)).toContain(created.id);
      expect(JSON.stringify(listed)).not.toContain(created.key);

      const revoked = json<{ consistency_token: number }>(
        await velro('service-key', 'revoke', '--email', user.email, '--id', created.id, '--json'),
      );
      const after = await fetch(`${url}/api/v1/generations`, {
        headers: {
          authorization: `Bearer ${created.key}`,
          'velro-consistency-token': String(revoked.consistency_token),
        },
      });
      expect(after.status).toBe(401);

      const missing = await velro(
        'service-key',
        'revoke',
        '--email',
        user.email,
        '--id',
        '00000000-0000-4000-8000-000000000000',
      );
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain('Service key not found');
      const badScope = await velro(
        'service-key',
        'create',
        '--email',
        user.email,
        '--name',
        'x',
        '--scopes',
        'root',
      );
      expect(badScope.code).toBe(2);
      expect(badScope.stderr).toContain('unknown scope root');
      const noUser = await velro('service-key', 'list', '--email', 'ghost@example.com');
      expect(noUser.code).toBe(1);
      expect(noUser.stderr).toContain('no user with the email ghost@example.com');
      const noAction = await velro('service-key', '--email', user.email);
      expect(noAction.code).toBe(2);
    });

    it('playground: check, explain, lookup and whois answer as the authorization engine does', async () => {
      const alice = await signUp(t.app);
      const bob = await signUp(t.app);
      const post = async (as: string, path: string, payload: unknown) => {
        const res = await t.app.inject({
          method: 'POST',
          url: `/api/v1${path}`,
          headers: { authorization: `Bearer ${as}` },
          payload: payload as Record<string, unknown>,
        });
        expect(res.statusCode, res.body).toBe(201);
        return res.json() as { id: string };
      };
      const team = await post(alice.accessToken, '/teams', { name: 'Design' });
      await post(alice.accessToken, `/teams/${team.id}/members`, { email: bob.email, role: 'editor' });
      const brand = await post(alice.accessToken, '/projects', {
        name: 'Brand',
        visibility: 'team',
        team_id: team.id,
      });
      const secret = await post(alice.accessToken, '/projects', { name: 'Secret' });

      // Each run is a process of its own; the independent ones run side by side.
      const [
        allowedRun,
        denied,
        whyRun,
        whyText,
        teamText,
        missing,
        pageRun,
        mine,
        whoisRun,
        whoisText,
        nobody,
        ...usage
      ] = await Promise.all([
        velro('check', bob.email, 'edit', `project:${brand.id}`, '--json'),
        velro('check', bob.id, 'delete', `project:${brand.id}`),
        velro('explain', bob.email, 'delete', `project:${brand.id}`, '--json'),
        velro('explain', bob.email, 'view', `project:${secret.id}`),
        velro('explain', bob.email, 'edit', `project:${brand.id}`),
        velro('check', bob.email, 'view', 'project:00000000-0000-4000-8000-000000000000'),
        velro('lookup', bob.email, 'view', 'project', '--json'),
        velro('lookup', alice.email, 'manage', 'project', '--limit', '1'),
        velro('whois', bob.email, '--json'),
        velro('whois', alice.email),
        velro('whois', 'ghost@example.com'),
        velro('check', bob.email, 'edit', `folder:${brand.id}`),
        velro('check', bob.email, 'manage', `generation:${brand.id}`),
        velro('check', bob.email, 'edit', 'project:not-an-id'),
        velro('check', bob.email, 'edit'),
      ]);
      const allowed = json<{ allowed: boolean; permissions: string[]; access_method: string }>(
        allowedRun as Run,
      );
      expect(allowed).toMatchObject({
        allowed: true,
        permissions: ['view', 'edit'],
        access_method: 'team:editor',
        subject: { id: bob.id, email: bob.email },
        resource: { type: 'project', id: brand.id, name: 'Brand', exists: true },
      });
      // The same answer as the API gives.
      const api = await t.app.inject({
        method: 'POST',
        url: '/api/v1/authz/check',
        headers: { authorization: `Bearer ${bob.accessToken}` },
        payload: { resource: { type: 'project', id: brand.id }, permission: 'edit' },
      });
      expect(api.json()).toMatchObject({
        allowed: true,
        permissions: ['view', 'edit'],
        access_method: 'team:editor',
      });

      expect(denied?.code).toBe(0);
      expect(denied?.stdout).toContain(`denied: ${bob.email} may not delete project ${brand.id} "Brand"`);
      expect(denied?.stdout).toContain('holds: view, edit (team:editor)');

      const why = json<{ rule: number; reason: string; facts: { project: { owner_id: string } } }>(
        whyRun as Run,
      );
      expect(why).toMatchObject({
        allowed: false,
        rule: 4,
        facts: { type: 'project', membership: { role: 'editor', active: true } },
      });
      expect(why.facts.project.owner_id).toBe(alice.id);
      expect(whyText?.stdout).toContain('rule 6: no rule grants access');
      expect(whyText?.stdout).toContain(`owner ${alice.email}, team none, visibility private`);
      expect(teamText?.stdout).toContain(`${bob.email} in team Design: editor, active`);
      expect(missing?.stdout).toContain('denied: there is no project 00000000-0000-4000-8000-000000000000');

      const page = json<{ items: { id: string; name: string }[]; next_cursor: string | null }>(
        pageRun as Run,
      );
      expect(page.items).toEqual([{ id: brand.id, name: 'Brand' }]);
      expect(mine?.stdout).toContain(`projects ${alice.email} may manage: 1 (more with --cursor below)`);
      const cursor = /next cursor: (\S+)/.exec(mine?.stdout ?? '')?.[1] as string;
      const next = json<{ items: { id: string }[] }>(
        await velro('lookup', alice.email, 'manage', 'project', '--limit', '1', '--cursor', cursor, '--json'),
      );
      expect(next.items).toHaveLength(1);

      const whois = json<{
        user: { id: string; role: string };
        teams: { name: string; role: string; active: boolean }[];
        projects: { name: string; access: string }[];
      }>(whoisRun as Run);
      expect(whois.user.id).toBe(bob.id);
      expect(whois.teams).toEqual([
        { id: team.id, name: 'Design', role: 'editor', active: true, owner: false },
      ]);
      expect(whois.projects.map((p) => [p.name, p.access])).toEqual([['Brand', 'team:editor']]);
      expect(whoisText?.stdout).toContain(`Design ${team.id}: owner`);
      expect(whoisText?.stdout).toMatch(/Secret \S+: owner, visibility private/);

      expect(usage.map((u) => u.code)).toEqual([2, 2, 2, 2]);
      expect(usage[0]?.stderr).toContain('unknown resource type folder');
      expect(usage[1]?.stderr).toContain('generation has no permission manage');
      expect(usage[2]?.stderr).toContain('not-an-id is not an id');
      expect(nobody?.code).toBe(1);
      expect(nobody?.stderr).toContain('no user with the email ghost@example.com');
    });

    it('cache stats and warm go through the admin API; flush works through the API or the database', async () => {
      const stats = json<{ l1: unknown; bus: { connected: boolean } }>(
        await velro('cache', 'stats', '--url', url, '--token', adminToken, '--json'),
      );
      expect(stats.l1).toBeDefined();
      expect(stats.bus.connected).toBe(true);

      const warm = json<{ subjects: number; views_refreshed: boolean }>(
        await velro('cache', 'warm', '--url', url, '--token', adminToken, '--limit', '100', '--json'),
      );
      expect(warm.views_refreshed).toBe(true);

      const viaApi = json<{ flushed_at_revision: number; via: string }>(
        await velro('cache', 'flush', '--url', url, '--token', adminToken, '--json'),
      );
      expect(viaApi.via).toBe('api');
      const viaDb = json<{ flushed_at_revision: number; via: string }>(
        await velro('cache', 'flush', '--json'),
      );
      expect(viaDb).toEqual({ flushed_at_revision: viaApi.flushed_at_revision + 1, via: 'database' });
      const { rows } = await fx.sql.query('SELECT rev, flush_floor FROM authz_revision');
      expect(rows[0]).toEqual({ rev: viaDb.flushed_at_revision, flush_floor: viaDb.flushed_at_revision });
      // The running instance heard it.
      expect(await t.pipeline.bus.waitFor(viaDb.flushed_at_revision, 5_000)).toBe(true);

      const noUrl = await velro('cache', 'stats');
      expect(noUrl.code).toBe(2);
      expect(noUrl.stderr).toContain('--url');
      const user = await signUp(t.app);
      const forbidden = await velro('cache', 'stats', '--url', url, '--token', user.accessToken);
      expect(forbidden.code).toBe(1);
      expect(forbidden.stderr).toContain('answered 403');
      const unreachable = await velro('cache', 'warm', '--url', 'http://127.0.0.1:9', '--token', adminToken);
      expect(unreachable.code).toBe(1);
      expect(unreachable.stderr).toContain('could not reach http://127.0.0.1:9');
      const unknown = await velro('cache', 'explode');
      expect(unknown.code).toBe(2);
    });
  });

  it('seed-data: loads a small data set through bench/lib/seed.ts', async () => {
    const report = json<{ counts: { users: number; generations: number }; rows: number }>(
      await velro('seed-data', '--users', '20', '--generations', '60', '--json'),
    );
    expect(report.counts.users).toBe(20);
    expect(report.counts.generations).toBe(60);
    const { rows } = await fx.sql.query(
      `SELECT count(*)::int AS n FROM users WHERE email LIKE '%@seed.velro.test'`,
    );
    expect(rows[0].n).toBe(20);
    const missing = await velro('seed-data', '--users', '5');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('--users and --generations are required');
  });
});
