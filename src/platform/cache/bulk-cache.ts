import { LRUCache } from 'lru-cache';

/**
 * The low-priority segment of L1: bulk, immutable data (media rows) in a budget of its own, so
 * that it can never evict authorization facts (SPEC §6, seed 003's cache priorities). Nothing
 * here decides access; entries never change, so they need no invalidation.
 */
export class BulkCache {
  private readonly lru: LRUCache<string, { v: unknown }, () => Promise<unknown>>;
  hits = 0;
  misses = 0;

  constructor(maxBytes: number, ttlMs: number) {
    this.lru = new LRUCache<string, { v: unknown }, () => Promise<unknown>>({
      maxSize: maxBytes,
      sizeCalculation: (entry, key) => 96 + key.length * 2 + JSON.stringify(entry.v ?? null).length * 2,
      ttl: ttlMs,
      fetchMethod: async (_key, _stale, { context }) => ({ v: await context() }),
    });
  }

  /** The cached value, or `load()`'s (single-flight per key). Null results are cached too. */
  async get<V>(key: string, load: () => Promise<V | null>): Promise<V | null> {
    const hit = this.lru.get(key);
    if (hit) {
      this.hits += 1;
      return hit.v as V | null;
    }
    this.misses += 1;
    const entry = await this.lru.fetch(key, { context: load });
    return (entry?.v ?? null) as V | null;
  }

  get bytes(): number {
    return this.lru.calculatedSize;
  }
}
