import type { Config } from '../../config.js';
import type { PgListener } from '../db/listener.js';
import type { RedisClient } from '../redis.js';
import { type FleetState, InvalidationBus } from './bus.js';
import { FactCache } from './fact-cache.js';
import { kindOf } from './keys.js';
import { createL2 } from './l2.js';

const HOUR = 3600;

/**
 * How long a fact lives in a layer whose lifetime is `layerSeconds`. Service keys keep the seeds'
 * lifetimes (a valid key 24 h, an unknown one 1 h). Any other negative fact (null: the resource
 * does not exist) lives at most `NEGATIVE_FACT_TTL_SECONDS`: ids that do not exist are mostly asked
 * once (a 400-user soak cached 46,000 random generation ids, each kept 10 minutes in L1 and an hour
 * in Redis), and a shorter life can only make an answer fresher, never staler.
 */
export function factLifetimeSeconds(
  config: Pick<Config, 'NEGATIVE_FACT_TTL_SECONDS'>,
  key: string,
  value: unknown,
  layerSeconds: number,
): number {
  if (kindOf(key) === 'svckey') return value === null ? HOUR : 24 * HOUR;
  return value === null ? Math.min(layerSeconds, config.NEGATIVE_FACT_TTL_SECONDS) : layerSeconds;
}

/**
 * Each stored entry's lifetime in L1 (ms) and L2 (s): `factLifetimeSeconds` shortened by a random
 * share of up to CACHE_LIFETIME_SPREAD_PERCENT. Facts stored in the same second — the start-up
 * warm's 10,000+, the loads after a flush — would otherwise all expire in the same second, 10
 * minutes later, and be asked of L2 and the database at once (the soaks' 600 s and 1,200 s marks
 * were among their worst). Never longer than configured, so never staler.
 */
export function factLifetimes(
  config: Pick<
    Config,
    'NEGATIVE_FACT_TTL_SECONDS' | 'L1_TTL_SECONDS' | 'L2_TTL_SECONDS' | 'CACHE_LIFETIME_SPREAD_PERCENT'
  >,
  random: () => number = Math.random,
) {
  const spread = config.CACHE_LIFETIME_SPREAD_PERCENT / 100;
  const spreadOut = (seconds: number) => seconds * (1 - spread * random());
  return {
    ttlMs: (key: string, value: unknown) =>
      Math.max(
        1,
        Math.floor(spreadOut(factLifetimeSeconds(config, key, value, config.L1_TTL_SECONDS) * 1000)),
      ),
    l2TtlSeconds: (key: string, value: unknown) =>
      Math.max(1, Math.floor(spreadOut(factLifetimeSeconds(config, key, value, config.L2_TTL_SECONDS)))),
  };
}

export interface CacheParts {
  cache: FactCache;
  bus: InvalidationBus;
}

export function openFactCache(
  config: Config,
  redis: RedisClient | null,
  listener: PgListener,
  currentRevision: () => Promise<FleetState>,
  onEvent: (message: string, details?: object) => void,
  fleet?: { instanceId: string; acknowledge: (flagRev: number, cacheEnabled: boolean) => void },
): CacheParts {
  const l2 = redis
    ? createL2(redis, {
        prefix: config.REDIS_KEY_PREFIX,
        compressAboveBytes: config.L2_COMPRESS_ABOVE_BYTES,
        onStateChange: (state) => onEvent(`L2 (Redis) circuit ${state}`),
      })
    : null;
  const cache = new FactCache({
    l1MaxBytes: config.L1_MAX_BYTES,
    ...factLifetimes(config),
    l2,
    sweepEveryMs: 1_000,
  });
  cache.l1Enabled = config.L1_ENABLED;
  const bus = new InvalidationBus({
    cache,
    listener,
    currentRevision,
    ...(fleet ? { instanceId: fleet.instanceId, acknowledge: fleet.acknowledge } : {}),
    onGap: (expected, got) => onEvent('invalidation gap: cache flushed', { expected, got }),
    onResyncFailed: (error) =>
      onEvent('cache resync after a reconnection failed; retrying, cache bypassed', { err: error }),
  });
  return { cache, bus };
}
