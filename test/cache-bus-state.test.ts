/**
 * The invalidation bus drives the cache's state through the cache's own methods (on/off, applied
 * revision), and a failed resync after a reconnection is counted and reported, never swallowed:
 * the cache stays bypassed until a retry succeeds. No database: a stand-in listener.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { InvalidationBus } from '../src/platform/cache/bus.js';
import { FactCache } from '../src/platform/cache/fact-cache.js';
import type { PgListener } from '../src/platform/db/listener.js';

class StandInListener extends EventEmitter {
  readonly leaseMs = 60_000;
  silentLosses = 0;
  connected = true;
  async proveLive(): Promise<boolean> {
    this.emit('proof', performance.now(), 0);
    return true;
  }
}

const newCache = () =>
  new FactCache({ l1MaxBytes: 1 << 20, ttlMs: () => 60_000, l2TtlSeconds: () => 60, l2: null });

describe('invalidation bus and cache state', () => {
  it('advances the applied revision (never back) and switches the cache off on a lost connection', async () => {
    const cache = newCache();
    const listener = new StandInListener();
    const bus = new InvalidationBus({
      cache,
      listener: listener as unknown as PgListener,
      currentRevision: async () => ({ rev: 5, flushFloor: 0 }),
    });
    await bus.start(true);
    expect(cache.appliedUpTo).toBe(5);
    expect(cache.canAnswer(5)).toBe(true);
    listener.emit('notification', 'velro_authz', JSON.stringify({ rev: 6, key: 'gen|1:x' }));
    expect(cache.appliedUpTo).toBe(6);
    cache.advanceTo(3);
    expect(cache.appliedUpTo).toBe(6);
    listener.emit('disconnected');
    expect(cache.enabled).toBe(false);
    expect(cache.canAnswer(0)).toBe(false);
    bus.stop();
  });

  it('counts and reports a failed resync, keeps the cache off, and retries', async () => {
    const cache = newCache();
    const listener = new StandInListener();
    const reported: Error[] = [];
    let calls = 0;
    const bus = new InvalidationBus({
      cache,
      listener: listener as unknown as PgListener,
      currentRevision: async () => {
        calls += 1;
        if (calls === 2) throw new Error('database unreachable');
        return { rev: 10 * calls, flushFloor: 0 };
      },
      onResyncFailed: (error) => reported.push(error),
    });
    await bus.start(true);
    listener.emit('disconnected');
    listener.emit('connected');
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(bus.resyncFailures).toBe(1);
    expect(reported.map((e) => e.message)).toEqual(['database unreachable']);
    expect(cache.enabled).toBe(false);
    // The retry (after 250 ms) reads the revision again and switches the cache back on.
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(calls).toBe(3);
    expect(cache.enabled).toBe(true);
    expect(cache.appliedUpTo).toBe(30);
    expect(bus.healthy).toBe(true);
    bus.stop();
  });
});
