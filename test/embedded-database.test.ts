import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { provisionDatabase } from '../src/platform/db/database.js';
import {
  findRunningEmbedded,
  type RunningRecord,
  startEmbeddedPostgres,
} from '../src/platform/db/embedded.js';

const quiet = { info: () => {}, debug: () => {} };
const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'velro-embedded-'));
  dirs.push(dir);
  return dir;
}

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Whether the process still runs. A server this test process started (through the first
 * provisionDatabase) stays a zombie until Node reaps it, which happens on a later turn of the
 * event loop: a zombie has exited and counts as gone.
 */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch (error) {
    // Gone meanwhile; or no /proc (not Linux), where the signal check is all there is.
    return (error as NodeJS.ErrnoException).code !== 'ENOENT' || !existsSync('/proc/self');
  }
}

const readRecord = async (dataDir: string) =>
  JSON.parse(await readFile(join(dataDir, 'pg.running.json'), 'utf8')) as RunningRecord;

describe('embedded PostgreSQL (the default without DATABASE_URL)', { timeout: 120_000 }, () => {
  it('starts in DATA_DIR with migrations applied, and keeps its data across restarts', async () => {
    const dir = await tempDir();
    const first = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    try {
      const client = new pg.Client({ connectionString: first.url });
      await client.connect();
      const migrations = await client.query('SELECT version FROM schema_migrations');
      expect(migrations.rows.map((r) => r.version)).toContain('001_foundation.sql');
      await client.query(
        `INSERT INTO users (email, password_hash, display_name) VALUES ('kept@example.com', 'x', 'Kept')`,
      );
      await client.end();
    } finally {
      await first.stop?.();
    }
    expect((await stat(join(dir, 'pg', 'PG_VERSION'))).isFile()).toBe(true);
    // A clean stop removes the record of where it ran.
    expect(existsSync(join(dir, 'pg.running.json'))).toBe(false);

    const second = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    try {
      const client = new pg.Client({ connectionString: second.url });
      await client.connect();
      const kept = await client.query(`SELECT display_name FROM users WHERE email = 'kept@example.com'`);
      expect(kept.rows).toEqual([{ display_name: 'Kept' }]);
      await client.end();
    } finally {
      await second.stop?.();
    }
  });

  it('a later start joins the running server, and only the last one to leave stops it', async () => {
    const dir = await tempDir();
    const first = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    const record = await readRecord(dir);
    expect(record).toMatchObject({
      pid: expect.any(Number),
      port: first.embedded?.port,
      users: [{ pid: process.pid }],
    });
    expect(first.embedded?.started).toBe(true);

    // Joins: same server, nothing started.
    const second = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    expect(second.embedded).toMatchObject({ started: false, port: first.embedded?.port });
    expect(second.url).toBe(first.url);
    expect((await readRecord(dir)).users).toHaveLength(2);
    const found = await findRunningEmbedded(join(dir, 'pg'));
    expect(found?.record.pid).toBe(record.pid);
    expect(found?.url('velro')).toBe(first.url);

    // The one that joined leaves: the server keeps running for the first.
    await second.stop?.();
    expect(await answers(first.url)).toBe(true);
    expect((await readRecord(dir)).users).toHaveLength(1);

    // The last one leaves: the server stops and its record goes.
    await first.stop?.();
    expect(alive(record.pid)).toBe(false);
    expect(existsSync(join(dir, 'pg.running.json'))).toBe(false);
    expect(await findRunningEmbedded(join(dir, 'pg'))).toBeNull();
  });

  it('the process that started the server may leave first: the one still using it stops it last', async () => {
    const dir = await tempDir();
    const starter = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    const joiner = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    const { pid } = await readRecord(dir);
    await starter.stop?.();
    expect(await answers(joiner.url)).toBe(true);
    await joiner.stop?.();
    expect(alive(pid)).toBe(false);
    expect(existsSync(join(dir, 'pg.running.json'))).toBe(false);
    expect(existsSync(join(dir, 'pg', 'postmaster.pid'))).toBe(false);
  });

  it('ignores and replaces a stale record (its server no longer runs)', async () => {
    const dir = await tempDir();
    const first = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    const before = await readRecord(dir);
    await first.stop?.();
    // A record left behind by a process that died without cleaning up, naming a process that is gone.
    const gone = spawnSync(process.execPath, ['-e', '0']).pid as number;
    await writeFile(
      join(dir, 'pg.running.json'),
      JSON.stringify({ ...before, pid: gone, users: [{ pid: gone, id: 'x' }] }),
    );
    const again = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    try {
      expect(again.embedded?.started).toBe(true);
      const replaced = await readRecord(dir);
      expect(replaced.pid).not.toBe(gone);
      expect(alive(replaced.pid)).toBe(true);
      expect(await answers(again.url)).toBe(true);
    } finally {
      await again.stop?.();
    }
  });

  it('runs PostgreSQL in a process group of its own when asked (a Ctrl-C in the terminal misses it)', async () => {
    const dir = await tempDir();
    const own = await startEmbeddedPostgres({
      dir: join(dir, 'pg'),
      port: 0,
      database: 'velro',
      log: () => {},
      ownProcessGroup: true,
    });
    try {
      const { pid } = await readRecord(dir);
      const pgid = Number((await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ')[2]);
      const ours = Number((await readFile('/proc/self/stat', 'utf8')).split(') ')[1]?.split(' ')[2]);
      expect(pgid).toBe(pid);
      expect(pgid).not.toBe(ours);
    } finally {
      await own.stop();
    }
  });
});
