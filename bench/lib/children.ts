import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';

/** A server under test, in its own process so it never competes with the load generator for a core. */
export interface Child {
  name: string;
  process: ChildProcess;
  /** The last lines the child wrote: what a failure report needs. */
  tail(): string;
  /** Resolves with the first stdout line that matches, or rejects when the child exits first. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
}

const TAIL_CHARS = 4_000;
const STOP_GRACE_MS = 10_000;

/**
 * Runs a TypeScript entry point with `node --import tsx`, the way `npm start` does. `nodeArgs` go
 * before the script (e.g. `--cpu-prof`).
 */
export function startChild(
  name: string,
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  nodeArgs: string[] = [],
): Child {
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', script, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Own process group, so that a stuck child and anything it started (embedded PostgreSQL) can be
    // killed together, and so that Ctrl-C reaches only us: we decide how the children stop.
    detached: true,
  });
  let output = '';
  const listeners = new Set<(chunk: string) => void>();
  // Both pipes must always be drained, or a chatty child blocks on a full pipe mid-benchmark.
  const collect = (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    output = (output + text).slice(-TAIL_CHARS);
    for (const listener of listeners) listener(text);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);

  return {
    name,
    process: child,
    tail: () => output.trim(),
    waitForLine(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        let pending = output;
        const finish = (error: Error | null, match?: RegExpMatchArray) => {
          clearTimeout(timer);
          listeners.delete(onText);
          child.off('exit', onExit);
          if (match) resolve(match);
          else reject(error);
        };
        const onText = (text: string) => {
          pending += text;
          const match = pending.match(pattern);
          if (match) finish(null, match);
        };
        const onExit = (code: number | null) =>
          finish(new Error(`${name} exited (code ${code}) before ready`));
        const timer = setTimeout(
          () => finish(new Error(`${name}: no ${pattern} within ${timeoutMs} ms`)),
          timeoutMs,
        );
        listeners.add(onText);
        child.once('exit', onExit);
        onText('');
      });
    },
  };
}

/** Polls `url` until it answers 200; fails early if the child dies, late after `timeoutMs`. */
export async function waitForHttp(child: Child, url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.process.exitCode !== null || child.process.signalCode !== null) {
      throw new Error(`${child.name} exited (code ${child.process.exitCode}) before answering ${url}`);
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      if (response.status === 200) return;
    } catch {
      // Not listening yet: expected while migrations run and PostgreSQL starts.
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`${child.name} did not answer ${url} within ${timeoutMs} ms`);
}

/** SIGTERM, so the service closes its pools and stops its PostgreSQL; SIGKILL the group after 10 s. */
export async function stopChild(child: Child): Promise<void> {
  const proc = child.process;
  const running = () => proc.exitCode === null && proc.signalCode === null;
  if (running()) {
    const exited = once(proc, 'exit');
    proc.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), STOP_GRACE_MS);
    });
    const outcome = await Promise.race([exited, timedOut]);
    clearTimeout(timer);
    if (outcome === 'timeout') process.stderr.write(`${child.name} ignored SIGTERM for 10 s: SIGKILL\n`);
  }
  // Whatever is left in the child's group (a PostgreSQL orphaned by a crash, or the stuck child itself).
  killGroup(proc.pid);
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // ESRCH: the group is already empty, which is the normal case after a clean stop.
  }
}

/** A port nobody listens on right now (the service needs it up front; the tiny race is acceptable here). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (typeof address !== 'object' || !address) throw new Error('could not find a free port');
  return address.port;
}
