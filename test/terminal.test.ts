/**
 * `npm start` as a person runs it: in a terminal (a pseudo-terminal made by util-linux `script`),
 * stopped with a real Ctrl-C typed into it, which the terminal turns into SIGINT for its whole
 * foreground process group. The logs are human-readable (pino-pretty), the banner says where
 * everything is, and the Ctrl-C stops the service cleanly, its embedded PostgreSQL last.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { TEST_ENV } from './helpers/app.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const hasScript = spawnSync('script', ['--version']).status === 0;
const COLOURS = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g');
const plain = (text: string) => text.replace(COLOURS, '').replace(/\r/g, '');

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

describe('npm start in a terminal', { timeout: 120_000 }, () => {
  it.skipIf(!hasScript)(
    'prints readable logs and the banner, and stops cleanly on a typed Ctrl-C',
    async () => {
      const dataDir = await mkdtemp(join(tmpdir(), 'velro-terminal-'));
      cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
      const probe = createServer();
      await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
      const port = (probe.address() as { port: number }).port;
      await new Promise((resolve) => probe.close(resolve));

      const env: NodeJS.ProcessEnv = {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        ...TEST_ENV,
        NODE_ENV: 'development',
        LOG_LEVEL: 'info',
        PORT: String(port),
        DATA_DIR: dataDir,
        TERM: 'xterm',
      };
      delete env.DATABASE_URL;
      delete env.REDIS_URL;
      delete env.HOST;
      // -e: script exits with the command's status; -f: output as it comes; -q: no greeting.
      const terminal = spawn('script', ['-qfec', 'exec node --import tsx src/main.ts', '/dev/null'], {
        cwd: ROOT,
        env,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let screen = '';
      const bannerShown = new Promise<void>((resolve, reject) => {
        const onData = (chunk: Buffer) => {
          screen += chunk.toString();
          if (plain(screen).includes('Listening on')) resolve();
        };
        terminal.stdout.on('data', onData);
        terminal.stderr.on('data', onData);
        terminal.once('exit', (code) =>
          reject(new Error(`the service ended (${code}) before its banner:\n${screen}`)),
        );
      });
      const exited = new Promise<number | null>((resolve) => terminal.once('exit', (code) => resolve(code)));
      cleanups.push(async () => {
        if (terminal.exitCode === null) terminal.kill('SIGKILL');
      });
      await bannerShown;

      const banner = plain(screen);
      // Readable lines, not JSON.
      expect(banner).toMatch(/\[\d\d:\d\d:\d\d\.\d{3}\] INFO: embedded PostgreSQL ready/);
      expect(banner).not.toContain('{"level"');
      const base = `http://127.0.0.1:${port}`;
      expect(banner).toContain(`API          ${base}/api/v1`);
      expect(banner).toContain(`Docs         ${base}/docs`);
      expect(banner).toContain(`Dashboard    ${base}/dashboard`);
      expect(banner).toMatch(/Database {5}postgres:\/\/postgres:\*{5}@127\.0\.0\.1:\d+\/velro \(embedded/);
      // HOST unset in development: this machine only.
      expect(banner).toContain(`Listening on 127.0.0.1:${port}`);
      expect((await fetch(`${base}/health`)).status).toBe(200);

      const before = screen.length;
      terminal.stdin.write('\x03');
      expect(await exited, plain(screen)).toBe(0);
      const after = plain(screen.slice(before));
      expect(after).toContain('stopping: no new connections');
      expect(after).toContain('INFO: stopped');
      expect(after).not.toMatch(/WARN|ERROR|FATAL/);
      // The embedded PostgreSQL was stopped by the service, and its record of where it ran removed.
      expect(existsSync(join(dataDir, 'pg.running.json'))).toBe(false);
      expect(existsSync(join(dataDir, 'pg', 'postmaster.pid'))).toBe(false);
    },
  );
});
