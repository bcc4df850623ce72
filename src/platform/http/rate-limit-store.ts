import { createRequire } from 'node:module';
import type { FastifyRateLimitStoreCtor } from '@fastify/rate-limit';
import type { RedisClient } from '../redis.js';

type Callback = (error: Error | null, result: { current: number; ttl: number } | null) => void;
interface Store {
  incr(key: string, cb: Callback, timeWindow: number, max: number): void;
  read(key: string, cb: Callback, timeWindow: number, max: number): void;
  child(routeOptions: StoreParams): Store;
}
interface StoreParams {
  continueExceeding: boolean;
  exponentialBackoff: boolean;
  cache?: number;
}

const require = createRequire(import.meta.url);
const RedisStore = require('@fastify/rate-limit/store/RedisStore.js') as new (
  continueExceeding: boolean,
  exponentialBackoff: boolean,
  redis: RedisClient,
  nameSpace: string,
) => Store;
const LocalStore = require('@fastify/rate-limit/store/LocalStore.js') as new (
  continueExceeding: boolean,
  exponentialBackoff: boolean,
  cache?: number,
) => Store;

const REMOTE_TIMEOUT_MS = 250;

/**
 * Counters shared through Redis while it answers, kept in-process while it does not: a Redis
 * outage must neither fail logins nor switch brute-force protection off. Each counter is one key
 * and each command touches one key (a one-key script), so it works unchanged on a Redis Cluster.
 */
export function redisWithLocalFallbackStore(
  redis: RedisClient,
  nameSpace: string,
): FastifyRateLimitStoreCtor {
  class FallbackStore implements Store {
    private readonly remote: Store;
    private readonly local: Store;

    constructor(params: StoreParams, remote?: Store, local?: Store) {
      this.remote =
        remote ?? new RedisStore(params.continueExceeding, params.exponentialBackoff, redis, nameSpace);
      this.local = local ?? new LocalStore(params.continueExceeding, params.exponentialBackoff, params.cache);
    }

    incr(key: string, cb: Callback, timeWindow: number, max: number) {
      this.either('incr', key, cb, timeWindow, max);
    }

    read(key: string, cb: Callback, timeWindow: number, max: number) {
      this.either('read', key, cb, timeWindow, max);
    }

    child(routeOptions: StoreParams): Store {
      return new FallbackStore(routeOptions, this.remote.child(routeOptions), this.local.child(routeOptions));
    }

    private either(op: 'incr' | 'read', key: string, cb: Callback, timeWindow: number, max: number) {
      if (redis.status !== 'ready') return this.local[op](key, cb, timeWindow, max);
      // A Redis that hangs is as gone as one that refuses: after a short wait, count locally.
      let answered = false;
      const fallback = () => {
        if (answered) return;
        answered = true;
        this.local[op](key, cb, timeWindow, max);
      };
      const timer = setTimeout(fallback, REMOTE_TIMEOUT_MS);
      this.remote[op](
        key,
        (error, result) => {
          clearTimeout(timer);
          if (error) return fallback();
          if (answered) return;
          answered = true;
          cb(null, result);
        },
        timeWindow,
        max,
      );
    }
  }
  return FallbackStore as unknown as FastifyRateLimitStoreCtor;
}
