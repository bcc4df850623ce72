/**
 * When each L1 entry's lifetime ends, so expired entries can be removed a few at a time.
 *
 * lru-cache keeps an expired entry until it is read again or pushed out by the byte budget: it is
 * never served (a read of it is a miss), but it holds memory. A cache whose working set is smaller
 * than its budget (256 MiB by default) therefore grows towards the budget with facts no check may
 * use — the rising heap and RSS of a long run at steady load. lru-cache's own remedies do not fit
 * the hot path: `ttlAutopurge` keeps one timer per entry, and `purgeStale()` walks the whole cache
 * in one go (measured: 17 ms for 50,000 entries, 86 ms for 300,000, the event loop blocked
 * throughout). This keeps, per time slot, the keys whose lifetime ends in it (in the slot of their
 * latest store), and `due` hands out at most a bounded number of keys whose slot has passed; the
 * caller deletes those that have really expired.
 */
export class ExpirySchedule {
  /**
   * Slot number (end of lifetime in ms ÷ slotMs, rounded up) → keys listed in it. Each key is
   * listed once: a key stored again with a later end keeps its listing, and when that listing's
   * slot comes the key is moved on to the slot `slotOf` names. Keys such as a user's memberships
   * or a generation are stored again by every load that reads them: listed once per store, a
   * 17-minute soak's schedule held 54,000 listings of a few hundred membership keys.
   */
  private readonly slots = new Map<number, string[]>();
  /** Each scheduled key's slot, from its latest store. */
  private readonly slotOf = new Map<string, number>();

  constructor(private readonly slotMs: number) {}

  /** Keys waiting for their slot. */
  get size(): number {
    return this.slotOf.size;
  }

  /** `key` stored at `now` for `ttlMs` (its latest store decides). */
  add(key: string, now: number, ttlMs: number): void {
    const slot = Math.ceil((now + ttlMs) / this.slotMs);
    const previous = this.slotOf.get(key);
    this.slotOf.set(key, slot);
    // Listed already in an earlier slot: it is moved on from there when that slot comes.
    if (previous !== undefined && previous <= slot) return;
    this.list(key, slot);
  }

  private list(key: string, slot: number): void {
    const keys = this.slots.get(slot);
    if (keys) keys.push(key);
    else this.slots.set(slot, [key]);
  }

  /**
   * Up to `limit` keys whose slot has ended by `now`, removed from the schedule; at most
   * 4 × `limit` listings are looked at per call, so a call's cost is bounded however large a slot
   * is (a start-up warm stores tens of thousands of keys at once).
   */
  due(now: number, limit: number): string[] {
    const out: string[] = [];
    const current = Math.floor(now / this.slotMs);
    let budget = 4 * limit;
    for (const [slot, keys] of this.slots) {
      if (slot > current) continue;
      while (keys.length > 0 && out.length < limit && budget > 0) {
        budget -= 1;
        const key = keys.pop() as string;
        const actual = this.slotOf.get(key);
        if (actual === undefined) continue; // handed out already (a shorter lifetime listed it twice)
        if (actual > current) {
          this.list(key, actual); // stored again since: its end is later
          continue;
        }
        this.slotOf.delete(key);
        out.push(key);
      }
      if (keys.length === 0) this.slots.delete(slot);
      if (out.length >= limit || budget <= 0) break;
    }
    return out;
  }

  /**
   * Removes from `cache` up to `limit` of the keys whose slot has ended by `now` and whose
   * lifetime there has really ended; a key stored again since (its remaining lifetime > 0) is
   * listed again for its new end, and a key `skip` names is left alone. Returns how many went.
   */
  sweep(
    cache: { getRemainingTTL(key: string): number; delete(key: string): boolean },
    now: number,
    limit: number,
    skip?: (key: string) => boolean,
  ): number {
    let removed = 0;
    for (const key of this.due(now, limit)) {
      if (skip?.(key)) continue;
      const left = cache.getRemainingTTL(key);
      if (left > 0) {
        // Its lifetime started a moment after it was listed (a load's result is stored when it
        // settles), or it was stored again: not over yet, so it waits for its own end.
        if (Number.isFinite(left)) this.add(key, now, left);
      } else if (cache.delete(key)) removed += 1;
    }
    return removed;
  }

  /** Forgets everything (the cache was emptied). */
  clear(): void {
    this.slots.clear();
    this.slotOf.clear();
  }
}
