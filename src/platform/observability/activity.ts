import { type Kysely, sql } from 'kysely';
import type { DB } from '../db/schema.js';
import { DENIAL_REASONS } from './authz-tally.js';
import { dbErrors, dbPoolWait } from './metrics.js';

/**
 * What people do with the service, per minute, for the dashboard (`activity` and `db` in
 * GET /api/v1/performance/dashboard).
 *
 * Two scopes, and the payload says which is which:
 * - **fleet**: sign-ins, generations by status and credits come from the database (the audit log,
 *   the generations, the credit ledger), so they count every instance and every worker, wherever the
 *   event happened. A generation completes in a worker, often another process than the one serving
 *   the dashboard: only the database sees all of them. One grouped query over the last hour on the
 *   analytics pool (the replica when one is configured), served by indexes on the event times
 *   (migration 008), and cached for FLEET_TTL_MS: however many dashboards poll, an instance asks at
 *   most once per few seconds.
 * - **instance**: authorization denials, 4xx and 5xx answers and the database pools' health are
 *   counted in this process as they happen (no query at all). Behind a load balancer each instance
 *   shows its own share; under WEB_CONCURRENCY, the share of the process that answered the poll.
 */

export const MINUTES = 60;
const MINUTE_MS = 60_000;
/** How long one reading of the fleet-wide figures is served before the database is asked again. */
export const FLEET_TTL_MS = 5_000;
/** Process counters are folded into minutes this often (and at every read). */
const SAMPLE_MS = 5_000;
/** The pool-wait percentile covers this much of the recent past. */
const POOL_WINDOW_MS = 60_000;

/** The clock minute a time falls in (minutes since the epoch). */
const minuteOf = (ms: number) => Math.floor(ms / MINUTE_MS);

/** The starts of the last MINUTES clock minutes, oldest first; the last is the current, partial one. */
export function minuteGrid(nowMs: number): number[] {
  const current = minuteOf(nowMs);
  return Array.from({ length: MINUTES }, (_, i) => current - (MINUTES - 1) + i);
}

/** Counts per clock minute in a ring of MINUTES slots: adding is an index and an increment. */
export class MinuteSeries {
  private readonly counts = new Float64Array(MINUTES);
  private readonly held = new Float64Array(MINUTES).fill(-1);

  add(n: number, nowMs: number): void {
    if (n === 0) return;
    const minute = minuteOf(nowMs);
    const slot = minute % MINUTES;
    if (this.held[slot] !== minute) {
      this.held[slot] = minute;
      this.counts[slot] = 0;
    }
    this.counts[slot] = (this.counts[slot] as number) + n;
  }

  /** One value per minute of the grid; null for minutes that ended before `sinceMs` (not observed). */
  values(grid: number[], sinceMs: number): (number | null)[] {
    const first = minuteOf(sinceMs);
    return grid.map((minute) => {
      if (minute < first) return null;
      const slot = minute % MINUTES;
      return this.held[slot] === minute ? (this.counts[slot] as number) : 0;
    });
  }
}

/** Answers by status class, counted by the request observer (one increment per response). */
export class StatusTally {
  total = 0;
  client = 0;
  server = 0;

  count(status: number): void {
    this.total += 1;
    if (status >= 500) this.server += 1;
    else if (status >= 400) this.client += 1;
  }
}

// ------------------------------------------------------------------------------------------------
// Fleet-wide: one grouped query over the last hour

export interface FleetActivity {
  scope: 'fleet';
  source: 'database';
  /** When the database was read (the figures may be up to FLEET_TTL_MS old). */
  read_at: string | null;
  /** Why the last reading failed (the previous figures, if any, are still served). */
  error: string | null;
  sign_ins: { ok: number[]; failed: number[] };
  generations: { created: number[]; completed: number[]; failed: number[]; cancelled: number[] };
  /** Credits charged for generations, and handed back by refunds (failed or cancelled ones). */
  credits: { spent: number[]; refunded: number[] };
}

type FleetSeries =
  | 'sign_in_ok'
  | 'sign_in_failed'
  | 'created'
  | 'completed'
  | 'failed'
  | 'cancelled'
  | 'spent'
  | 'refunded';

interface FleetReading {
  at: number;
  /** Series → minute → count. */
  counts: Map<string, Map<number, number>>;
}

/**
 * The per-minute activity of the whole fleet over the last hour, in one statement. Every branch is
 * a range scan of an index on the event's time (EXPLAIN: audit_events_action_at_idx,
 * generations_created_at_idx, generations_finished_at_idx, credit_transactions_spending_at_idx),
 * so its cost follows the hour's events, not the tables' sizes.
 */
export const fleetActivityQuery = (since: Date) => sql<{ series: FleetSeries; minute: number; n: number }>`
  SELECT CASE WHEN decision = 'allow' THEN 'sign_in_ok' ELSE 'sign_in_failed' END AS series,
         floor(extract(epoch FROM at) / 60)::int8 AS minute, count(*)::int8 AS n
    FROM audit_events
   WHERE action = 'auth.login' AND at >= ${since}
   GROUP BY 1, 2
  UNION ALL
  SELECT 'created', floor(extract(epoch FROM created_at) / 60)::int8, count(*)::int8
    FROM generations
   WHERE created_at >= ${since}
   GROUP BY 2
  UNION ALL
  SELECT status, floor(extract(epoch FROM completed_at) / 60)::int8, count(*)::int8
    FROM generations
   WHERE completed_at IS NOT NULL AND completed_at >= ${since}
   GROUP BY 1, 2
  UNION ALL
  SELECT CASE WHEN reason = 'generation_charge' THEN 'spent' ELSE 'refunded' END,
         floor(extract(epoch FROM created_at) / 60)::int8, sum(abs(amount))::int8
    FROM credit_transactions
   WHERE reason IN ('generation_charge', 'generation_refund') AND created_at >= ${since}
   GROUP BY 1, 2`;

export class FleetActivityReader {
  private reading: FleetReading | null = null;
  private pending: Promise<void> | null = null;
  private error: string | null = null;
  /** Statements sent to the database (tests check the cache holds). */
  queries = 0;

  constructor(
    private readonly db: () => Kysely<DB>,
    private readonly ttlMs = FLEET_TTL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** The figures on this grid, reading the database only when the last reading is older than the TTL. */
  async read(grid: number[]): Promise<FleetActivity> {
    if (!this.reading || this.now() - this.reading.at >= this.ttlMs) {
      // One reading at a time: concurrent polls wait for the same statement.
      this.pending ??= this.refresh(grid).finally(() => {
        this.pending = null;
      });
      await this.pending;
    }
    const reading = this.reading;
    const series = (name: FleetSeries) => grid.map((minute) => reading?.counts.get(name)?.get(minute) ?? 0);
    return {
      scope: 'fleet',
      source: 'database',
      read_at: reading ? new Date(reading.at).toISOString() : null,
      error: this.error,
      sign_ins: { ok: series('sign_in_ok'), failed: series('sign_in_failed') },
      generations: {
        created: series('created'),
        completed: series('completed'),
        failed: series('failed'),
        cancelled: series('cancelled'),
      },
      credits: { spent: series('spent'), refunded: series('refunded') },
    };
  }

  private async refresh(grid: number[]): Promise<void> {
    const at = this.now();
    try {
      this.queries += 1;
      const { rows } = await fleetActivityQuery(new Date((grid[0] ?? minuteOf(at)) * MINUTE_MS)).execute(
        this.db(),
      );
      const counts = new Map<string, Map<number, number>>();
      for (const row of rows) {
        let byMinute = counts.get(row.series);
        if (!byMinute) {
          byMinute = new Map();
          counts.set(row.series, byMinute);
        }
        byMinute.set(Number(row.minute), (byMinute.get(Number(row.minute)) ?? 0) + Number(row.n));
      }
      this.reading = { at, counts };
      this.error = null;
    } catch (error) {
      // The dashboard keeps the last figures and says they are stale; the next poll after the TTL
      // tries again (a failed reading counts as one, so a database outage costs no more queries).
      this.error = error instanceof Error ? error.message : String(error);
      if (this.reading) this.reading.at = at;
      else this.reading = { at, counts: new Map() };
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Per instance: counters of this process, folded into minutes

export interface InstanceActivity {
  scope: 'instance';
  /** Since when this process has counted (minutes before it are null). */
  since: string;
  /** Authorization denials: of resources the caller cannot see (404) and of permissions lacking (403). */
  denials: { hidden: (number | null)[]; forbidden: (number | null)[] };
  /** Answers this process gave, by status class. */
  responses: {
    total: (number | null)[];
    client_errors: (number | null)[];
    server_errors: (number | null)[];
  };
}

/** One pool's health in this process: its connection waits over the last minute and its failures. */
export interface PoolHealth {
  /** Connections handed out over about the last minute (one that was idle is a wait of 0). */
  waits_1m: number;
  /** p95 of those waits, interpolated in the histogram's buckets as Prometheus does; null without waits. */
  wait_p95_ms: number | null;
  errors_1m: { acquire: number; query: number };
  errors_total: { acquire: number; query: number };
}

interface HistogramSample {
  at: number;
  /** pool → cumulative count per bucket (bucket order), and the total count. */
  pools: Map<string, { buckets: number[]; count: number }>;
  /** `pool NUL kind` → cumulative failures. */
  errors: Map<string, number>;
}

const HIDDEN_REASONS = DENIAL_REASONS.map((r, i) => [r, i] as const)
  .filter(([r]) => r !== 'lacks_permission')
  .map(([, i]) => i);
const FORBIDDEN_REASON = DENIAL_REASONS.indexOf('lacks_permission');

export interface InstanceSources {
  statuses: StatusTally;
  /** Cumulative denials by reason (DENIAL_REASONS order), the authorization tally's. */
  denials: () => ArrayLike<number>;
}

export class InstanceActivityTracker {
  readonly startedAt: number;
  private readonly series = {
    hidden: new MinuteSeries(),
    forbidden: new MinuteSeries(),
    total: new MinuteSeries(),
    client: new MinuteSeries(),
    server: new MinuteSeries(),
  };
  private last = { hidden: 0, forbidden: 0, total: 0, client: 0, server: 0 };
  private histogram: HistogramSample[] = [];
  private buckets: number[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly sources: InstanceSources,
    private readonly now: () => number = Date.now,
  ) {
    this.startedAt = now();
  }

  start(everyMs = SAMPLE_MS): void {
    if (this.timer) return;
    const sample = () => void this.sample().catch(() => {});
    sample();
    this.timer = setInterval(sample, everyMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Folds what the counters gained since the last sample into the current minute. */
  async sample(): Promise<void> {
    const now = this.now();
    const denials = this.sources.denials();
    let hidden = 0;
    for (const i of HIDDEN_REASONS) hidden += denials[i] ?? 0;
    const current = {
      hidden,
      forbidden: denials[FORBIDDEN_REASON] ?? 0,
      total: this.sources.statuses.total,
      client: this.sources.statuses.client,
      server: this.sources.statuses.server,
    };
    for (const key of Object.keys(current) as (keyof typeof current)[]) {
      this.series[key].add(current[key] - this.last[key], now);
    }
    this.last = current;
    await this.samplePools(now);
  }

  private async samplePools(now: number): Promise<void> {
    // Every poll reads; one sample a second is plenty for a one-minute window.
    const previous = this.histogram.at(-1);
    if (previous && now - previous.at < 1_000) return;
    const [wait, errors] = await Promise.all([dbPoolWait.get(), dbErrors.get()]);
    const pools = new Map<string, { buckets: number[]; count: number }>();
    const bounds = new Set<number>();
    for (const v of wait.values) {
      const pool = String(v.labels.pool ?? '');
      if (!pool) continue;
      let entry = pools.get(pool);
      if (!entry) {
        entry = { buckets: [], count: 0 };
        pools.set(pool, entry);
      }
      if (v.metricName?.endsWith('_bucket')) {
        const le = (v.labels as Record<string, string | number | undefined>).le;
        bounds.add(le === '+Inf' ? Number.POSITIVE_INFINITY : Number(le));
        entry.buckets.push(v.value);
      } else if (v.metricName?.endsWith('_count')) entry.count = v.value;
    }
    const failures = new Map<string, number>();
    for (const v of errors.values) failures.set(`${v.labels.pool}\u0000${v.labels.kind}`, v.value);
    this.buckets = [...bounds].sort((a, b) => a - b);
    this.histogram.push({ at: now, pools, errors: failures });
    while (this.histogram.length > 2 && (this.histogram[1]?.at ?? now) <= now - POOL_WINDOW_MS)
      this.histogram.shift();
  }

  async read(grid: number[]): Promise<{ activity: InstanceActivity; pools: Record<string, PoolHealth> }> {
    await this.sample();
    const since = this.startedAt;
    const values = (s: MinuteSeries) => s.values(grid, since);
    return {
      activity: {
        scope: 'instance',
        since: new Date(since).toISOString(),
        denials: { hidden: values(this.series.hidden), forbidden: values(this.series.forbidden) },
        responses: {
          total: values(this.series.total),
          client_errors: values(this.series.client),
          server_errors: values(this.series.server),
        },
      },
      pools: this.poolHealth(),
    };
  }

  private poolHealth(): Record<string, PoolHealth> {
    const out: Record<string, PoolHealth> = {};
    const last = this.histogram.at(-1);
    const first = this.histogram[0];
    if (!last || !first) return out;
    const base = first === last ? null : first;
    const errorsOf = (pool: string, kind: 'acquire' | 'query') => {
      const key = `${pool}\u0000${kind}`;
      const total = last.errors.get(key) ?? 0;
      return { oneMinute: total - (base?.errors.get(key) ?? 0), total };
    };
    const names = new Set([
      ...last.pools.keys(),
      ...[...last.errors.keys()].map((k) => k.split('\u0000')[0] ?? ''),
    ]);
    for (const pool of names) {
      const now = last.pools.get(pool) ?? { buckets: [], count: 0 };
      const before = base?.pools.get(pool);
      const deltas = now.buckets.map((b, i) => b - (before?.buckets[i] ?? 0));
      const count = now.count - (before?.count ?? 0);
      const acquire = errorsOf(pool, 'acquire');
      const query = errorsOf(pool, 'query');
      out[pool] = {
        waits_1m: count,
        wait_p95_ms: count > 0 ? bucketQuantile(0.95, this.buckets, deltas) : null,
        errors_1m: { acquire: acquire.oneMinute, query: query.oneMinute },
        errors_total: { acquire: acquire.total, query: query.total },
      };
    }
    return out;
  }
}

/**
 * A quantile from cumulative bucket counts, interpolated linearly inside the bucket as Prometheus'
 * histogram_quantile does (so the dashboard and a Grafana panel agree); in ms.
 */
export function bucketQuantile(q: number, bounds: number[], cumulative: number[]): number | null {
  const total = cumulative.at(-1) ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < cumulative.length; i++) {
    const upTo = cumulative[i] as number;
    if (upTo >= rank) {
      const upper = bounds[i] as number;
      const lower = i === 0 ? 0 : (bounds[i - 1] as number);
      if (!Number.isFinite(upper)) return lower * 1000;
      const below = i === 0 ? 0 : (cumulative[i - 1] as number);
      const inBucket = upTo - below;
      const fraction = inBucket > 0 ? (rank - below) / inBucket : 1;
      return (lower + (upper - lower) * fraction) * 1000;
    }
  }
  return null;
}

// ------------------------------------------------------------------------------------------------

/** What the dashboard route reads: both scopes on one grid of the last hour's minutes. */
export class Activity {
  readonly fleet: FleetActivityReader;
  readonly instance: InstanceActivityTracker;

  constructor(
    options: { db: () => Kysely<DB>; sources: InstanceSources; fleetTtlMs?: number },
    private readonly now: () => number = Date.now,
  ) {
    this.fleet = new FleetActivityReader(options.db, options.fleetTtlMs ?? FLEET_TTL_MS, now);
    this.instance = new InstanceActivityTracker(options.sources, now);
  }

  async read() {
    const grid = minuteGrid(this.now());
    const [fleet, instance] = await Promise.all([this.fleet.read(grid), this.instance.read(grid)]);
    return {
      activity: {
        minute_starts: grid.map((m) => new Date(m * MINUTE_MS).toISOString()),
        fleet,
        instance: instance.activity,
      },
      db: { scope: 'instance' as const, window: '1m', pools: instance.pools },
    };
  }
}
