import { execFile } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { createTestDatabase, startTestApp, type TestDatabase } from './app.js';

export interface LiveServer {
  /** e.g. `http://127.0.0.1:41234`, no trailing slash. */
  baseUrl: string;
  close(): Promise<void>;
}

/**
 * The production app with a generation worker, on its own fresh database, listening on a free
 * port of 127.0.0.1: for tests whose client is another process (curl, a compiled program).
 */
export async function startLiveServer(env: Record<string, string> = {}): Promise<LiveServer> {
  let db: TestDatabase | undefined = await createTestDatabase();
  try {
    const t = await startTestApp({ databaseUrl: db.url, worker: true, env });
    await t.app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = t.app.server.address() as AddressInfo;
    const database = db;
    db = undefined;
    return {
      baseUrl: `http://127.0.0.1:${port}`,
      async close() {
        // A client that went away mid-stream can leave a connection the server never sees as idle.
        const sweep = setInterval(() => t.app.server.closeAllConnections(), 50);
        try {
          await t.close();
        } finally {
          clearInterval(sweep);
          await database.drop();
        }
      },
    };
  } finally {
    await db?.drop();
  }
}

export interface CommandResult {
  stdout: string;
  stderr: string;
}

/** The environment for a child process, without what the test runner set for its own workers. */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key === 'NODE_OPTIONS' || key.startsWith('VITEST') || key.startsWith('npm_')) continue;
    env[key] = value;
  }
  return { ...env, ...extra };
}

/** Runs a program to its end; rejects with its output when it exits with anything but 0. */
export function runCommand(
  file: string,
  args: readonly string[],
  options: { cwd: string; env?: Record<string, string>; timeoutMs?: number },
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      {
        cwd: options.cwd,
        env: childEnv(options.env),
        timeout: options.timeoutMs ?? 60_000,
        maxBuffer: 16 * 1024 * 1024,
      },
      (error, stdout, stderr) => {
        if (error) {
          const code = (error as NodeJS.ErrnoException & { code?: unknown }).code;
          reject(
            new Error(
              `${file} ${args.join(' ')} failed (exit ${String(code)}):\n--- stdout\n${stdout}\n--- stderr\n${stderr}`,
            ),
          );
          return;
        }
        resolve({ stdout, stderr });
      },
    );
  });
}
