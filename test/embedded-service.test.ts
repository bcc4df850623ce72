/**
 * The newcomer's setup, as a real process: `npm start` with no DATABASE_URL (the embedded
 * PostgreSQL), then the admin CLI on the same data, then a Ctrl-C in the terminal (SIGINT to the
 * whole foreground process group).
 *  - The CLI joins the running server's PostgreSQL and leaves it running (it used to stop it).
 *  - Ctrl-C reaches the service but not PostgreSQL, which runs in a group of its own: the service
 *    drains, hands its running generation back to the queue, then stops the database last, with
 *    nothing logged at warning level or above.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { provisionDatabase } from '../src/platform/db/database.js';
import type { RunningRecord } from '../src/platform/db/embedded.js';
import { TEST_ENV } from './helpers/app.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function until<T>(
  what: string,
  withinMs: number,
  probe: () => Promise<T | undefined>,
  last = () => '',
) {
  const deadline = performance.now() + withinMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`${what}: not within ${withinMs} ms. ${last()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe('npm start on the embedded PostgreSQL', { timeout: 240_000 }, () => {
  it('the CLI joins the running database without stopping it; Ctrl-C drains, hands jobs back and stops PostgreSQL last', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'velro-embedded-service-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const port = await freePort();
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      ...TEST_ENV,
      NODE_ENV: 'development',
      LOG_LEVEL: 'info',
      HOST: '127.0.0.1',
      PORT: String(port),
      DATA_DIR: dataDir,
      WORKER_ENABLED: 'true',
      WORKER_CONCURRENCY: '1',
      LOCAL_PROVIDER_STEP_DELAY_MS: '150',
      SHUTDOWN_GRACE_MS: '15000',
      // A loaded machine must not turn a slow statement into a warning: timeouts are tested elsewhere.
      STATEMENT_TIMEOUT_MS: '30000',
    };
    // The embedded default: no DATABASE_URL, no Redis.
    delete env.DATABASE_URL;
    delete env.REDIS_URL;

    const velro = (...args: string[]) =>
      new Promise<Run>((resolve) => {
        execFile(
          process.execPath,
          ['--import', 'tsx', 'src/cli/main.ts', ...args],
          { cwd: ROOT, env, timeout: 60_000 },
          (error, out, err) =>
            resolve({
              code: error ? (typeof error.code === 'number' ? error.code : 1) : 0,
              stdout: out,
              stderr: err,
            }),
        );
      });

    // No server yet: the CLI starts its own PostgreSQL, and stops it when done.
    const alone = await velro('migrate', '--json');
    expect(alone.code, alone.stderr).toBe(0);
    expect(alone.stderr).toContain('embedded PostgreSQL ready');
    expect(existsSync(join(dataDir, 'pg.running.json'))).toBe(false);
    expect(existsSync(join(dataDir, 'pg', 'postmaster.pid'))).toBe(false);

    // Its own process group, as a shell gives a foreground job: the terminal's Ctrl-C goes to the group.
    const server: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: ROOT,
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    server.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    server.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      server.once('exit', (code, signal) => resolve({ code, signal })),
    );
    cleanups.push(async () => {
      if (server.exitCode === null && server.signalCode === null)
        process.kill(-(server.pid as number), 'SIGKILL');
      const record = await readFile(join(dataDir, 'pg.running.json'), 'utf8').catch(() => null);
      if (record) process.kill((JSON.parse(record) as RunningRecord).pid, 'SIGINT');
    });
    const base = `http://127.0.0.1:${port}`;
    await until(
      'the server to be ready',
      90_000,
      async () => {
        if (server.exitCode !== null) throw new Error(`the server exited early:\n${stdout}\n${stderr}`);
        const res = await fetch(`${base}/ready`).catch(() => null);
        return res?.status === 200 ? true : undefined;
      },
      () => `${stdout}\n${stderr}`,
    );
    const record = JSON.parse(await readFile(join(dataDir, 'pg.running.json'), 'utf8')) as RunningRecord;
    expect(record.users.map((u) => u.pid)).toEqual([server.pid]);

    // The banner: where to go, and which database (its password never in a log line). Not a terminal
    // here, so JSON lines.
    const password = (await readFile(join(dataDir, 'pg.password'), 'utf8')).trim();
    const ready = await until('the banner', 10_000, async () =>
      stdout
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>)
        .find((line) => typeof line.msg === 'string' && line.msg.startsWith('ready: ')),
    );
    expect(ready).toMatchObject({
      level: 30,
      api: `${base}/api/v1`,
      docs: `${base}/docs`,
      dashboard: `${base}/dashboard`,
      database: `postgres://postgres:*****@127.0.0.1:${record.port}/velro`,
      redis: null,
    });
    expect(stdout).not.toContain(password);
    expect(stdout).not.toContain(encodeURIComponent(password));

    const register = await fetch(`${base}/api/v1/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: 'newcomer@example.com', password: 'correct horse battery' }),
    });
    expect(register.status).toBe(201);
    const { access_token: token } = (await register.json()) as { access_token: string };

    // The trap: this used to stop the server's PostgreSQL.
    const granted = await velro(
      'grant-credits',
      '--email',
      'newcomer@example.com',
      '--amount',
      '50',
      '--json',
    );
    expect(granted.code, granted.stderr).toBe(0);
    expect(JSON.parse(granted.stdout)).toMatchObject({ amount: 50, credits_balance: 1050 });
    expect(granted.stderr).toContain('already running');
    expect(alive(record.pid)).toBe(true);
    const after = JSON.parse(await readFile(join(dataDir, 'pg.running.json'), 'utf8')) as RunningRecord;
    expect(after.pid).toBe(record.pid);
    expect(after.users.map((u) => u.pid)).toEqual([server.pid]);
    // The server still reads and writes.
    const balance = await fetch(`${base}/api/v1/credits/balance`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(balance.status).toBe(200);
    expect(await balance.json()).toEqual({ credits_balance: 1050 });

    // status: what `supabase status` shows, from the same configuration, without touching anything.
    const status = await velro('status', '--json');
    expect(status.code, status.stderr).toBe(0);
    const report = JSON.parse(status.stdout);
    expect(report).toMatchObject({
      service: {
        api_url: `${base}/api/v1`,
        docs_url: `${base}/docs`,
        dashboard_url: `${base}/dashboard`,
        answering: true,
      },
      database: { kind: 'embedded', running: true, pid: record.pid, port: record.port },
      redis: { configured: false },
      versions: {
        velro: expect.any(String),
        node: process.version,
        postgresql: expect.stringMatching(/^\d+\.\d+/),
      },
      migrations: { pending: [] },
      queue: { waiting: 0, running: 0 },
    });
    expect(report.migrations.applied).toBeGreaterThan(0);
    // The URL it prints is the one to use: it connects.
    const direct = new pg.Client({ connectionString: report.database.url });
    await direct.connect();
    expect((await direct.query('SELECT count(*)::int AS n FROM users')).rows[0].n).toBe(1);
    await direct.end();
    const text = await velro('status');
    expect(text.stdout).toContain(`API URL: ${base}/api/v1 (answering)`);
    expect(text.stdout).toContain(`DATABASE_URL: ${report.database.url} (embedded, pid ${record.pid}`);
    expect(alive(record.pid)).toBe(true);

    // A generation running at the Ctrl-C.
    const created = await fetch(`${base}/api/v1/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({
        model_id: 'velro-studio',
        prompt: 'a lighthouse at dusk',
        parameters: { steps: 40 },
      }),
    });
    expect(created.status).toBe(202);
    const { id: generationId } = (await created.json()) as { id: string };
    await until('the generation to run', 30_000, async () => {
      const res = await fetch(`${base}/api/v1/generations/${generationId}`, {
        headers: { authorization: `Bearer ${token}` },
      });
      const body = (await res.json()) as { status: string; progress: number };
      return body.status === 'processing' && body.progress > 0 ? true : undefined;
    });

    const linesBefore = stdout.split('\n').length - 1;
    process.kill(-(server.pid as number), 'SIGINT');
    const exit = await exited;
    expect(exit, `${stdout}\n${stderr}`).toEqual({ code: 0, signal: null });

    // Nothing at warning level or above from the signal on, and nothing on stderr.
    const logged = stdout
      .split('\n')
      .slice(linesBefore)
      .filter((line) => line.trim() !== '')
      .map(
        (line) =>
          JSON.parse(line) as { level: number; msg: string; err?: { code?: string; message?: string } },
      );
    const loud = logged
      .filter((line) => line.level >= 40)
      .map((line) => `${line.level} ${line.msg}: ${line.err?.code ?? ''} ${line.err?.message ?? ''}`);
    expect(loud, stdout.slice(-4_000)).toEqual([]);
    expect(logged.map((line) => line.msg)).toContain('stopped');
    expect(stderr).toBe('');
    // PostgreSQL was stopped by the service (last), and its record removed.
    expect(alive(record.pid)).toBe(false);
    expect(existsSync(join(dataDir, 'pg.running.json'))).toBe(false);

    // The running generation went back to the queue, untouched by a failure count.
    const reopened = await provisionDatabase(
      { DATA_DIR: dataDir, EMBEDDED_PG_PORT: 0 },
      { info: () => {}, debug: () => {} },
    );
    try {
      const client = new pg.Client({ connectionString: reopened.url });
      await client.connect();
      const { rows } = await client.query(
        'SELECT status, worker_id, attempt FROM generations WHERE id = $1',
        [generationId],
      );
      await client.end();
      expect(rows[0]).toEqual({ status: 'pending', worker_id: null, attempt: 1 });
    } finally {
      await reopened.stop?.();
    }
  });
});
