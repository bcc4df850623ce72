import type { AddressInfo } from 'node:net';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import {
  bearer,
  createTestDatabase,
  type SignedUp,
  startTestApp,
  type TestApp,
  type TestAppOptions,
  type TestDatabase,
} from './app.js';

export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** Who calls: a signed-up user, a raw bearer credential (a service key, a forged token), or nobody. */
export type Caller = SignedUp | string | null;

/**
 * One request to the API (`url` relative to /api/v1) on `t`, with the caller's bearer credential and
 * any extra headers (a consistency token, an idempotency key).
 */
export function callApi(
  t: TestApp,
  who: Caller,
  method: Method,
  url: string,
  payload?: object | string,
  headers: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  const credential = who === null ? {} : bearer(typeof who === 'string' ? who : who.accessToken);
  return t.app.inject({
    method,
    url: `/api/v1${url}`,
    headers: { ...credential, ...headers },
    ...(payload !== undefined ? { payload } : {}),
  });
}

export interface UseTestAppOptions extends Omit<TestAppOptions, 'databaseUrl'> {
  /** Where the app connects (e.g. through a proxy); defaults to the file's database. */
  databaseUrl?: string;
  /** Also listen on a free port of 127.0.0.1, for clients that speak HTTP (fetch, SSE, a browser). */
  listen?: boolean;
}

export interface TestAppFixture {
  /** The production app of this file. */
  readonly app: FastifyInstance;
  readonly t: TestApp;
  /** This file's own database, cloned from the migrated template. */
  readonly db: TestDatabase;
  /** A connected client on this file's database, for arranging and inspecting rows. */
  readonly sql: pg.Client;
  /** `http://127.0.0.1:<port>` when started with `listen: true`. */
  readonly baseUrl: string;
  /** A request to /api/v1`url` as `who` (see `callApi`). */
  call(
    who: Caller,
    method: Method,
    url: string,
    payload?: object | string,
    headers?: Record<string, string>,
  ): Promise<LightMyRequestResponse>;
}

/**
 * The production app on a database of this file's own, started before the file's tests and closed
 * after them, with a SQL client beside it. Call it at the top of a test file; read its properties
 * inside tests and hooks (they exist once the file's `beforeAll` hooks have run). `options` is
 * passed to `startTestApp`; give a function for options that need the database (or other set-up).
 */
export function useTestApp(
  options: UseTestAppOptions | ((db: TestDatabase) => UseTestAppOptions | Promise<UseTestAppOptions>) = {},
): TestAppFixture {
  let db: TestDatabase | undefined;
  let t: TestApp | undefined;
  let sql: pg.Client | undefined;
  let baseUrl: string | undefined;

  beforeAll(async () => {
    db = await createTestDatabase();
    const { listen, databaseUrl, ...rest } = typeof options === 'function' ? await options(db) : options;
    t = await startTestApp({ ...rest, databaseUrl: databaseUrl ?? db.url });
    if (listen) {
      await t.app.listen({ host: '127.0.0.1', port: 0 });
      baseUrl = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    }
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
  });

  afterAll(async () => {
    await sql?.end();
    await t?.close();
    await db?.drop();
  });

  const ready = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`useTestApp: ${what} is not there before the file's beforeAll`);
    return value;
  };

  return {
    get app() {
      return ready(t, 'the app').app;
    },
    get t() {
      return ready(t, 'the app');
    },
    get db() {
      return ready(db, 'the database');
    },
    get sql() {
      return ready(sql, 'the SQL client');
    },
    get baseUrl() {
      return ready(baseUrl, 'baseUrl (listen: true)');
    },
    call: (who, method, url, payload, headers) =>
      callApi(ready(t, 'the app'), who, method, url, payload, headers),
  };
}

/**
 * Polls `probe` until it returns a value other than undefined or false, and returns that value;
 * fails naming `what` after `timeoutMs`. The condition, never a fixed sleep.
 */
export async function until<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs: number,
  what: string,
  intervalMs = 25,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
