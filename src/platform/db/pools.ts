import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { POOL_NAMES, type PoolName, type PoolSettings } from '../../config.js';
import { dbQueryDuration } from '../observability/metrics.js';
import type { DB } from './schema.js';

// int8 (counters, identities) as JavaScript numbers: every value we keep fits in 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export interface PoolsOptions {
  url: string;
  replicaUrl?: string | undefined;
  pools: Record<PoolName, PoolSettings>;
  connectTimeoutMs: number;
  onError: (pool: PoolName, error: Error) => void;
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

  constructor(options: PoolsOptions) {
    this.pg = {} as Record<PoolName, pg.Pool>;
    this.db = {} as Record<PoolName, Kysely<DB>>;
    this.checkouts = {} as Record<PoolName, number>;
    for (const name of POOL_NAMES) {
      const settings = options.pools[name];
      const pool = new pg.Pool({
        connectionString: name === 'analytics' && options.replicaUrl ? options.replicaUrl : options.url,
        application_name: `velro_${name}`,
        max: settings.max,
        statement_timeout: settings.statementTimeoutMs,
        lock_timeout: Math.min(settings.statementTimeoutMs, 5_000),
        idle_in_transaction_session_timeout: Math.max(settings.statementTimeoutMs * 2, 10_000),
        query_timeout: settings.statementTimeoutMs + 1_000,
        // The hot statements here are prepared with array parameters; PostgreSQL would re-plan them
        // on every execution (planning cost more than executing). Their generic plans use the same
        // indexes (checked by test/authz-facts-plan.test.ts), so plan once per connection.
        ...(name === 'authorization' ? { options: '-c plan_cache_mode=force_generic_plan' } : {}),
        connectionTimeoutMillis: options.connectTimeoutMs,
        idleTimeoutMillis: 30_000,
        keepAlive: true,
      });
      // An idle client whose server went away emits here; without a listener the process dies.
      pool.on('error', (error) => options.onError(name, error));
      // So does a checked-out client between two queries of a transaction (pg-pool only listens
      // while a client is idle): the transaction's next query fails, the process must not.
      pool.on('connect', (client) => {
        client.on('error', (error) => options.onError(name, error));
        timeQueries(client, name);
      });
      this.checkouts[name] = 0;
      pool.on('acquire', () => {
        this.checkouts[name] += 1;
      });
      if (name === 'authorization' || name === 'analytics') retryReadsOnLostConnection(pool);
      this.pg[name] = pool;
      this.db[name] = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
    }
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

/** Observes every query's duration on this client (promise and callback forms alike). */
function timeQueries(client: pg.PoolClient, pool: PoolName): void {
  const original = client.query.bind(client) as (...args: unknown[]) => unknown;
  const observe = dbQueryDuration.labels(pool);
  (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    const started = performance.now();
    const last = args[args.length - 1];
    if (typeof last === 'function') {
      args[args.length - 1] = (...result: unknown[]) => {
        observe.observe((performance.now() - started) / 1000);
        return (last as (...r: unknown[]) => unknown)(...result);
      };
      return original(...args);
    }
    const value = original(...args);
    if (value && typeof (value as Promise<unknown>).then === 'function') {
      const done = () => observe.observe((performance.now() - started) / 1000);
      (value as Promise<unknown>).then(done, done);
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
