import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/**
 * Real Redis processes for the high-availability tests: plain servers, replicas, cluster nodes
 * and sentinels, each on a free port of 127.0.0.1 with its own folder under one temporary
 * directory. Nothing here is a fake: the binaries are Debian's redis-server and redis-cli.
 */

/** The full path of a program on PATH, or null. */
export function findBinary(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {}
  }
  return null;
}

/** Whether the Redis HA tests run: always under CI (and fail there without the binaries). */
export const redisBinariesPresent = findBinary('redis-server') !== null && findBinary('redis-cli') !== null;
export const runRedisHaTests = redisBinariesPresent || process.env.CI === 'true';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until it returns a value other than undefined; fails after `withinMs`. */
export async function until<T>(
  probe: () => Promise<T | undefined>,
  withinMs: number,
  what: string,
): Promise<T> {
  const started = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() - started > withinMs) {
      throw new Error(`${what}: not within ${withinMs} ms${last ? ` (last error: ${String(last)})` : ''}`);
    }
    await sleep(50);
  }
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

const taken = new Set<number>();

/**
 * A free port whose +10000 neighbour is free too (a cluster node's bus port). Random in a range
 * the kernel does not hand out for port 0, so two test files do not race for one.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (taken.has(port) || taken.has(port + 10_000)) continue;
    if ((await portIsFree(port)) && (await portIsFree(port + 10_000))) {
      taken.add(port);
      taken.add(port + 10_000);
      return port;
    }
  }
  throw new Error('no free port pair found');
}

/** One RESP command over a fresh connection; the raw reply text. */
export function command(port: number, ...args: string[]): Promise<string> {
  return commandAs(port, undefined, ...args);
}

const encode = (args: string[]) =>
  `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;

/** The same, after AUTH with `password` when one is given; the command's reply only. */
export function commandAs(port: number, password: string | undefined, ...args: string[]): Promise<string> {
  const replies = password === undefined ? 1 : 2;
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no reply from 127.0.0.1:${port} to ${args.join(' ')}`));
    }, 5_000);
    socket.setEncoding('utf8');
    socket.on('connect', () => {
      socket.write((password === undefined ? '' : encode(['AUTH', password])) + encode(args));
    });
    socket.on('data', (chunk: string) => {
      reply += chunk;
      const ends = replyEnds(reply, replies);
      if (ends !== null) {
        clearTimeout(timer);
        socket.end();
        const auth = reply.slice(0, ends[0]);
        if (replies === 2 && !auth.startsWith('+OK'))
          reject(new Error(`AUTH refused on ${port}: ${auth.trim()}`));
        else resolve(reply.slice(replies === 2 ? ends[0] : 0));
      }
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** Where each of the first `count` whole RESP replies in `text` ends, or null while incomplete. */
function replyEnds(text: string, count: number): number[] | null {
  const end = (from: number): number => {
    const line = text.indexOf('\r\n', from);
    if (line < 0) return -1;
    const type = text[from];
    const head = text.slice(from + 1, line);
    if (type === '+' || type === '-' || type === ':') return line + 2;
    if (type === '$') {
      const length = Number(head);
      if (length < 0) return line + 2;
      const stop = line + 2 + length + 2;
      return Buffer.byteLength(text.slice(line + 2)) >= length + 2 ? stop : -1;
    }
    if (type === '*') {
      const count = Number(head);
      let at = line + 2;
      for (let i = 0; i < count; i++) {
        at = end(at);
        if (at < 0) return -1;
      }
      return at;
    }
    return -1;
  };
  const ends: number[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    at = end(at);
    if (at < 0) return null;
    ends.push(at);
  }
  return ends;
}

export interface RedisProcess {
  port: number;
  dir: string;
  child: ChildProcess;
  /** Resolves when the process has exited. */
  exited: Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Every Redis process of one test file, under one temporary directory; `stopAll` in afterAll. */
export class RedisFarm {
  private root: string | null = null;
  private readonly processes: RedisProcess[] = [];

  private async folder(name: string): Promise<string> {
    this.root ??= await mkdtemp(join(tmpdir(), 'velro-redis-ha-'));
    const dir = join(this.root, name);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** `redis-server` with `args` after the common ones; resolves once it answers PING. */
  async server(name: string, args: string[] = [], port?: number): Promise<RedisProcess> {
    const chosen = port ?? (await freePort());
    const dir = await this.folder(name);
    const proc = this.spawn(
      [
        '--port',
        String(chosen),
        '--bind',
        '127.0.0.1',
        '--dir',
        dir,
        '--save',
        '',
        '--appendonly',
        'no',
        '--logfile',
        join(dir, 'redis.log'),
        ...args,
      ],
      chosen,
      dir,
    );
    await this.answering(proc);
    return proc;
  }

  /**
   * A sentinel watching `master` on 127.0.0.1:`masterPort` (quorum 1), with quick timeouts;
   * `authPass`: the data nodes' password, `requirePass`: the sentinel's own.
   */
  async sentinel(
    name: string,
    master: string,
    masterPort: number,
    passwords: { authPass?: string; requirePass?: string } = {},
  ): Promise<RedisProcess> {
    const port = await freePort();
    const dir = await this.folder(name);
    // A sentinel rewrites its configuration file as it learns: it needs a writable one of its own.
    const conf = join(dir, 'sentinel.conf');
    await writeFile(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `logfile ${join(dir, 'sentinel.log')}`,
        `sentinel monitor ${master} 127.0.0.1 ${masterPort} 1`,
        `sentinel down-after-milliseconds ${master} 500`,
        `sentinel failover-timeout ${master} 3000`,
        `sentinel parallel-syncs ${master} 1`,
        ...(passwords.authPass ? [`sentinel auth-pass ${master} ${passwords.authPass}`] : []),
        ...(passwords.requirePass ? [`requirepass ${passwords.requirePass}`] : []),
        '',
      ].join('\n'),
    );
    const proc = this.spawn([conf, '--sentinel'], port, dir);
    await this.answering(proc);
    return proc;
  }

  private spawn(args: string[], port: number, dir: string): RedisProcess {
    const binary = findBinary('redis-server');
    // Under CI the tests run whether or not the binary is there: say plainly what is missing.
    if (!binary) throw new Error('redis-server is not installed (Debian package redis-server)');
    const child = spawn(binary, args, { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    });
    const proc: RedisProcess = {
      port,
      dir,
      child,
      exited,
      async kill(signal: NodeJS.Signals = 'SIGTERM') {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        await exited;
      },
    };
    this.processes.push(proc);
    return proc;
  }

  private async answering(proc: RedisProcess): Promise<void> {
    await until(
      async () => {
        if (proc.child.exitCode !== null) throw new Error(`redis-server on ${proc.port} exited`);
        // A server with a password answers NOAUTH: answering all the same.
        return /^(\+PONG|-NOAUTH)/.test(await command(proc.port, 'PING')) ? true : undefined;
      },
      15_000,
      `redis-server on port ${proc.port} answering`,
    );
  }

  /** Kills every process this farm started (by its own handle) and removes the directory. */
  async stopAll(): Promise<void> {
    await Promise.all(this.processes.map((proc) => proc.kill('SIGKILL')));
    if (this.root) await rm(this.root, { recursive: true, force: true });
  }
}

/** Runs redis-cli to its end; rejects with its output on a non-zero exit. */
export function redisCli(args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const binary = findBinary('redis-cli');
    if (!binary) {
      reject(new Error('redis-cli is not installed (Debian package redis-tools)'));
      return;
    }
    execFile(binary, args, { timeout: timeoutMs, maxBuffer: 4 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`redis-cli ${args.join(' ')} failed: ${stdout}\n${stderr}`));
      else resolve(stdout);
    });
  });
}
