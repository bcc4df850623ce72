import type { PgListener } from '../db/listener.js';
import type { FactCache } from './fact-cache.js';

export const INVALIDATION_CHANNEL = 'velro_authz';

export interface BusOptions {
  cache: FactCache;
  listener: PgListener;
  /** The revision committed in the database right now, and the last operator flush's. */
  currentRevision: () => Promise<{ rev: number; flushFloor: number }>;
  onGap?: (expected: number, got: number) => void;
}

/**
 * Applies the database's invalidations (migration 004's NOTIFYs) to this process's cache, and
 * keeps `cache.appliedUpTo`: the revision up to which every invalidation has been received.
 * Revisions arrive contiguous and in commit order, so a gap means notifications were lost; a
 * lost connection means the same. Either way nothing cached before can be trusted: it is flushed
 * (locally and, through the shared floor, in L2). While the connection is down the cache is
 * bypassed entirely.
 */
export class InvalidationBus {
  private waiters: { rev: number; resolve: (ok: boolean) => void; timer: NodeJS.Timeout }[] = [];
  private connected = false;
  private started = false;
  private reporter: NodeJS.Timeout | null = null;
  private resyncing: Promise<void> | null = null;
  gaps = 0;
  reconnects = 0;
  lastLatencyMs: number | null = null;

  constructor(private readonly options: BusOptions) {
    const { listener } = options;
    listener.on('notification', (channel: string, payload: string) => {
      if (channel === INVALIDATION_CHANNEL) this.apply(payload);
    });
    listener.on('disconnected', () => {
      this.connected = false;
      this.options.cache.enabled = false;
    });
    listener.on('connected', () => {
      // The first connection is start(); only a re-connection can have missed notifications.
      if (this.connected || !this.started) return;
      this.reconnects += 1;
      void this.resync();
    });
  }

  /** Call once the listener is connected: from here on every invalidation is seen. */
  async start(cacheEnabled: boolean): Promise<void> {
    this.wantEnabled = cacheEnabled;
    this.connected = true;
    this.started = true;
    const cache = this.options.cache;
    const { rev, flushFloor } = await this.options.currentRevision();
    cache.appliedUpTo = rev;
    // Shared entries older than the last operator flush are not to be trusted, even by a newcomer.
    if (flushFloor > 0) cache.flush(flushFloor, false);
    // Changes made while no instance was listening never reached L2 as tombstones: if the database
    // is ahead of what any instance reported applying, retire every shared entry read before now.
    const seen = cache.l2 ? await cache.l2.seen() : null;
    if (seen !== null && seen < rev) cache.flush(rev, true);
    else cache.l2?.markSeen(rev);
    cache.enabled = cacheEnabled;
    this.reporter = setInterval(() => cache.l2?.markSeen(cache.appliedUpTo), 1_000);
    this.reporter.unref();
  }

  stop(): void {
    if (this.reporter) clearInterval(this.reporter);
  }

  /** Whether the cache is usable at all right now (bus connected). */
  get healthy(): boolean {
    return this.connected;
  }

  private resync(): Promise<void> {
    if (!this.resyncing) {
      this.resyncing = (async () => {
        const { rev } = await this.options.currentRevision();
        this.options.cache.flush(rev, true);
        this.advance(rev);
        this.connected = true;
        this.options.cache.enabled = this.wantEnabled;
      })()
        .catch(() => {})
        .finally(() => {
          this.resyncing = null;
        });
    }
    return this.resyncing;
  }

  /** The operator's choice (kill switch); the bus may still bypass the cache while disconnected. */
  wantEnabled = true;

  setEnabled(enabled: boolean): void {
    this.wantEnabled = enabled;
    if (!enabled) this.options.cache.enabled = false;
    else if (this.connected) {
      // Whatever was cached before switching off may have missed nothing, but costs nothing to drop.
      this.options.cache.flush(this.options.cache.appliedUpTo, false);
      this.options.cache.enabled = true;
    }
  }

  private apply(payload: string): void {
    let message: { rev: number; key: string };
    try {
      message = JSON.parse(payload) as { rev: number; key: string };
    } catch {
      return;
    }
    const cache = this.options.cache;
    // '*': an operator flush (POST /admin/cache/flush): everything read before `rev` goes.
    if (message.key === '*') cache.flush(message.rev, true);
    else cache.invalidate(message.key, message.rev);
    const expected = cache.appliedUpTo + 1;
    if (message.rev > expected) {
      this.gaps += 1;
      this.options.onGap?.(expected, message.rev);
      cache.flush(message.rev, true);
    }
    if (message.rev > cache.appliedUpTo) this.advance(message.rev);
    cache.l2?.markSeen(cache.appliedUpTo);
  }

  private advance(rev: number): void {
    const cache = this.options.cache;
    if (rev > cache.appliedUpTo) cache.appliedUpTo = rev;
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
   * Resolves true once every invalidation up to `rev` has been applied here, false after
   * `timeoutMs`. The writing instance awaits its own write's revision before answering.
   */
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
