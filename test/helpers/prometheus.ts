import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * The Prometheus family's own binaries (Debian packages `prometheus`, `prometheus-alertmanager`),
 * started on loopback by the tests that need them, in temporary folders they remove.
 */

const run = promisify(execFile);

/** Whether a binary can be run; under CI its absence is an error (CI installs it, see .ci/run). */
export async function haveBinary(file: string, debianPackage: string): Promise<boolean> {
  const present = await run(file, ['--version']).then(
    () => true,
    () => false,
  );
  if (!present && process.env.CI === 'true')
    throw new Error(`${file} is missing: CI installs the Debian package \`${debianPackage}\` (see .ci/run)`);
  if (!present)
    console.warn(`${file} is not installed (apt-get install ${debianPackage}): its tests are skipped`);
  return present;
}

/** A port nobody listens on at this moment. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Polls `probe` until it returns something other than undefined, within a generous bound. */
export async function until<T>(
  what: string,
  withinMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + withinMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out after ${withinMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** GET as JSON; undefined while the server does not answer 200. */
export async function getJson<T = unknown>(
  url: string,
  headers: Record<string, string> = {},
): Promise<T | undefined> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(5_000) }).catch(() => null);
  if (!res?.ok) {
    await res?.body?.cancel();
    return undefined;
  }
  return (await res.json()) as T;
}

export interface Daemon {
  baseUrl: string;
  port: number;
  dir: string;
  /** Its output so far, for failure messages. */
  output(): string;
  /** Stops the process (SIGTERM, then SIGKILL after 10 s) and waits for its exit. */
  stop(): Promise<void>;
  /** Stops it and removes its folder. */
  close(): Promise<void>;
}

async function startDaemon(
  file: string,
  args: (dir: string, port: number) => string[],
  files: Record<string, string>,
  options: { dir?: string; port?: number; readyPath: string },
): Promise<Daemon> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'velro-prom-')));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  const port = options.port ?? (await freePort());
  let log = '';
  const child: ChildProcess = spawn(file, args(dir, port), { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.on('data', (d: Buffer) => {
    log += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    log += d.toString();
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let running = true;
  void exited.then(() => {
    running = false;
  });
  const stop = async () => {
    if (!running) return;
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(killer);
  };
  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    await until(`${file} on port ${port} to be ready`, 60_000, async () => {
      if (!running) throw new Error(`${file} exited:\n${log}`);
      const res = await fetch(`${baseUrl}${options.readyPath}`, { signal: AbortSignal.timeout(2_000) });
      await res.body?.cancel();
      return res.ok ? true : undefined;
    });
  } catch (error) {
    await stop();
    if (!options.dir) await rm(dir, { recursive: true, force: true });
    throw new Error(`${String(error)}\n${log}`);
  }
  return {
    baseUrl,
    port,
    dir,
    output: () => log,
    stop,
    async close() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A real Alertmanager with one receiver (a webhook when given), clustering off, its own storage. */
export function startAlertmanager(
  options: { webhookUrl?: string; dir?: string; port?: number } = {},
): Promise<Daemon> {
  const receiver = options.webhookUrl
    ? `  - name: people\n    webhook_configs:\n      - url: '${options.webhookUrl}'\n        send_resolved: true\n`
    : '  - name: people\n';
  const config = [
    'route:',
    '  receiver: people',
    '  group_by: [alertname, instance]',
    '  group_wait: 1s',
    '  group_interval: 1s',
    '  repeat_interval: 1h',
    'receivers:',
    receiver,
  ].join('\n');
  return startDaemon(
    'prometheus-alertmanager',
    (dir, port) => [
      `--config.file=${join(dir, 'alertmanager.yml')}`,
      `--storage.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--cluster.listen-address=',
      '--log.level=warn',
    ],
    { 'alertmanager.yml': config },
    { ...options, readyPath: '/-/ready' },
  );
}

/** A real Prometheus with the given configuration and files next to it, its own TSDB. */
export function startPrometheus(files: Record<string, string>): Promise<Daemon> {
  return startDaemon(
    'prometheus',
    (dir, port) => [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    files,
    { readyPath: '/-/ready' },
  );
}
