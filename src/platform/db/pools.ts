import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { POOL_NAMES, type PoolName, type PoolSettings } from '../../config.js';
import { dbErrors, dbPoolWait, dbQueryDuration, poolWaitWindows } from '../observability/metrics.js';
import { ReadRouting, type ReplicaState } from './read-routing.js';
import type { DB } from './schema.js';

// int8 (counters, identities) as JavaScript numbers: every value we keep fits in 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export interface PoolsOptions {
  url: string;
  /** A streaming replica for lists and analytics (see read-routing.ts for what it may serve). */
  replicaUrl?: string | undefined;
  /** Lag above which reads leave the replica for the primary (0: never for lag); default 5 s. */
  replicaMaxLagMs?: number | undefined;
  /** How often the replica's reachability and lag are checked; default 1 s. */
  replicaCheckIntervalMs?: number | undefined;
  /** The replica went down or came back. */
  onReplicaChange?: ((state: ReplicaState) => void) | undefined;
  pools: Record<PoolName, PoolSettings>;
  connectTimeoutMs: number;
  onError: (pool: PoolName, error: Error) => void;
  /** A statement took at least `slowQueryMs` (0 or unset: never reported). */
  slowQueryMs?: number | undefined;
  onSlowQuery?: ((query: SlowQuery) => void) | undefined;
}

/** What the slow-query log says of a statement: never its parameters (they may be personal data). */
export interface SlowQuery {
  pool: string;
  /** The statement's text up to its first 120 characters, whitespace folded; values are parameters. */
  statement: string;
  duration_ms: number;
  failed: boolean;
}

/** The replica options of PoolsOptions, from the configuration. */
export function replicaOptions(config: {
  DATABASE_REPLICA_URL?: string | undefined;
  DATABASE_REPLICA_MAX_LAG_MS: number;
  DATABASE_REPLICA_CHECK_INTERVAL_MS: number;
}): Pick<PoolsOptions, 'replicaUrl' | 'replicaMaxLagMs' | 'replicaCheckIntervalMs'> {
  return {
    replicaUrl: config.DATABASE_REPLICA_URL,
    replicaMaxLagMs: config.DATABASE_REPLICA_MAX_LAG_MS,
    replicaCheckIntervalMs: config.DATABASE_REPLICA_CHECK_INTERVAL_MS,
  };
}

/**
 * The typed pools of seed 000. Each has its own size and server-side `statement_timeout`, plus a
 * client-side `query_timeout` a little above it, so that a lost connection or a server that stopped
 * answering fails the query instead of hanging the request.
 */
export class Pools {
  readonly pg: Record<PoolName, pg.Pool>;
  readonly db: Record<PoolName, Kysely<DB>>;
  /** Connection checkouts per pool: one per `pool.query`, so tests can count round trips. */
  readonly checkouts: Record<PoolName, number>;
  /**
   * Where lists and analytics read: `reads.reader(minRevision)` for lists, `db.analytics` for
   * reports. Without a replica both are the primary.
   */
  readonly reads: ReadRouting;
  /** The replica's own pools (lists sized like `authorization`, reports like `analytics`), when configured. */
  readonly replica: { reads: pg.Pool; analytics: pg.Pool } | null;

  constructor(options: PoolsOptions) {
    this.pg = {} as Record<PoolName, pg.Pool>;
    this.db = {} as Record<PoolName, Kysely<DB>>;
    this.checkouts = {} as Record<PoolName, number>;
    for (const name of POOL_NAMES) {
      const pool = openPool(name, name, options.url, options.pools[name], options);
      this.checkouts[name] = 0;
      pool.on('acquire', () => {
        this.checkouts[name] += 1;
      });
      if (name === 'authorization' || name === 'analytics') retryReadsOnLostConnection(pool);
      this.pg[name] = pool;
      this.db[name] = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
    }
    this.replica = options.replicaUrl
      ? {
          reads: openPool(
            'replica_reads',
            'authorization',
            options.replicaUrl,
            options.pools.authorization,
            options,
          ),
          analytics: openPool(
            'replica_analytics',
            'analytics',
            options.replicaUrl,
            options.pools.analytics,
            options,
          ),
        }
      : null;
    this.reads = new ReadRouting({
      primary: { reads: this.pg.authorization, analytics: this.pg.analytics },
      replica: this.replica,
      maxLagMs: options.replicaMaxLagMs ?? 5_000,
      checkIntervalMs: options.replicaCheckIntervalMs ?? 1_000,
      ...(options.onReplicaChange ? { onChange: options.onReplicaChange } : {}),
    });
    // Reports read the replica when it is usable and fall back to the primary's analytics pool.
    if (this.replica) this.db.analytics = this.reads.analytics;
    this.reads.start();
  }

  stats(): Record<PoolName, { total: number; idle: number; waiting: number; max: number }> {
    const out = {} as Record<PoolName, { total: number; idle: number; waiting: number; max: number }>;
    for (const name of POOL_NAMES) {
      const p = this.pg[name];
      out[name] = { total: p.totalCount, idle: p.idleCount, waiting: p.waitingCount, max: p.options.max };
    }
    return out;
  }

  async close(): Promise<void> {
    this.reads.stop();
    await Promise.all(
      [this.replica?.reads, this.replica?.analytics].map(async (pool) => {
        if (pool && !pool.ended) await pool.end();
      }),
    );
    await Promise.all(
      POOL_NAMES.map(async (name) => {
        await this.db[name].destroy();
        // Kysely ends a pool only if it used it; pools used only through raw pg are ended here.
        const pool = this.pg[name];
        if (!pool.ended) await pool.end();
      }),
    );
  }
}

/**
 * One pg pool with a typed pool's settings. `label` names it in metrics and `application_name`;
 * `kind` is the typed pool whose settings (and session options) it takes.
 */
function openPool(
  label: string,
  kind: PoolName,
  url: string,
  settings: PoolSettings,
  options: Pick<PoolsOptions, 'connectTimeoutMs' | 'onError' | 'slowQueryMs' | 'onSlowQuery'>,
): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    application_name: `velro_${label}`,
    max: settings.max,
    statement_timeout: settings.statementTimeoutMs,
    lock_timeout: Math.min(settings.statementTimeoutMs, 5_000),
    idle_in_transaction_session_timeout: Math.max(settings.statementTimeoutMs * 2, 10_000),
    query_timeout: settings.statementTimeoutMs + 1_000,
    // The hot statements here are prepared with array parameters; PostgreSQL would re-plan them
    // on every execution (planning cost more than executing). Their generic plans use the same
    // indexes (checked by test/authz-facts-plan.test.ts), so plan once per connection.
    ...(label === 'authorization' ? { options: '-c plan_cache_mode=force_generic_plan' } : {}),
    connectionTimeoutMillis: options.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
  });
  // An idle client whose server went away emits here; without a listener the process dies.
  pool.on('error', (error) => options.onError(kind, error));
  // So does a checked-out client between two queries of a transaction (pg-pool only listens
  // while a client is idle): the transaction's next query fails, the process must not.
  pool.on('connect', (client) => {
    client.on('error', (error) => options.onError(kind, error));
    timeQueries(client, label, options);
  });
  timeAcquires(pool, label);
  return pool;
}

/**
 * Time spent waiting for a connection of the pool (velro_db_pool_wait_seconds), and acquisitions
 * that failed (velro_db_errors_total{kind="acquire"}: the pool stayed full for the connection
 * timeout, or the server refused). pg-pool's own `query` goes through `connect` too.
 */
function timeAcquires(pool: pg.Pool, label: string): void {
  const original = pool.connect.bind(pool) as (...args: unknown[]) => unknown;
  const wait = dbPoolWait.labels(label);
  const failed = dbErrors.labels(label, 'acquire');
  // The series exist from the start (at 0), so a panel or rule reading them has data at once.
  failed.inc(0);
  dbErrors.labels(label, 'query').inc(0);
  const observe = (ms: number, error: boolean) => {
    wait.observe(ms / 1000);
    poolWaitWindows.record(ms * 1000, error, Date.now());
  };
  (pool as unknown as { connect: (...args: unknown[]) => unknown }).connect = (...args: unknown[]) => {
    const started = performance.now();
    const callback = args[0];
    if (typeof callback === 'function') {
      return original((error: unknown, ...rest: unknown[]) => {
        observe(performance.now() - started, Boolean(error));
        if (error) failed.inc();
        return (callback as (...r: unknown[]) => unknown)(error, ...rest);
      });
    }
    return (original() as Promise<pg.PoolClient>).then(
      (client) => {
        observe(performance.now() - started, false);
        return client;
      },
      (error: unknown) => {
        observe(performance.now() - started, true);
        failed.inc();
        throw error;
      },
    );
  };
}

/** The start of a statement's text, whitespace folded, for the slow-query log. */
function statementOf(args: unknown[]): string {
  const first = args[0];
  const text = typeof first === 'string' ? first : ((first as { text?: unknown } | null)?.text ?? '');
  return String(text).replace(/\s+/g, ' ').trim().slice(0, 120);
}

/**
 * Observes every query's duration on this client (promise and callback forms alike), counts the
 * failed ones (velro_db_errors_total{kind="query"}), and reports those slower than `slowQueryMs`.
 */
function timeQueries(
  client: pg.PoolClient,
  pool: string,
  options: Pick<PoolsOptions, 'slowQueryMs' | 'onSlowQuery'>,
): void {
  const original = client.query.bind(client) as (...args: unknown[]) => unknown;
  const observe = dbQueryDuration.labels(pool);
  const failures = dbErrors.labels(pool, 'query');
  const slowMs = options.slowQueryMs && options.onSlowQuery ? options.slowQueryMs : Number.POSITIVE_INFINITY;
  const onSlow = options.onSlowQuery;
  const finish = (started: number, args: unknown[], failed: boolean) => {
    const ms = performance.now() - started;
    observe.observe(ms / 1000);
    if (failed) failures.inc();
    if (ms >= slowMs) onSlow?.({ pool, statement: statementOf(args), duration_ms: Math.round(ms), failed });
  };
  (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    const started = performance.now();
    const last = args[args.length - 1];
    if (typeof last === 'function') {
      args[args.length - 1] = (error: unknown, ...result: unknown[]) => {
        finish(started, args, Boolean(error));
        return (last as (...r: unknown[]) => unknown)(error, ...result);
      };
      return original(...args);
    }
    const value = original(...args);
    if (value && typeof (value as Promise<unknown>).then === 'function') {
      (value as Promise<unknown>).then(
        () => finish(started, args, false),
        () => finish(started, args, true),
      );
    }
    return value;
  };
}

const LOST_CONNECTION = /Connection terminated|ECONNRESET|EPIPE|terminating connection/;

/**
 * After the database restarts, the first use of each pooled connection finds it dead. Reads are
 * safe to repeat, so `pool.query` on the read-only pools tries once more on a fresh connection
 * when the failure was the connection itself (never on a timeout: that would double the wait).
 */
function retryReadsOnLostConnection(pool: pg.Pool): void {
  const original = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
  (pool as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    if (typeof args[args.length - 1] === 'function') return original(...args);
    return original(...args).catch((error: unknown) => {
      const code = (error as { code?: string }).code ?? '';
      const lost =
        LOST_CONNECTION.test(String((error as Error)?.message)) || code === '57P01' || code.startsWith('08');
      if (!lost) throw error;
      return original(...args);
    });
  };
}
