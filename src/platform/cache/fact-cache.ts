import { LRUCache } from 'lru-cache';
import { ExpirySchedule } from './expiry-sweep.js';
import type { L2Store } from './l2.js';
import type { Stamped } from './stamped.js';

export type { Stamped } from './stamped.js';

export type Layer = 'l1' | 'l2' | 'miss';

/** A load from the database: the revision it read at, and every key it learned (side-fills). */
export interface Loaded {
  rev: number;
  entries: Map<string, unknown>;
}

export interface FactCacheOptions {
  l1MaxBytes: number;
  /** Lifetimes per key and value (e.g. a valid service key 24 h, an unknown one 1 h, as in the seeds). */
  ttlMs: (key: string, value: unknown) => number;
  l2TtlSeconds: (key: string, value: unknown) => number;
  l2: L2Store | null;
  /** How many recent invalidations to remember per key (older ones fold into a floor). */
  tombstones?: number;
  /**
   * How often expired L1 entries are removed (`sweepExpired`), ms; 0 (the default here) leaves it
   * to the caller. The service sweeps every second (src/platform/cache/open.ts).
   */
  sweepEveryMs?: number;
  /** The clock of L1 lifetimes, ms (tests move it by hand); `performance.now` by default. */
  now?: () => number;
}

/** Expired L1 entries removed per sweep at most (about a millisecond of work). */
const SWEEP_BATCH = 2_000;
/** Lifetimes ending within the same 10 s are swept together. */
const SWEEP_SLOT_MS = 10_000;

interface LayerStats {
  hits: number;
  misses: number;
}

const ENTRY_OVERHEAD_BYTES = 96;

/** Rough bytes of a key and its JSON value in memory (UTF-16 strings, object headers). */
function sizeOf(key: string, entry: Stamped): number {
  return ENTRY_OVERHEAD_BYTES + key.length * 2 + (entry.v === null ? 0 : JSON.stringify(entry.v).length * 2);
}

/**
 * L1 (this process, bounded by bytes, LRU, TTL, single-flight loads) over L2 (Redis, shared) over
 * the database. Holds facts, never decisions.
 *
 * Freshness rules, from the stale "allow"s SpiceDB, OpenFGA and OPAL shipped:
 * - every entry carries the revision its read saw; a layer filled from another keeps that stamp;
 * - an invalidation leaves a tombstone (key → revision); a load stamped below it is not stored,
 *   so a read that raced with a write can never re-insert the old value;
 * - `appliedUpTo` is the highest revision up to which this process has received every
 *   invalidation; a request carrying a consistency token above it bypasses the caches;
 * - a gap or a lost connection flushes everything below the current revision (`flush`).
 */
export class FactCache {
  /** On (the default) or switched off by the invalidation bus (`enable`, `disable`). */
  private on = true;
  /** L1 off (with `enabled` on) leaves L2 over the database: the bench's "L2 only" case. */
  l1Enabled = true;
  /** Every invalidation up to this revision has been applied here (`advanceTo`). */
  private applied = 0;
  /**
   * Cached facts answer only before this moment (`performance.now()` ms): the lease that the
   * invalidation bus renews each time a heartbeat comes back through the database (SPEC §6 rule
   * 7). Without a bus (a cache built by hand in a bench) nothing can change unseen: no limit.
   */
  private leaseUntil = Number.POSITIVE_INFINITY;
  /** This process's own writes up to here must be applied before cached facts answer again. */
  private mustReach = 0;
  private readonly l1: LRUCache<string, Stamped, { load: () => Promise<Stamped | undefined>; layer: Layer }>;
  private readonly tombstones: LRUCache<string, number>;
  /** Loads stamped below this are refused for every key (raised by flushes and folded tombstones). */
  private floor = 0;
  private readonly inflight = new Set<string>();
  /** When each L1 entry's lifetime ends: expired entries are removed, not left to the budget. */
  private readonly expiry = new ExpirySchedule(SWEEP_SLOT_MS);
  private readonly clock: () => number;
  private sweeper: NodeJS.Timeout | null = null;
  readonly stats = {
    l1: { hits: 0, misses: 0 } as LayerStats,
    l2: { hits: 0, misses: 0, errors: 0 } as LayerStats & { errors: number },
    loads: 0,
    evictions: 0,
    refusedStale: 0,
    invalidations: 0,
    flushes: 0,
    /** Expired L1 entries removed by the sweep (an expired entry is never served either way). */
    expired: 0,
  };

  constructor(private readonly options: FactCacheOptions) {
    this.clock = options.now ?? (() => performance.now());
    this.tombstones = new LRUCache<string, number>({
      max: options.tombstones ?? 100_000,
      dispose: (rev, _key, reason) => {
        if (reason === 'evict' && rev > this.floor) this.floor = rev;
      },
    });
    this.l1 = new LRUCache<string, Stamped, { load: () => Promise<Stamped | undefined>; layer: Layer }>({
      maxSize: options.l1MaxBytes,
      sizeCalculation: (entry, key) => sizeOf(key, entry),
      ttl: 600_000,
      ttlAutopurge: false,
      ...(options.now ? { perf: { now: options.now }, ttlResolution: 0 } : {}),
      // Per-entry lifetimes are set on every store; this default only covers fetch results.
      updateAgeOnGet: false,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') this.stats.evictions += 1;
      },
      fetchMethod: async (key, _stale, { context, options: setOptions }) => {
        const entry = await context.load();
        if (entry) {
          setOptions.ttl = this.options.ttlMs(key, entry.v);
          this.expiry.add(key, this.clock(), setOptions.ttl);
        }
        return entry;
      },
    });
    const every = options.sweepEveryMs ?? 0;
    if (every > 0) {
      this.sweeper = setInterval(() => this.sweepExpired(), every);
      this.sweeper.unref();
    }
  }

  /**
   * Removes up to `limit` L1 entries whose lifetime has ended (see ExpirySchedule: lru-cache would
   * keep them until the byte budget pushes them out). An entry stored again since keeps its new
   * lifetime; a key being loaded is left to its load. Returns how many entries were removed.
   */
  sweepExpired(limit = SWEEP_BATCH): number {
    const removed = this.expiry.sweep(this.l1, this.clock(), limit, (key) => this.inflight.has(key));
    this.stats.expired += removed;
    return removed;
  }

  /** Stops the periodic sweep. */
  close(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  /** Whether the cache is on: off, every read goes to the database and nothing is stored. */
  get enabled(): boolean {
    return this.on;
  }

  /** Switches the cache on (the bus, once connected and resynced, when configuration and fleet agree). */
  enable(): void {
    this.on = true;
  }

  /** Switches the cache off: reads go to the database, nothing is stored (the bus, the kill switch). */
  disable(): void {
    this.on = false;
  }

  /** The revision up to which this process has applied every invalidation. */
  get appliedUpTo(): number {
    return this.applied;
  }

  /** Every invalidation up to `rev` has been applied here (the bus); never moves back. */
  advanceTo(rev: number): void {
    if (rev > this.applied) this.applied = rev;
  }

  /**
   * Whether cached facts may answer a request that carries consistency token `minRevision` (0 for
   * none): the cache is on, its invalidation stream proved live within the lease, this process's
   * own writes are applied, and so is the token. The one place that says so.
   */
  canAnswer(minRevision: number): boolean {
    return (
      this.on &&
      minRevision <= this.applied &&
      this.mustReach <= this.applied &&
      performance.now() < this.leaseUntil
    );
  }

  /**
   * The one revision at which cached pieces stamped from `oldest` to `newest` all hold, or -1.
   * A piece stamped at or below `appliedUpTo` holds from its stamp up to `appliedUpTo` (every
   * invalidation since has been applied, and would have removed it); one stamped above it is known
   * only at its own stamp. So pieces combine at `appliedUpTo`, or at one shared newer stamp, and
   * never a newer piece with an older one: that mix can show a state that never existed (SPEC §6
   * rule 8, the "new enemy" problem). No pieces at all (oldest = +∞, newest = 0): `appliedUpTo`.
   */
  commonRevision(oldest: number, newest: number): number {
    if (newest <= this.applied) return this.applied;
    return oldest === newest ? newest : -1;
  }

  /** Cached facts may answer until `until` (`performance.now()` ms), unless a later call says less. */
  leaseTo(until: number): void {
    this.leaseUntil = until;
  }

  /** From now on cached facts answer only once revision `rev` is applied here (own writes). */
  requireApplied(rev: number): void {
    if (rev > this.mustReach) this.mustReach = rev;
  }

  /** Milliseconds the current lease has left (negative: expired), for the stats. */
  leaseLeftMs(): number {
    return this.leaseUntil - performance.now();
  }

  get l2Available(): boolean {
    return this.options.l2?.available ?? false;
  }

  /** The L1 value, synchronously, or undefined. Counts a hit or a miss. */
  peek<V>(key: string): Stamped<V> | undefined {
    const entry = this.peekUncounted<V>(key);
    if (entry) this.countL1(1, 0);
    else this.countL1(0, 1);
    return entry;
  }

  /**
   * As `peek`, but not counted: for a caller whose lookup may be asked again on a slower path (a
   * warm attempt that falls back to `getMany`), so that each fact a request needs is counted once,
   * where its lookup is settled — by `countL1` when the warm attempt is the last word, else by the
   * slower path. Counting every attempt made a cold check's missing fact count as two or three L1
   * misses and understated the hit ratio.
   */
  peekUncounted<V>(key: string): Stamped<V> | undefined {
    if (!this.on || !this.l1Enabled) return undefined;
    return this.l1.get(key) as Stamped<V> | undefined;
  }

  /** Whether L1 holds a live entry for `key` (not counted as a lookup; for warming). */
  holds(key: string): boolean {
    return this.peekUncounted(key) !== undefined;
  }

  /** Counts L1 lookups made with `peekUncounted` whose outcome is final. */
  countL1(hits: number, misses: number): void {
    if (!this.on || !this.l1Enabled) return;
    this.stats.l1.hits += hits;
    this.stats.l1.misses += misses;
  }

  /** Whether a value read at `rev` may be stored under `key` (no newer invalidation, no flush). */
  storable(key: string, rev: number): boolean {
    return rev >= (this.tombstones.get(key) ?? this.floor);
  }

  /** Stores a database read (L1 and L2), unless a newer invalidation already passed. */
  put(key: string, value: unknown, rev: number): void {
    if (!this.on) return;
    if (!this.storable(key, rev)) {
      this.stats.refusedStale += 1;
      return;
    }
    // Never overwrite an in-flight load's slot: that would abort it (lru-cache semantics).
    if (this.inflight.has(key)) return;
    const entry: Stamped = { v: value ?? null, r: rev };
    if (this.l1Enabled) {
      const current = this.l1.peek(key);
      if (current && current.r > rev) return;
      this.storeInL1(key, entry);
    }
    this.options.l2?.write(key, entry, this.options.l2TtlSeconds(key, entry.v));
  }

  /**
   * L1, then L2, then `load` (single-flight per key: concurrent misses share one load). The other
   * entries `load` returns are stored as well; if it returns nothing for `key`, the answer is
   * "unknown" (null) and nothing is cached for `key`.
   */
  async get<V>(
    key: string,
    load: () => Promise<Loaded>,
    /** L1 and L2 were just asked for this key (`getMany`, which counted it): go straight to `load`. */
    skipL2 = false,
  ): Promise<{ entry: Stamped<V>; layer: Layer }> {
    // After `getMany` (skipL2) this key's L1 lookup was counted there.
    const hit = skipL2 ? this.peekUncounted<V>(key) : this.peek<V>(key);
    if (hit) return { entry: hit, layer: 'l1' };
    const context = {
      layer: 'miss' as Layer,
      result: undefined as Stamped | undefined,
      /** Set when our own load failed (a database error): that one propagates. */
      failure: undefined as unknown,
      load: async (): Promise<Stamped | undefined> => {
        this.inflight.add(key);
        try {
          const l2 = this.options.l2 && !skipL2 ? await this.fromL2(key) : undefined;
          if (l2) {
            context.layer = 'l2';
            context.result = l2;
            return l2;
          }
          const loaded = await load();
          this.stats.loads += 1;
          const own = { v: (loaded.entries.get(key) ?? null) as unknown, r: loaded.rev };
          context.result = own;
          this.inflight.delete(key);
          for (const [k, v] of loaded.entries) if (k !== key) this.put(k, v, loaded.rev);
          // A load that did not answer for this key says nothing about it: never cache a guess.
          if (!loaded.entries.has(key)) return undefined;
          if (!this.storable(key, loaded.rev)) {
            this.stats.refusedStale += 1;
            return undefined;
          }
          this.options.l2?.write(key, own, this.options.l2TtlSeconds(key, own.v));
          return own;
        } catch (error) {
          context.failure = error;
          throw error;
        } finally {
          this.inflight.delete(key);
        }
      },
    };
    if (!this.on) {
      const loaded = await load();
      return { entry: { v: (loaded.entries.get(key) ?? null) as V | null, r: loaded.rev }, layer: 'miss' };
    }
    if (!this.l1Enabled) {
      const stored = await context.load();
      return { entry: (stored ?? context.result) as Stamped<V>, layer: context.layer };
    }
    try {
      const value = await this.l1.fetch(key, { context });
      const entry = (value ?? context.result) as Stamped<V> | undefined;
      if (entry) return { entry, layer: context.layer };
    } catch (error) {
      // Our load failed: that is the answer. Anything else is lru-cache abandoning the fetch
      // because the key was invalidated (deleted) or the cache flushed while it loaded (it rejects
      // with a plain Error('deleted')): load again, straight from the source.
      if (context.failure !== undefined && error === context.failure) throw error;
    }
    const loaded = await load();
    return { entry: { v: (loaded.entries.get(key) ?? null) as V | null, r: loaded.rev }, layer: 'miss' };
  }

  /**
   * What L1 and L2 hold for `keys`, never loading: L1 first, then every key L1 lacks in ONE L2
   * round trip (an L2 hit is kept in L1, as `get` keeps it). A key found in neither is absent from
   * the answer; `get` it with `skipL2`. The caller combines the stamps (`commonRevision`).
   */
  async getMany(keys: readonly string[]): Promise<Map<string, { entry: Stamped; layer: Layer }>> {
    const found = new Map<string, { entry: Stamped; layer: Layer }>();
    if (!this.on) return found;
    const rest: string[] = [];
    for (const key of keys) {
      const hit = this.peek(key);
      if (hit) found.set(key, { entry: hit, layer: 'l1' });
      else rest.push(key);
    }
    const l2 = this.options.l2;
    if (rest.length === 0 || !l2?.available) return found;
    const entries = await l2.readMany(rest);
    if (entries === 'error') {
      this.stats.l2.errors += 1;
      return found;
    }
    for (const [i, key] of rest.entries()) {
      const entry = entries[i];
      // Checked after the read: an invalidation that arrived meanwhile wins.
      if (entry && this.storable(key, entry.r)) {
        this.stats.l2.hits += 1;
        found.set(key, { entry, layer: 'l2' });
        this.keepInL1(key, entry);
      } else this.stats.l2.misses += 1;
    }
    return found;
  }

  /** An entry read from L2 into L1 (not written back to L2), under the same guards as `put`. */
  private keepInL1(key: string, entry: Stamped): void {
    if (!this.l1Enabled || this.inflight.has(key)) return;
    const current = this.l1.peek(key);
    if (current && current.r >= entry.r) return;
    this.storeInL1(key, entry);
  }

  /** Stores `entry` in L1 with its lifetime, and notes when that ends for the expiry sweep. */
  private storeInL1(key: string, entry: Stamped): void {
    const ttl = this.options.ttlMs(key, entry.v);
    this.l1.set(key, entry, { ttl });
    this.expiry.add(key, this.clock(), ttl);
  }

  private async fromL2(key: string): Promise<Stamped | undefined> {
    const l2 = this.options.l2;
    if (!l2?.available) return undefined;
    const entry = await l2.read(key);
    if (entry === 'error') {
      this.stats.l2.errors += 1;
      return undefined;
    }
    // An L2 entry older than what this process knows to be invalid is no better than a miss.
    if (entry && this.storable(key, entry.r)) {
      this.stats.l2.hits += 1;
      return entry;
    }
    this.stats.l2.misses += 1;
    return undefined;
  }

  /** Applies one invalidation from the bus: gone from L1 now, tombstoned in L1 and L2. */
  invalidate(key: string, rev: number): void {
    this.stats.invalidations += 1;
    const previous = this.tombstones.get(key) ?? 0;
    if (rev > previous) this.tombstones.set(key, rev);
    this.l1.delete(key);
    this.options.l2?.tombstone(key, rev);
  }

  /**
   * Distrust everything read before `rev`: L1 emptied, loads stamped below `rev` refused, and the
   * L2 floor raised so other processes ignore older shared entries too (when `shared`).
   */
  flush(rev: number, shared: boolean): void {
    this.stats.flushes += 1;
    if (rev > this.floor) this.floor = rev;
    this.l1.clear();
    this.expiry.clear();
    if (shared) this.options.l2?.raiseFloor(rev);
  }

  /** The shared layer, for the bus's bookkeeping of what L2 has seen. */
  get l2(): L2Store | null {
    return this.options.l2;
  }

  /** Puts a value straight from a warming query (same guards as any load). */
  warm(entries: Map<string, unknown>, rev: number): void {
    for (const [k, v] of entries) this.put(k, v, rev);
  }

  snapshot() {
    const l1Total = this.stats.l1.hits + this.stats.l1.misses;
    const l2Total = this.stats.l2.hits + this.stats.l2.misses;
    const leaseLeft = this.leaseLeftMs();
    return {
      enabled: this.on,
      applied_revision: this.applied,
      answering: this.canAnswer(0),
      lease_left_ms: Number.isFinite(leaseLeft) ? Math.round(leaseLeft) : null,
      awaiting_own_write: this.mustReach > this.applied ? this.mustReach : null,
      l1: {
        entries: this.l1.size,
        bytes: this.l1.calculatedSize,
        max_bytes: this.options.l1MaxBytes,
        hits: this.stats.l1.hits,
        misses: this.stats.l1.misses,
        evictions: this.stats.evictions,
        expired: this.stats.expired,
        awaiting_expiry: this.expiry.size,
        hit_ratio: l1Total === 0 ? null : this.stats.l1.hits / l1Total,
      },
      l2: {
        configured: this.options.l2 !== null,
        available: this.l2Available,
        hits: this.stats.l2.hits,
        misses: this.stats.l2.misses,
        errors: this.stats.l2.errors,
        hit_ratio: l2Total === 0 ? null : this.stats.l2.hits / l2Total,
        ...(this.options.l2 ? this.options.l2.stats() : {}),
      },
      database_loads: this.stats.loads,
      refused_stale: this.stats.refusedStale,
      invalidations: this.stats.invalidations,
      flushes: this.stats.flushes,
    };
  }

  /** For tests: every L1 entry with its stamp. */
  *entries(): Generator<[string, Stamped]> {
    for (const [k, v] of this.l1.entries()) yield [k, v];
  }
}
