import type { AddressInfo } from 'node:net';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import type { PoolName } from '../../src/config.js';
import { dbQueryDuration } from '../../src/platform/observability/metrics.js';
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
  /**
   * Also listen on a free port of 127.0.0.1, for clients that speak HTTP (fetch, SSE, a browser);
   * connections still open when the app closes are closed with it.
   */
  listen?: boolean;
  /** Time for starting and for closing, each (default: the run's hookTimeout). Not read from a function. */
  hookTimeoutMs?: number;
}

export interface TestDatabaseFixture {
  /** This file's own database, cloned from the migrated template. */
  readonly db: TestDatabase;
  /** A connected client on this file's database, for arranging and inspecting rows. */
  readonly sql: pg.Client;
}

export interface TestAppFixture extends TestDatabaseFixture {
  /** The production app of this file. */
  readonly app: FastifyInstance;
  readonly t: TestApp;
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

function ready<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`${what} is not there before the file's beforeAll hooks ran`);
  return value;
}

/**
 * A database of this file's own (isolation stays per file) with a connected SQL client, made before
 * the file's tests and dropped after them: for files that start their apps (or processes) themselves.
 */
export function useTestDatabase(hookTimeoutMs?: number): TestDatabaseFixture {
  let db: TestDatabase | undefined;
  let sql: pg.Client | undefined;

  beforeAll(async () => {
    db = await createTestDatabase();
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
  }, hookTimeoutMs);

  afterAll(async () => {
    await sql?.end();
    await db?.drop();
  }, hookTimeoutMs);

  return {
    get db() {
      return ready(db, 'the database');
    },
    get sql() {
      return ready(sql, 'the SQL client');
    },
  };
}

/**
 * The production app on a database of this file's own, started before the file's tests and closed
 * after them, with a SQL client beside it. Call it at the top of a test file (or of a describe);
 * read its properties inside tests and hooks (they exist once its `beforeAll` hooks have run). The
 * options go to `startTestApp`; give a function for options that need the database (or other
 * set-up). Hooks registered after this call run after the app started and before it closes.
 */
export function useTestApp(
  options: UseTestAppOptions | ((db: TestDatabase) => UseTestAppOptions | Promise<UseTestAppOptions>) = {},
): TestAppFixture {
  const hookTimeoutMs = typeof options === 'function' ? undefined : options.hookTimeoutMs;
  const database = useTestDatabase(hookTimeoutMs);
  let t: TestApp | undefined;
  let baseUrl: string | undefined;

  beforeAll(async () => {
    const resolved = typeof options === 'function' ? await options(database.db) : options;
    const { listen, databaseUrl, hookTimeoutMs: _, ...appOptions } = resolved;
    t = await startTestApp({ ...appOptions, databaseUrl: databaseUrl ?? database.db.url });
    if (listen) {
      await t.app.listen({ host: '127.0.0.1', port: 0 });
      baseUrl = `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
    }
  }, hookTimeoutMs);

  afterAll(async () => {
    // After a streamed response is cut short, undici opens a fresh connection and sends nothing on
    // it; Node's server does not count that one as idle, so close() would wait for it for ever.
    const sweep = baseUrl ? setInterval(() => t?.app.server.closeAllConnections(), 50) : undefined;
    try {
      await t?.close();
    } finally {
      clearInterval(sweep);
    }
  }, hookTimeoutMs);

  return {
    get db() {
      return database.db;
    },
    get sql() {
      return database.sql;
    },
    get app() {
      return ready(t, 'the app').app;
    },
    get t() {
      return ready(t, 'the app');
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

/**
 * Statements sent so far through one pool of this process (velro_db_query_duration_seconds'
 * count): read it before and after a request to count that request's round trips. The app's
 * queued denial audit events are written first, so their timed flush (on write_heavy) cannot land
 * inside the window being counted.
 */
export async function statementsSent(pool: PoolName, app: FastifyInstance): Promise<number> {
  await app.flushAudit();
  const { values } = await dbQueryDuration.get();
  return (
    values.find((v) => v.metricName === 'velro_db_query_duration_seconds_count' && v.labels.pool === pool)
      ?.value ?? 0
  );
}
