import { EventEmitter } from 'node:events';
import type { PgListener } from '../db/listener.js';
import type { FactCache } from './fact-cache.js';
import { FLAGS_KEY, RULES_KEY } from './revision.js';

export const INVALIDATION_CHANNEL = 'velro_authz';

export interface FleetState {
  rev: number;
  flushFloor: number;
  /** The fleet-wide kill switch (PATCH /admin/flags); absent means on. */
  cacheEnabled?: boolean;
  cacheFlagRev?: number;
}

export interface BusOptions {
  cache: FactCache;
  listener: PgListener;
  /**
   * The revision committed in the database right now, the last operator flush's, and the fleet's
   * cache kill switch with the revision it was last changed at.
   */
  currentRevision: () => Promise<FleetState>;
  /** Records that this instance applied the kill switch's state of `flagRev` (for the operator). */
  acknowledge?: (flagRev: number, cacheEnabled: boolean) => void;
  /** How this instance is named in those records. */
  instanceId?: string;
  onGap?: (expected: number, got: number) => void;
  onResyncFailed?: (error: Error) => void;
}

/**
 * Applies the database's invalidations (migration 004's NOTIFYs) to this process's cache, and
 * keeps `cache.appliedUpTo`: the revision up to which every invalidation has been received.
 *
 * - Revisions arrive contiguous and in commit order, so a gap means notifications were lost; a lost
 *   connection means the same. Either way nothing cached before can be trusted: it is flushed
 *   (locally and, through the shared floor, in L2), and the cache is bypassed until that is done.
 * - A connection can also go silent without closing (a NAT or load balancer dropping it). So the
 *   cache answers only under a lease: each heartbeat that comes back through the database proves
 *   that every invalidation committed before it was sent has been applied, and lets cached facts
 *   answer for `lease` after that send (SPEC §6 rule 7). Past the lease the cache is bypassed; the
 *   listener replaces the connection and this bus resyncs.
 *
 * Emits `invalidated` (key, rev) after applying one invalidation, and `distrust` when everything
 * cached may be wrong (a gap, a flush, a lost connection), for subscribers that hold long-lived
 * answers (event streams) and must re-check them.
 */
export class InvalidationBus extends EventEmitter {
  private waiters: { rev: number; resolve: (ok: boolean) => void; timer: NodeJS.Timeout }[] = [];
  /** The baseline revision is known: from here on a revision ahead of `appliedUpTo + 1` is a gap. */
  private baselined = false;
  /** Connected and resynced: the cache may answer (within the lease). */
  private connected = false;
  private started = false;
  private reporter: NodeJS.Timeout | null = null;
  private resyncing: Promise<void> | null = null;
  /** A heartbeat that came back while resyncing: its proof counts once the resync is done. */
  private proofDuringResync: number | null = null;
  private readonly leaseMs: number;
  gaps = 0;
  reconnects = 0;
  /** Resyncs that failed (each is retried while the listener stays connected). */
  resyncFailures = 0;
  /**
   * The cache is wanted on: this process's configuration (CACHE_ENABLED) and the fleet's kill switch
   * both say so. The bus may still bypass the cache while disconnected.
   */
  wantEnabled = true;
  /** This process's configuration: off here stays off whatever the fleet says. */
  private configEnabled = true;
  /** The fleet's kill switch as last applied, and the revision it was changed at. */
  fleetEnabled = true;
  fleetFlagRev = 0;
  readonly instanceId: string;

  constructor(private readonly options: BusOptions) {
    super();
    this.setMaxListeners(0);
    this.instanceId = options.instanceId ?? 'this-instance';
    const { listener, cache } = options;
    this.leaseMs = listener.leaseMs;
    // Until the first heartbeat comes back, nothing proves invalidations are reaching this process.
    cache.leaseTo(0);
    listener.on('notification', (channel: string, payload: string) => {
      if (channel === INVALIDATION_CHANNEL) this.apply(payload);
    });
    listener.on('proof', (sentAt: number, rev: number) => this.proven(sentAt, rev));
    listener.on('disconnected', () => {
      this.connected = false;
      cache.disable();
      cache.leaseTo(0);
      this.emit('distrust');
    });
    listener.on('connected', () => {
      // The first connection is start()'s; only a re-connection can have missed notifications.
      if (!this.started) return;
      this.reconnects += 1;
      void this.resync();
    });
  }

  /** Call once the listener is connected: from here on every invalidation is seen. */
  async start(cacheEnabled: boolean): Promise<void> {
    this.configEnabled = cacheEnabled;
    this.started = true;
    const cache = this.options.cache;
    const state = await this.options.currentRevision();
    const { rev, flushFloor } = state;
    this.adoptFleetState(state);
    this.advance(rev);
    this.baselined = true;
    // Shared entries older than the last operator flush are not to be trusted, even by a newcomer.
    if (flushFloor > 0) cache.flush(flushFloor, false);
    // Changes made while no instance was listening never reached L2 as tombstones: if the database
    // is ahead of what any instance reported applying, retire every shared entry read before now.
    const seen = cache.l2 ? await cache.l2.seen() : null;
    if (seen !== null && seen < rev) cache.flush(rev, true);
    else cache.l2?.markSeen(rev);
    this.connected = true;
    this.applyWanted();
    this.reporter = setInterval(() => cache.l2?.markSeen(cache.appliedUpTo), 1_000);
    this.reporter.unref();
    // Answer from the cache as soon as the stream has proved itself once (uncached until then).
    await this.options.listener.proveLive();
  }

  stop(): void {
    if (this.reporter) clearInterval(this.reporter);
  }

  /** Connections replaced because no heartbeat came back within the lease. */
  get silentLosses(): number {
    return this.options.listener.silentLosses;
  }

  /** Whether the cache is usable at all right now (bus connected and resynced). */
  get healthy(): boolean {
    return this.connected;
  }

  /**
   * A heartbeat sent at `sentAt` came back: every invalidation committed before it has been applied
   * here, so cached facts may answer until `sentAt + lease`. Its revision doubles as a check: if it
   * is ahead of what was applied, notifications went missing and the cache starts over.
   */
  private proven(sentAt: number, rev: number): void {
    if (!this.started) return;
    if (this.resyncing || !this.connected) {
      this.proofDuringResync = sentAt;
      return;
    }
    const cache = this.options.cache;
    if (rev > cache.appliedUpTo) {
      this.gaps += 1;
      this.options.onGap?.(cache.appliedUpTo + 1, rev);
      cache.flush(rev, true);
      this.advance(rev);
      this.emit('distrust');
    }
    cache.leaseTo(sentAt + this.leaseMs);
  }

  /**
   * After a reconnection: whatever was announced while the connection was away is lost, so
   * everything cached before the current revision is dropped (here and, through the floor, in L2)
   * before the cache answers again. A failed attempt (database unreachable) is retried while the
   * listener stays connected; until one succeeds the cache stays bypassed.
   */
  private resync(): Promise<void> {
    if (!this.resyncing) {
      this.proofDuringResync = null;
      this.resyncing = (async () => {
        const state = await this.options.currentRevision();
        const { rev } = state;
        // Lost again meanwhile: the next connection resyncs.
        if (!this.options.listener.connected) return;
        // A switch thrown while this instance was not listening is the operator's last word too.
        this.adoptFleetState(state);
        const cache = this.options.cache;
        cache.flush(rev, true);
        this.advance(rev);
        this.connected = true;
        this.applyWanted();
        // A heartbeat on the new connection proves everything after its LISTEN arrives, and the
        // flush covers everything before `rev`: together, the cache may answer again.
        if (this.proofDuringResync !== null) cache.leaseTo(this.proofDuringResync + this.leaseMs);
        this.emit('distrust');
        // Alert rules changed while this instance was not listening: read them again.
        this.emit('rules');
      })()
        .catch((error: Error) => {
          // Never silent: counted here, and reported to whoever asked (the pipeline logs it).
          this.resyncFailures += 1;
          this.options.onResyncFailed?.(error);
          setTimeout(() => {
            if (this.options.listener.connected && !this.connected) void this.resync();
          }, 250).unref();
        })
        .finally(() => {
          this.resyncing = null;
        });
    }
    return this.resyncing;
  }

  /** The fleet's switch as read from the database (start, resync): adopted without a flush. */
  private adoptFleetState(state: FleetState): void {
    this.fleetEnabled = state.cacheEnabled ?? true;
    this.fleetFlagRev = state.cacheFlagRev ?? 0;
    this.wantEnabled = this.configEnabled && this.fleetEnabled;
    this.options.acknowledge?.(this.fleetFlagRev, this.wantEnabled);
  }

  /** The fleet's switch was thrown (announced at `rev`): applied here at once, then acknowledged. */
  private fleetSwitched(enabled: boolean, rev: number): void {
    this.fleetEnabled = enabled;
    this.fleetFlagRev = rev;
    const want = this.configEnabled && enabled;
    if (want !== this.wantEnabled) this.setEnabled(want);
    this.options.acknowledge?.(rev, this.wantEnabled);
  }

  /** This instance only (what the fleet switch applies here; tests restoring a state). */
  setEnabled(enabled: boolean): void {
    this.wantEnabled = enabled;
    if (!enabled) this.options.cache.disable();
    else if (this.connected) {
      // Whatever was cached before switching off may have missed nothing, but costs nothing to drop.
      this.options.cache.flush(this.options.cache.appliedUpTo, false);
      this.options.cache.enable();
    }
  }

  /** Connected and resynced: the cache is on exactly when configuration and fleet want it. */
  private applyWanted(): void {
    if (this.wantEnabled) this.options.cache.enable();
    else this.options.cache.disable();
  }

  private apply(payload: string): void {
    let message: { rev: number; key: string; cache_enabled?: boolean };
    try {
      message = JSON.parse(payload) as { rev: number; key: string; cache_enabled?: boolean };
    } catch {
      return;
    }
    const cache = this.options.cache;
    // '*': an operator flush (POST /admin/cache/flush): everything read before `rev` goes.
    // '!flags': the fleet's kill switch was thrown; no fact changed.
    if (message.key === '*') cache.flush(message.rev, true);
    else if (message.key === FLAGS_KEY) this.fleetSwitched(message.cache_enabled !== false, message.rev);
    // '!rules': an administrator changed the alert rules; no fact changed.
    else if (message.key === RULES_KEY) this.emit('rules');
    else cache.invalidate(message.key, message.rev);
    // Before the baseline is read, a revision cannot be judged; the baseline covers it.
    if (!this.baselined) return;
    const expected = cache.appliedUpTo + 1;
    const gap = message.rev > expected;
    if (gap) {
      this.gaps += 1;
      this.options.onGap?.(expected, message.rev);
      cache.flush(message.rev, true);
    }
    if (message.rev > cache.appliedUpTo) this.advance(message.rev);
    cache.l2?.markSeen(cache.appliedUpTo);
    // Subscribers (event streams) re-check what the changed fact may have taken away.
    if (gap || message.key === '*') this.emit('distrust');
    else if (message.key !== FLAGS_KEY && message.key !== RULES_KEY)
      this.emit('invalidated', message.key, message.rev);
  }

  private advance(rev: number): void {
    const cache = this.options.cache;
    cache.advanceTo(rev);
    if (this.waiters.length === 0) return;
    const ready = this.waiters.filter((w) => w.rev <= cache.appliedUpTo);
    if (ready.length === 0) return;
    this.waiters = this.waiters.filter((w) => w.rev > cache.appliedUpTo);
    for (const w of ready) {
      clearTimeout(w.timer);
      w.resolve(true);
    }
  }

  /**
   * This process committed a write at `rev`: its cache answers nothing older from now on, and the
   * answer waits (up to `timeoutMs`) for the write's invalidations to arrive. If they are late the
   * write still answers, and the cache stays bypassed until they are applied: the writer never
   * sees its own revoked facts, whatever the bus does.
   */
  wrote(rev: number, timeoutMs: number): Promise<boolean> {
    this.options.cache.requireApplied(rev);
    return this.waitFor(rev, timeoutMs);
  }

  /** Resolves true once every invalidation up to `rev` has been applied here, false after `timeoutMs`. */
  waitFor(rev: number, timeoutMs: number): Promise<boolean> {
    if (rev <= this.options.cache.appliedUpTo) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.timer !== timer);
        resolve(false);
      }, timeoutMs);
      this.waiters.push({ rev, resolve, timer });
    });
  }
}
