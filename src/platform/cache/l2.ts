import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { Cluster, type Redis } from 'ioredis';
import CircuitBreaker from 'opossum';
import type { RedisClient } from '../redis.js';
import type { Stamped } from './stamped.js';

/**
 * Values are stored as `<rev>|<flag>|<payload>`: flag `v` JSON, `z` deflated JSON, `t` a tombstone
 * (the key was invalidated at <rev>). Writes go through a script that refuses to put an older
 * stamp over a newer one, or anything older than the shared floor, so a slow writer holding a
 * stale read can never undo an invalidation in L2 either.
 */
const WRITE = `
local cur = redis.call('GET', KEYS[1])
local stamp = tonumber(ARGV[1])
if cur then
  local r = tonumber(string.match(cur, '^(%d+)|'))
  if r and r > stamp then return 0 end
  -- a value read at a revision is as fresh as a tombstone of that revision; not the reverse
  if r and r == stamp and ARGV[4] == '0' then return 0 end
end
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
if stamp < floor then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
`;

const RAISE_FLOOR = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
`;

export interface L2Options {
  prefix: string;
  compressAboveBytes: number;
  /** How long a tombstone outlives the invalidation (longer than any load can take). */
  tombstoneTtlSeconds?: number;
  /** Redis slower than this counts as down for the breaker. */
  timeoutMs?: number;
  onStateChange?: (state: 'open' | 'half_open' | 'closed') => void;
}

export interface L2Store {
  readonly available: boolean;
  read(key: string): Promise<Stamped | undefined | 'error'>;
  /**
   * Several keys in one round trip (one MGET with their floor; in a Cluster one per hash tag, in
   * parallel), in the order given; 'error' when Redis did not answer.
   */
  readMany(keys: readonly string[]): Promise<(Stamped | undefined)[] | 'error'>;
  write(key: string, entry: Stamped, ttlSeconds: number): void;
  tombstone(key: string, rev: number): void;
  raiseFloor(rev: number): void;
  /** Records that invalidations up to `rev` reached L2 (kept as the maximum ever reported). */
  markSeen(rev: number): void;
  /** The highest revision any instance reported; null when unknown (Redis away, or never set). */
  seen(): Promise<number | null>;
  flushAll(): Promise<number>;
  stats(): {
    breaker: string;
    /** Read round trips (one per `read` or `readMany`, whatever the number of keys). */
    reads: number;
    writes: number;
    write_errors: number;
    compressed_writes: number;
  };
  close(): void;
}

/**
 * Where the keys live, and why. An entry is always read and written together with the floor it is
 * checked against: MGET of both on read, one script over both on write. Those are multi-key
 * commands, which a Redis Cluster runs only when every key hashes to one slot.
 *
 * - One server or Sentinel (one master holds everything): the historical layout, `<prefix>l2:<key>`
 *   and one floor `<prefix>l2:floor`.
 * - Cluster: a single floor key would force the whole L2 into its slot, i.e. onto one master. So
 *   entries are spread over CLUSTER_SHARDS hash tags, `<prefix>l2:{s<n>}:<key>` (n from a hash of
 *   the fact key), and each tag has its own copy of the floor, `<prefix>l2:{s<n>}floor`: an entry
 *   and its floor share a slot, so reads and writes stay single-slot (and atomic). Raising the
 *   floor raises every copy, one single-key script each (rare: a flush, a lost tombstone); if any
 *   copy fails the raise counts as lost and is repaired when Redis answers, as on one server.
 *
 * The other keys are used alone (`<prefix>l2:seen`, rate-limit counters: one key per script), so
 * they need no tag. The flush scans every master (SCAN sees one node) and deletes key by key.
 */
const CLUSTER_SHARDS = 16;

interface Layout {
  entry(key: string): { key: string; floor: string };
  floors: readonly string[];
}

function layoutFor(redis: RedisClient, prefix: string): Layout {
  if (!(redis instanceof Cluster)) {
    const floor = `${prefix}l2:floor`;
    return { entry: (key) => ({ key: `${prefix}l2:${key}`, floor }), floors: [floor] };
  }
  const tags = Array.from({ length: CLUSTER_SHARDS }, (_, n) => `${prefix}l2:{s${n}}`);
  const floors = tags.map((tag) => `${tag}floor`);
  return {
    entry(key) {
      // FNV-1a over the UTF-16 code units: cheap, stable across processes, spreads well.
      let hash = 0x811c9dc5;
      for (let i = 0; i < key.length; i++) hash = Math.imul(hash ^ key.charCodeAt(i), 0x01000193);
      const n = (hash >>> 0) % CLUSTER_SHARDS;
      return { key: `${tags[n]}:${key}`, floor: floors[n] as string };
    },
    floors,
  };
}

type RedisWithScripts = RedisClient & {
  velroWrite(
    key: string,
    floorKey: string,
    stamp: string,
    value: Buffer,
    ttl: string,
    replaceEqual: string,
  ): Promise<number>;
  velroRaiseFloor(floorKey: string, rev: string): Promise<number>;
};

export function createL2(redis: RedisClient, options: L2Options): L2Store {
  const scripted = redis as RedisWithScripts;
  if (!('velroWrite' in scripted)) {
    redis.defineCommand('velroWrite', { numberOfKeys: 2, lua: WRITE });
    redis.defineCommand('velroRaiseFloor', { numberOfKeys: 1, lua: RAISE_FLOOR });
  }
  const layout = layoutFor(redis, options.prefix);
  const seenKey = `${options.prefix}l2:seen`;
  const reserved = new Set([...layout.floors, seenKey]);
  const raiseFloors = (rev: number) =>
    Promise.all(layout.floors.map((floor) => scripted.velroRaiseFloor(floor, String(rev))));
  const counters = { reads: 0, writes: 0, writeErrors: 0, compressed: 0 };
  const breaker = new CircuitBreaker(<T>(op: () => Promise<T>) => op(), {
    timeout: options.timeoutMs ?? 250,
    errorThresholdPercentage: 50,
    volumeThreshold: 5,
    resetTimeout: 2_000,
    rollingCountTimeout: 5_000,
    // Both re-sort every latency of the window twice a second: measurable on every L2 read.
    rollingPercentilesEnabled: false,
    enableSnapshots: false,
  });
  breaker.on('open', () => options.onStateChange?.('open'));
  breaker.on('halfOpen', () => options.onStateChange?.('half_open'));
  breaker.on('close', () => options.onStateChange?.('closed'));
  const run = <T>(op: () => Promise<T>) => breaker.fire(op) as Promise<T>;
  const background = (op: () => Promise<unknown>, onLost?: () => void) => {
    if (redis.status !== 'ready' || breaker.opened) {
      onLost?.();
      return;
    }
    run(op).catch(() => {
      counters.writeErrors += 1;
      onLost?.();
    });
  };

  // Tombstones that could not be written (Redis away) leave older shared entries readable when it
  // returns. Until the floor is raised past them, `seen` is reported below the oldest lost one, so
  // an instance starting meanwhile distrusts L2; and the floor is raised as soon as Redis answers.
  let lostFrom = Number.POSITIVE_INFINITY;
  let lostTo = 0;
  const lose = (rev: number) => {
    if (rev < lostFrom) lostFrom = rev;
    if (rev > lostTo) lostTo = rev;
  };
  const repair = () => {
    if (lostTo === 0 || redis.status !== 'ready') return;
    const floor = lostTo;
    run(() => raiseFloors(floor)).then(
      () => {
        if (lostTo === floor) {
          lostFrom = Number.POSITIVE_INFINITY;
          lostTo = 0;
        }
      },
      () => {},
    );
  };
  redis.on('ready', repair);
  breaker.on('close', repair);

  // Replication is asynchronous: a promoted replica may lack the last writes its master had
  // acknowledged. On one server or Sentinel the replica holds a prefix of the master's writes in
  // order, so a `seen` mark that survived comes with every tombstone written before it (and an
  // instance starting later flushes when `seen` is behind the database). In a Cluster, `seen` and
  // the tombstones live on different masters: one master lost can drop tombstones while the `seen`
  // of another survives. So when a master leaves the client's pool, everything this process wrote
  // counts as lost: the floors are raised past it as soon as every slot answers (retried with
  // each `markSeen`), and `seen` stays below it meanwhile.
  let highest = 0;
  const wrote = (rev: number) => {
    if (rev > highest) highest = rev;
  };
  if (redis instanceof Cluster) {
    redis.on('-node', (node: Redis) => {
      if (node.options.readOnly || highest === 0) return;
      lose(highest);
      repair();
    });
  }

  function encode(entry: Stamped): Buffer {
    if (entry.v === null) return Buffer.from(`${entry.r}|v|null`);
    const json = JSON.stringify(entry.v);
    if (json.length > options.compressAboveBytes) {
      counters.compressed += 1;
      return Buffer.concat([Buffer.from(`${entry.r}|z|`), deflateRawSync(Buffer.from(json))]);
    }
    return Buffer.from(`${entry.r}|v|${json}`);
  }

  function decode(raw: Buffer): Stamped | undefined {
    const first = raw.indexOf(0x7c); // '|'
    const rev = Number(raw.subarray(0, first).toString());
    const flag = String.fromCharCode(raw[first + 1] ?? 0);
    const body = raw.subarray(first + 3);
    if (flag === 't') return undefined;
    const json = flag === 'z' ? inflateRawSync(body).toString() : body.toString();
    return { v: JSON.parse(json), r: rev };
  }

  /** An entry as read with its floor: undefined when absent, a tombstone, or older than the floor. */
  function entryOf(raw: Buffer | null, floor: Buffer | null): Stamped | undefined {
    if (!raw) return undefined;
    const entry = decode(raw);
    if (!entry) return undefined;
    if (floor && entry.r < Number(floor.toString())) return undefined;
    return entry;
  }

  return {
    get available() {
      return redis.status === 'ready' && !breaker.opened;
    },
    async read(key) {
      if (redis.status !== 'ready' || breaker.opened) return 'error';
      counters.reads += 1;
      try {
        const at = layout.entry(key);
        const [raw, floor] = await run(() => redis.mgetBuffer(at.key, at.floor));
        return entryOf(raw ?? null, floor ?? null);
      } catch {
        return 'error';
      }
    },
    async readMany(keys) {
      if (redis.status !== 'ready' || breaker.opened) return 'error';
      counters.reads += 1;
      try {
        // Keys grouped by the floor they are checked against: one group on one server or Sentinel,
        // one per hash tag in a Cluster (an entry and its floor share a slot).
        const groups = new Map<string, number[]>();
        const names = keys.map((key, i) => {
          const at = layout.entry(key);
          const group = groups.get(at.floor);
          if (group) group.push(i);
          else groups.set(at.floor, [i]);
          return at.key;
        });
        const found: (Stamped | undefined)[] = new Array(keys.length);
        await run(() =>
          Promise.all(
            [...groups].map(async ([floorKey, indexes]) => {
              const raws = await redis.mgetBuffer(...indexes.map((i) => names[i] as string), floorKey);
              const floor = raws[indexes.length] ?? null;
              for (const [n, i] of indexes.entries()) found[i] = entryOf(raws[n] ?? null, floor);
            }),
          ),
        );
        return found;
      } catch {
        return 'error';
      }
    },
    write(key, entry, ttlSeconds) {
      counters.writes += 1;
      const at = layout.entry(key);
      background(() =>
        scripted.velroWrite(at.key, at.floor, String(entry.r), encode(entry), String(ttlSeconds), '1'),
      );
    },
    tombstone(key, rev) {
      wrote(rev);
      const ttl = String(options.tombstoneTtlSeconds ?? 900);
      const at = layout.entry(key);
      background(
        () => scripted.velroWrite(at.key, at.floor, String(rev), Buffer.from(`${rev}|t|`), ttl, '0'),
        () => lose(rev),
      );
    },
    raiseFloor(rev) {
      wrote(rev);
      background(
        () => raiseFloors(rev),
        () => lose(rev),
      );
    },
    markSeen(rev) {
      wrote(rev);
      repair();
      const reported = Number.isFinite(lostFrom) ? Math.min(rev, lostFrom - 1) : rev;
      background(() => scripted.velroRaiseFloor(seenKey, String(reported)));
    },
    async seen() {
      if (redis.status !== 'ready' || breaker.opened) return null;
      try {
        const value = await run(() => redis.get(seenKey));
        return value === null ? null : Number(value);
      } catch {
        return null;
      }
    },
    async flushAll() {
      let removed = 0;
      // SCAN walks one server: in a Cluster, every master in turn. Keys are deleted one per DEL
      // (in one round trip per batch), so keys of different slots never share a command.
      const nodes: Redis[] = redis instanceof Cluster ? redis.nodes('master') : [redis];
      for (const node of nodes) {
        let cursor = '0';
        do {
          const [next, keys] = await node.scan(cursor, 'MATCH', `${options.prefix}l2:*`, 'COUNT', 1000);
          cursor = next;
          const entries = keys.filter((key) => !reserved.has(key));
          if (entries.length === 0) continue;
          const batch = node.pipeline();
          for (const key of entries) batch.del(key);
          for (const [error, count] of (await batch.exec()) ?? []) {
            if (error) throw error;
            removed += count as number;
          }
        } while (cursor !== '0');
      }
      return removed;
    },
    stats() {
      return {
        breaker: breaker.opened ? 'open' : breaker.halfOpen ? 'half_open' : 'closed',
        reads: counters.reads,
        writes: counters.writes,
        write_errors: counters.writeErrors,
        compressed_writes: counters.compressed,
      };
    },
    close() {
      breaker.shutdown();
    },
  };
}
