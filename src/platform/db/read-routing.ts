import { Kysely, PostgresDialect, type PostgresPool, type PostgresPoolClient } from 'kysely';
import type pg from 'pg';
import { Gauge, type Registry } from 'prom-client';
import type { DB } from './schema.js';

/**
 * Which reads a read replica (`DATABASE_REPLICA_URL`) may serve, decided here and nowhere else.
 *
 * The replica serves: list endpoints (teams, team members, projects, generations, the credit
 * ledger), the generation statistics, the administrators' analytics reads, and the queries that
 * choose what to warm. It never serves: authorization facts (every decision reads the primary or
 * the cache it feeds), sessions and keys, any write, and any request that carries a consistency
 * token (SPEC §6 rule 4: a lagging replica cannot honour "at least as fresh as r").
 *
 * A replica that cannot be reached, or that lags more than `maxLagMs`, is skipped: the same reads
 * go to the primary until a check finds it usable again. A read whose replica connection breaks
 * before it answered is run again on the primary, so a replica outage never fails a list.
 */
export type ReadOutcome = 'replica' | 'token' | 'lagging' | 'unavailable';

/** The database a list read uses, given the request's consistency token (if any). */
export type ListReader = (minRevision: number | undefined) => Kysely<DB>;

export interface ReplicaState {
  /** False after a failed check or a read that lost its replica connection, until a check succeeds. */
  up: boolean;
  /** How far replay trails the primary (0 when caught up); null before the first check. */
  lagSeconds: number | null;
  /** The last check's failure, while the replica is down. */
  error: string | null;
}

export interface ReadRoutingOptions {
  primary: { reads: pg.Pool; analytics: pg.Pool };
  /** Null without a replica: every read goes to the primary, nothing is checked. */
  replica: { reads: pg.Pool; analytics: pg.Pool } | null;
  /** Replica lagging more than this is skipped; 0 never skips it for lag. */
  maxLagMs: number;
  checkIntervalMs: number;
  /** Called when the replica goes down or comes back (for the log). */
  onChange?: (state: ReplicaState) => void;
}

const LOST_CONNECTION =
  /Connection terminated|ECONNRESET|EPIPE|terminating connection|ECONNREFUSED|not queryable/;

function lostConnection(error: unknown): boolean {
  const code = (error as { code?: string })?.code ?? '';
  return (
    LOST_CONNECTION.test(String((error as Error)?.message)) ||
    code === '57P01' ||
    code === '57P02' ||
    code === '57P03' ||
    code.startsWith('08')
  );
}

/** A hot standby cancels a query whose rows replay is about to remove; the primary has no such conflict. */
function recoveryConflict(error: unknown): boolean {
  return (
    (error as { code?: string })?.code === '40001' &&
    /conflict with recovery/.test(String((error as Error)?.message))
  );
}

const CHECK_REPLICA = {
  name: 'velro_replica_check_v1',
  // Bytes of flushed primary WAL the replica has not replayed, and how old its last replayed commit
  // is (see runCheck for how they make the lag).
  text: `SELECT pg_is_in_recovery() AS recovery,
                CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()) END AS behind,
                extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS since_replay`,
};

export class ReadRouting {
  readonly state: ReplicaState = { up: true, lagSeconds: null, error: null };
  /** Reads routed here since start, by where they went and why. */
  readonly counts: Record<ReadOutcome, number> = { replica: 0, token: 0, lagging: 0, unavailable: 0 };
  /** Lists: the replica when usable, else the primary's request-path pool. */
  readonly lists: Kysely<DB>;
  /** Reports and the choice of what to warm: the replica when usable, else the primary. */
  readonly analytics: Kysely<DB>;
  private readonly primaryLists: Kysely<DB>;
  private readonly primaryAnalytics: Kysely<DB>;
  private readonly options: ReadRoutingOptions;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private checking: Promise<void> | null = null;
  /** When the primary's position was read by the last check that found the replica caught up. */
  private caughtUpAt: number | null = null;
  private behindSince: number | null = null;

  constructor(options: ReadRoutingOptions) {
    this.options = options;
    this.primaryLists = new Kysely<DB>({
      dialect: new PostgresDialect({ pool: unowned(options.primary.reads) }),
    });
    this.primaryAnalytics = new Kysely<DB>({
      dialect: new PostgresDialect({ pool: unowned(options.primary.analytics) }),
    });
    if (!options.replica) {
      this.lists = this.primaryLists;
      this.analytics = this.primaryAnalytics;
      return;
    }
    this.lists = new Kysely<DB>({
      dialect: new PostgresDialect({ pool: this.routed(options.replica.reads, options.primary.reads) }),
    });
    this.analytics = new Kysely<DB>({
      dialect: new PostgresDialect({
        pool: this.routed(options.replica.analytics, options.primary.analytics),
      }),
    });
  }

  get configured(): boolean {
    return this.options.replica !== null;
  }

  /** The database for a list read: the primary when the request carries a consistency token. */
  readonly reader: ListReader = (minRevision) => {
    if (!this.options.replica) return this.primaryLists;
    if (minRevision !== undefined) {
      this.counts.token += 1;
      return this.primaryLists;
    }
    return this.lists;
  };

  /** The database for a report read on behalf of a request: the primary when it carries a token. */
  readonly reportReader: ListReader = (minRevision) => {
    if (!this.options.replica) return this.primaryAnalytics;
    if (minRevision !== undefined) {
      this.counts.token += 1;
      return this.primaryAnalytics;
    }
    return this.analytics;
  };

  /** Whether a read without a token may go to the replica now. */
  usable(): boolean {
    if (!this.options.replica || !this.state.up) return false;
    const { maxLagMs } = this.options;
    return maxLagMs === 0 || (this.state.lagSeconds ?? 0) * 1000 <= maxLagMs;
  }

  /** Checks the replica now and then every `checkIntervalMs`. */
  start(): void {
    if (!this.options.replica || this.timer) return;
    this.stopped = false;
    void this.check();
    this.timer = setInterval(() => void this.check(), this.options.checkIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    // A check still running when the pools close must not report the closing as an outage.
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One check: reachable, and how far behind. Concurrent calls share one round. */
  check(): Promise<void> {
    this.checking ??= this.runCheck().finally(() => {
      this.checking = null;
    });
    return this.checking;
  }

  private async runCheck(): Promise<void> {
    const replica = this.options.replica;
    if (!replica) return;
    let flushed: string;
    const askedAt = Date.now();
    try {
      const { rows } = await this.options.primary.reads.query<{ lsn: string }>(
        'SELECT pg_current_wal_flush_lsn()::text AS lsn',
      );
      flushed = rows[0]?.lsn ?? '0/0';
    } catch {
      // Without the primary there is nothing to compare with; the replica's state stands.
      return;
    }
    try {
      const { rows } = await replica.reads.query<{
        recovery: boolean;
        behind: string | number | null;
        since_replay: number | null;
      }>({ ...CHECK_REPLICA, values: [flushed] });
      const row = rows[0];
      const behind = Number(row?.behind ?? 0);
      let lag = 0;
      if (behind > 0) {
        const now = Date.now();
        this.behindSince ??= now;
        // Two upper bounds, the tighter wins: the age of the last commit it replayed (after an idle
        // hour that is an hour, though it may be a millisecond behind), and the time since it was
        // last seen holding everything the primary had flushed. Neither known (just started, no
        // commit replayed): the time since it was first seen behind.
        const bounds = [
          row?.since_replay ?? Number.POSITIVE_INFINITY,
          this.caughtUpAt === null ? Number.POSITIVE_INFINITY : (now - this.caughtUpAt) / 1000,
        ];
        lag = Math.min(...bounds);
        if (!Number.isFinite(lag)) lag = (now - this.behindSince) / 1000;
        lag = Math.max(0, lag);
      } else {
        this.behindSince = null;
        this.caughtUpAt = askedAt;
      }
      this.state.lagSeconds = lag;
      this.markUp();
    } catch (error) {
      this.markDown(error);
    }
  }

  private markUp(): void {
    if (this.stopped || (this.state.up && this.state.error === null)) return;
    this.state.up = true;
    this.state.error = null;
    this.options.onChange?.({ ...this.state });
  }

  private markDown(error: unknown): void {
    if (this.stopped) return;
    const wasUp = this.state.up;
    this.state.up = false;
    this.state.error = error instanceof Error ? error.message : String(error);
    if (wasUp) this.options.onChange?.({ ...this.state });
  }

  /** A pool for Kysely: connects to the replica when usable, else (or when that fails) to the primary. */
  private routed(replica: pg.Pool, primary: pg.Pool): PostgresPool {
    return {
      connect: async () => {
        if (!this.usable()) {
          this.counts[this.state.up ? 'lagging' : 'unavailable'] += 1;
          return primary.connect();
        }
        let client: pg.PoolClient;
        try {
          client = await replica.connect();
        } catch (error) {
          this.markDown(error);
          this.counts.unavailable += 1;
          return primary.connect();
        }
        this.counts.replica += 1;
        return this.failingOver(client, primary);
      },
      // The pools belong to Pools, which ends them.
      end: async () => {},
    };
  }

  /**
   * The replica's connection, except that a statement it failed to answer because the connection
   * broke (or replay cancelled it) runs again on a primary connection, which then serves the rest
   * of this checkout. Not inside a transaction: its earlier statements would be lost.
   */
  private failingOver(client: pg.PoolClient, primary: pg.Pool): PostgresPoolClient {
    let fallback: pg.PoolClient | null = null;
    let broken: Error | null = null;
    let inTransaction = false;
    const query = async (text: string, values: readonly unknown[]) => {
      if (fallback) return fallback.query(text, values as unknown[]);
      if (/^\s*(begin|start transaction)\b/i.test(text)) inTransaction = true;
      else if (/^\s*(commit|rollback)\b/i.test(text)) inTransaction = false;
      try {
        return await client.query(text, values as unknown[]);
      } catch (error) {
        const lost = lostConnection(error);
        if (inTransaction || (!lost && !recoveryConflict(error))) throw error;
        if (lost) {
          broken = error as Error;
          this.markDown(error);
        }
        this.counts.unavailable += 1;
        fallback = await primary.connect();
        return fallback.query(text, values as unknown[]);
      }
    };
    return {
      query: query as unknown as PostgresPoolClient['query'],
      release: () => {
        // A broken connection is destroyed, not put back for the next read to find dead.
        client.release(broken ?? undefined);
        fallback?.release();
      },
    };
  }
}

/** Kysely ends the pool it was given when destroyed; these pools are ended by their owner. */
function unowned(pool: pg.Pool): PostgresPool {
  return { connect: () => pool.connect(), end: async () => {} };
}

/** `velro_db_replica_up`, `velro_db_replica_lag_seconds` and `velro_db_routed_reads` on the app's registry. */
export function registerReplicaMetrics(registry: Registry, routing: ReadRouting): void {
  if (!routing.configured) return;
  new Gauge({
    name: 'velro_db_replica_up',
    help: 'Whether reads without a consistency token may use the read replica (1) or go to the primary (0)',
    registers: [registry],
    aggregator: 'min',
    collect() {
      this.set(routing.state.up ? 1 : 0);
    },
  });
  new Gauge({
    name: 'velro_db_replica_lag_seconds',
    help: 'How far the read replica replays behind the primary, sampled every DATABASE_REPLICA_CHECK_INTERVAL_MS (0: caught up)',
    registers: [registry],
    aggregator: 'max',
    collect() {
      if (routing.state.lagSeconds !== null) this.set(routing.state.lagSeconds);
    },
  });
  new Gauge({
    name: 'velro_db_routed_reads',
    help: 'Reads the replica may serve, since start, by where they went: replica; or the primary because the request carried a consistency token (token), the replica lagged (lagging) or could not be reached (unavailable)',
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      for (const [outcome, count] of Object.entries(routing.counts)) this.set({ outcome }, count);
    },
  });
}
