import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Child, freePort, startChild, stopChild, waitForHttp } from './children.js';

const BENCH_DIR = dirname(dirname(fileURLToPath(import.meta.url)));
const ROOT = dirname(BENCH_DIR);
const READY_TIMEOUT_MS = 120_000;

/** A server under test, in its own process. */
export interface Server {
  name: string;
  baseUrl: string;
  child: Child;
  /** Database statements sent so far (Velro: its authorization pool; a peer: its own count). */
  queries(): Promise<number>;
  /** Resident set size of the server process now, MiB. */
  rssMb(): number;
  /** CPU time (user + system) the server process has used so far, seconds. */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

type Register = (stop: () => Promise<void>) => void;

/** A failed start is only debuggable with the child's own last words. */
async function failWithTail<T>(child: Child, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`${message}\n--- last output of ${child.name} ---\n${child.tail() || '(none)'}`);
  }
}

function rssOf(child: Child): number {
  try {
    const status = readFileSync(`/proc/${child.process.pid}/status`, 'utf8');
    const kib = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1]);
    return Number.isFinite(kib) ? Math.round((kib / 1024) * 10) / 10 : Number.NaN;
  } catch {
    return Number.NaN; // Not Linux, or the process is gone: no figure rather than a wrong one.
  }
}

/** utime + stime from /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux). */
function cpuOf(child: Child): number {
  try {
    const stat = readFileSync(`/proc/${child.process.pid}/stat`, 'utf8');
    // The command name may contain spaces and parentheses: count fields after its closing one.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

const CLOCK_TICKS = 100;

function once(stop: () => Promise<void>): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  return () => {
    stopping ??= stop();
    return stopping;
  };
}

/** A peer from bench/peers/: prints `READY <port>`, counts its statements at GET /stats. */
export async function startPeer(
  name: string,
  file: string,
  env: NodeJS.ProcessEnv,
  register: Register,
  readyTimeoutMs = READY_TIMEOUT_MS,
  nodeArgs: string[] = [],
): Promise<Server> {
  const child = startChild(name, join(BENCH_DIR, 'peers', file), ['0'], env, nodeArgs);
  const stop = once(() => stopChild(child));
  register(stop);
  // Port 0 lets the OS choose, race-free; the peer tells us which one it got.
  const match = await failWithTail(child, child.waitForLine(/READY (\d+)/, readyTimeoutMs));
  const baseUrl = `http://127.0.0.1:${match[1]}`;
  return {
    name,
    baseUrl,
    child,
    async queries() {
      const response = await fetch(`${baseUrl}/stats`);
      if (response.status === 404) return 0;
      const body = (await response.json()) as { queries?: number };
      return body.queries ?? 0;
    },
    rssMb: () => rssOf(child),
    cpuSeconds: () => cpuOf(child),
    stop,
  };
}

const QUERY_COUNT = /^velro_db_query_duration_seconds_count\{pool="authorization"\}\s+(\d+(?:\.\d+)?)/m;

/** The Velro service (src/main.ts), NODE_ENV=production, with `env` on top of the caller's base. */
export async function startVelro(
  name: string,
  env: NodeJS.ProcessEnv,
  register: Register,
  nodeArgs: string[] = [],
): Promise<Server> {
  const port = await freePort();
  const child = startChild(name, join(ROOT, 'src', 'main.ts'), [], { ...env, PORT: String(port) }, nodeArgs);
  const stop = once(() => stopChild(child));
  register(stop);
  const baseUrl = `http://127.0.0.1:${port}`;
  // /ready: PostgreSQL (and Redis) reachable and start-up warming done.
  await failWithTail(child, waitForHttp(child, `${baseUrl}/ready`, READY_TIMEOUT_MS));
  return {
    name,
    baseUrl,
    child,
    async queries() {
      const text = await (await fetch(`${baseUrl}/metrics`)).text();
      const match = QUERY_COUNT.exec(text);
      return match ? Number(match[1]) : 0;
    },
    rssMb: () => rssOf(child),
    cpuSeconds: () => cpuOf(child),
    stop,
  };
}
