/**
 * A fleet on one box, every member a real process: API instances A and B (one process each), C
 * (WEB_CONCURRENCY=2), and a separate generation worker W, sharing one PostgreSQL database, one
 * Redis server and one S3-protocol server (s3rver, in this test's process). Nothing is shared through
 * a local disk: each process has its own DATA_DIR.
 *
 * - A generation created on A is rendered by W and its media fetched through C, bytes from the bucket.
 * - A membership revoked on B is denied on A, B and C at once with the write's consistency token,
 *   and without it as soon as the invalidation arrives (bounded by the lease).
 * - The cache kill switch thrown on A holds on every server process, C's two included.
 * - B killed with SIGKILL in the middle of writes loses none that it acknowledged.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, TEST_ENV, type TestDatabase } from './helpers/app.js';
import { childEnv } from './helpers/live.js';
import { freePort, RedisFarm, runRedisHaTests, until } from './helpers/redis-servers.js';
import { type S3TestServer, startS3Server } from './helpers/s3.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const API = '/api/v1';
const LEASE_MS = 2_000;
const CONSISTENCY = 'velro-consistency-token';

interface Member {
  name: string;
  child: ChildProcess;
  base: string;
  dataDir: string;
  output: () => string;
  exited: Promise<void>;
}

let db: TestDatabase;
let sql: pg.Client;
let redis: RedisFarm;
let redisUrl: string;
let s3: S3TestServer;
const members: Member[] = [];

async function startMember(name: string, script: string, env: Record<string, string>): Promise<Member> {
  const port = await freePort();
  const dataDir = await mkdtemp(join(tmpdir(), `velro-fleet-${name}-`));
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    cwd: ROOT,
    env: childEnv({
      ...TEST_ENV,
      ...s3.env,
      LOG_LEVEL: 'warn',
      HOST: '127.0.0.1',
      PORT: String(port),
      DATABASE_URL: db.url,
      REDIS_URL: redisUrl,
      DATA_DIR: dataDir,
      INVALIDATION_LEASE_MS: String(LEASE_MS),
      SHUTDOWN_GRACE_MS: '3000',
      ...env,
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8_000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const member = { name, child, base: `http://127.0.0.1:${port}`, dataDir, output: () => output, exited };
  members.push(member);
  return member;
}

async function ready(member: Member): Promise<void> {
  await until(
    async () => {
      if (member.child.exitCode !== null) throw new Error(`${member.name} exited:\n${member.output()}`);
      const res = await fetch(`${member.base}/ready`).catch(() => null);
      return res?.status === 200 ? true : undefined;
    },
    90_000,
    `${member.name} to be ready`,
  ).catch((error: Error) => {
    throw new Error(`${error.message}\n${member.output()}`);
  });
}

interface Answer {
  status: number;
  body: Record<string, unknown>;
  headers: Headers;
}

/** One request on a connection of its own (so C's primary hands each to its next process). */
async function call(
  member: Member,
  method: string,
  path: string,
  options: { token?: string; json?: unknown; consistency?: string } = {},
): Promise<Answer> {
  const res = await fetch(`${member.base}${API}${path}`, {
    method,
    headers: {
      connection: 'close',
      ...(options.json === undefined ? {} : { 'content-type': 'application/json' }),
      ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
      ...(options.consistency ? { [CONSISTENCY]: options.consistency } : {}),
    },
    ...(options.json === undefined ? {} : { body: JSON.stringify(options.json) }),
  });
  const text = await res.text();
  return {
    status: res.status,
    body: text ? (JSON.parse(text) as Record<string, unknown>) : {},
    headers: res.headers,
  };
}

async function register(
  member: Member,
  label: string,
): Promise<{ token: string; email: string; id: string }> {
  const email = `${label}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`;
  const res = await call(member, 'POST', '/auth/register', {
    json: { email, password: 'correct horse battery' },
  });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return { token: res.body.access_token as string, email, id: (res.body.user as { id: string }).id };
}

let a: Member;
let b: Member;
let c: Member;
let ann: { token: string; email: string; id: string };
let teamId: string;
let generationId: string;

describe.runIf(runRedisHaTests)('a fleet on one box', () => {
  beforeAll(async () => {
    db = await createTestDatabase();
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
    redis = new RedisFarm();
    const server = await redis.server('fleet');
    redisUrl = `redis://127.0.0.1:${server.port}`;
    s3 = await startS3Server();
    const api = { WORKER_ENABLED: 'false' };
    a = await startMember('a', 'src/main.ts', api);
    b = await startMember('b', 'src/main.ts', api);
    c = await startMember('c', 'src/main.ts', { ...api, WEB_CONCURRENCY: '2' });
    await startMember('w', 'src/worker.ts', { WORKER_CONCURRENCY: '2' });
    await Promise.all([a, b, c].map(ready));
  }, 180_000);

  afterAll(async () => {
    for (const member of members) {
      if (member.child.exitCode === null && member.child.signalCode === null) member.child.kill('SIGTERM');
    }
    await Promise.race([
      Promise.all(members.map((m) => m.exited)),
      new Promise((resolve) => setTimeout(resolve, 15_000)),
    ]);
    for (const member of members) {
      if (member.child.exitCode === null && member.child.signalCode === null) member.child.kill('SIGKILL');
      await rm(member.dataDir, { recursive: true, force: true });
    }
    await sql?.end();
    await s3?.close();
    await redis?.stopAll();
    await db?.drop();
  }, 60_000);

  it('a generation created on A is rendered by the separate worker and its media fetched through C', async () => {
    ann = await register(a, 'ann');
    const team = await call(a, 'POST', '/teams', { token: ann.token, json: { name: 'Fleet' } });
    expect(team.status).toBe(201);
    teamId = team.body.id as string;
    const project = await call(a, 'POST', '/projects', {
      token: ann.token,
      json: { name: 'Fleet project', team_id: teamId, visibility: 'team' },
    });
    expect(project.status).toBe(201);
    const models = await call(a, 'GET', '/models');
    const model = (models.body.items as { id: string; cost_credits: number }[]).sort(
      (x, y) => x.cost_credits - y.cost_credits,
    )[0];
    const created = await call(a, 'POST', '/generations', {
      token: ann.token,
      json: {
        model_id: model?.id,
        project_id: project.body.id,
        prompt: 'a lighthouse at dusk',
        parameters: { width: 64, height: 64, seed: 3 },
      },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(202);
    generationId = created.body.id as string;

    const done = await until(
      async () => {
        const res = await call(c, 'GET', `/generations/${generationId}`, { token: ann.token });
        expect(res.status).toBe(200);
        if (res.body.status === 'failed') throw new Error(JSON.stringify(res.body));
        return res.body.status === 'completed' ? res.body : undefined;
      },
      60_000,
      'the worker to complete the generation',
    );
    expect(done.status).toBe('completed');

    const urls = await call(c, 'GET', `/generations/${generationId}/media-urls`, { token: ann.token });
    expect(urls.status).toBe(200);
    const url = (urls.body.items as { url: string }[])[0]?.url as string;
    const media = await fetch(`${c.base}${url}`, { headers: { connection: 'close' } });
    expect(media.status).toBe(200);
    const bytes = Buffer.from(await media.arrayBuffer());
    expect(bytes.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    // The bytes are in the bucket, and on no member's disk.
    expect(s3.puts.length).toBeGreaterThan(0);
    for (const member of members) {
      const entries = await readdir(member.dataDir).catch(() => [] as string[]);
      expect(entries, member.name).not.toContain('media');
    }
  });

  it('a membership revoked on B is denied everywhere: at once with the token, within the lease without', async () => {
    const bob = await register(b, 'bob');
    const added = await call(a, 'POST', `/teams/${teamId}/members`, {
      token: ann.token,
      json: { email: bob.email, role: 'viewer' },
    });
    expect(added.status, JSON.stringify(added.body)).toBe(201);
    const addedToken = added.headers.get(CONSISTENCY) ?? undefined;
    // Bob can see the generation through every instance; C twice so both of its processes cache it.
    for (const member of [a, b, c, c, c]) {
      const res = await call(member, 'GET', `/generations/${generationId}`, {
        token: bob.token,
        ...(addedToken ? { consistency: addedToken } : {}),
      });
      expect(res.status, member.name).toBe(200);
    }
    for (const member of [a, b, c, c]) {
      expect((await call(member, 'GET', `/generations/${generationId}`, { token: bob.token })).status).toBe(
        200,
      );
    }

    const removed = await call(b, 'DELETE', `/teams/${teamId}/members/${bob.id}`, { token: ann.token });
    expect(removed.status).toBe(204);
    const removedAt = performance.now();
    const token = removed.headers.get(CONSISTENCY);
    expect(token).toBeTruthy();
    for (const member of [a, b, c, c, c]) {
      const res = await call(member, 'GET', `/generations/${generationId}`, {
        token: bob.token,
        consistency: token as string,
      });
      expect(res.status, `${member.name} with the token`).toBe(404);
    }
    // Without the token: denied as soon as the invalidation arrives, never later than the lease.
    const deniedAfterMs: Record<string, number> = {};
    for (const member of [a, b, c]) {
      await until(
        async () => {
          const res = await call(member, 'GET', `/generations/${generationId}`, { token: bob.token });
          return res.status === 404 ? true : undefined;
        },
        LEASE_MS,
        `${member.name} to deny without the token`,
      );
      deniedAfterMs[member.name] = Math.round(performance.now() - removedAt);
    }
    for (let i = 0; i < 6; i++) {
      expect((await call(c, 'GET', `/generations/${generationId}`, { token: bob.token })).status).toBe(404);
    }
    console.info(
      `fleet: denied without a token after (ms, including this test's own requests)`,
      deniedAfterMs,
    );
  });

  it('the cache kill switch thrown on A holds on every server process', async () => {
    const admin = await register(a, 'admin');
    await sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    const login = await call(a, 'POST', '/auth/login', {
      json: { email: admin.email, password: 'correct horse battery' },
    });
    expect(login.status).toBe(200);
    const adminToken = login.body.access_token as string;
    const off = await call(a, 'PATCH', '/admin/flags', { token: adminToken, json: { cache_enabled: false } });
    expect(off.status, JSON.stringify(off.body)).toBe(200);

    const { rows } = await sql.query<{ cache_flag_rev: string }>('SELECT cache_flag_rev FROM authz_revision');
    const flagRevision = Number(rows[0]?.cache_flag_rev);
    // Every instance with a LISTEN connection acknowledges: A, B, C's two processes, and W.
    const acks = await until(
      async () => {
        const { rows: acked } = await sql.query<{ instance_id: string }>(
          'SELECT instance_id FROM cache_flag_acks WHERE flag_rev >= $1 AND cache_enabled = false',
          [flagRevision],
        );
        return acked.length >= 5 ? acked : undefined;
      },
      10_000,
      'five acknowledgements of the switch',
    );
    expect(acks.length).toBeGreaterThanOrEqual(5);
    for (const member of [a, b, c, c, c]) {
      const flags = await call(member, 'GET', '/admin/flags', { token: adminToken });
      expect(flags.body, member.name).toEqual({ cache_enabled: false });
    }
    const stats = await call(c, 'GET', '/admin/cache/stats', { token: adminToken });
    const instances = (stats.body.fleet as { instances: { cache_enabled: boolean; current: boolean }[] })
      .instances;
    expect(instances.filter((i) => i.current && !i.cache_enabled).length).toBeGreaterThanOrEqual(5);

    const on = await call(b, 'PATCH', '/admin/flags', { token: adminToken, json: { cache_enabled: true } });
    expect(on.status).toBe(200);
  });

  it('B killed with SIGKILL in the middle of writes loses none that it acknowledged', async () => {
    const acknowledged: string[] = [];
    let stop = false;
    const writer = async (n: number) => {
      for (let i = 0; !stop; i++) {
        try {
          const res = await call(b, 'POST', '/projects', {
            token: ann.token,
            json: { name: `sigkill-${n}-${i}` },
          });
          if (res.status === 201) acknowledged.push(res.body.id as string);
        } catch {
          return;
        }
      }
    };
    const writers = Array.from({ length: 4 }, (_, n) => writer(n));
    await until(
      async () => (acknowledged.length >= 20 ? true : undefined),
      30_000,
      'twenty acknowledged writes',
    );
    b.child.kill('SIGKILL');
    await b.exited;
    stop = true;
    await Promise.all(writers);
    const { rows } = await sql.query<{ id: string }>('SELECT id FROM projects WHERE id = ANY($1)', [
      acknowledged,
    ]);
    expect(rows.length).toBe(acknowledged.length);
    // The rest of the fleet serves them.
    for (const id of acknowledged.slice(-3)) {
      expect((await call(a, 'GET', `/projects/${id}`, { token: ann.token })).status).toBe(200);
    }
  });
});
