import { Redis } from 'ioredis';

/**
 * A Redis connection tuned to fail fast: a command while Redis is away errors at once instead of
 * queueing, so callers can fall back (L1 + database, local counters) rather than wait.
 */
export function connectRedis(url: string, onError: (error: Error) => void): Redis {
  const redis = new Redis(url, {
    connectTimeout: 1_000,
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    retryStrategy: (attempt) => Math.min(50 * 2 ** attempt, 2_000),
  });
  let lastReport = 0;
  redis.on('error', (error) => {
    // Reconnect attempts raise one error each; one line a few seconds is enough for an operator.
    const now = Date.now();
    if (now - lastReport > 5_000) {
      lastReport = now;
      onError(error);
    }
  });
  return redis;
}

export async function waitForRedis(redis: Redis, timeoutMs: number): Promise<boolean> {
  if (redis.status === 'ready') return true;
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      redis.off('ready', onReady);
      resolve(false);
    }, timeoutMs);
    const onReady = () => {
      clearTimeout(timer);
      resolve(true);
    };
    redis.once('ready', onReady);
  });
}
