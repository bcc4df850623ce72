import { Cluster, Redis } from 'ioredis';
import { type RedisSettings, type RedisTopology, redisTopology } from './redis-topology.js';

/**
 * What the rest of the code holds: one server or a Sentinel-managed master (`Redis`), or a Redis
 * Cluster (`Cluster`). Callers use only what both offer (commands on keys, scripts, `status`,
 * events); the few places that must differ (scanning every node, the L2 key layout, a lost
 * master) ask `instanceof Cluster`.
 */
export type RedisClient = Redis | Cluster;

// Fail fast everywhere: a command while Redis is away errors at once instead of queueing, so
// callers fall back (L1 + database, local counters) rather than wait.
const FAIL_FAST = { connectTimeout: 1_000, maxRetriesPerRequest: 1 } as const;
// Commands issued in the same tick (the concurrent requests' L2 reads, rate-limit scripts) leave
// in one write and their answers are read in one go: measured in `npm run bench -- --only
// velro_l2`, 198 → 168 µs of service CPU per L2-answered check. One server and Sentinel only: in a
// Cluster a pipeline is resent after a failover only when everything in it was a read, so a
// pipeline mixing reads and scripts would fail as a whole where single commands are retried.
const AUTO_PIPELINING = { enableAutoPipelining: true } as const;
const backoff = (attempt: number) => Math.min(50 * 2 ** attempt, 2_000);

/** A single Redis server from its URL, tuned to fail fast (see above). */
export function connectRedis(url: string, onError: (error: Error) => void): Redis {
  const redis = new Redis(url, {
    ...FAIL_FAST,
    ...AUTO_PIPELINING,
    enableOfflineQueue: false,
    retryStrategy: backoff,
  });
  return reportErrors(redis, onError);
}

/**
 * The client for the configured deployment (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES;
 * see redis-topology.ts), or null without Redis: the long-lived client of a running service, which
 * reconnects whatever happens until `closeRedis` closes it. The one place clients are made.
 */
export function openRedis(settings: RedisSettings, onError: (error: Error) => void): RedisClient | null {
  const topology = redisTopology(settings);
  return topology ? keepConnected(connectTopology(topology, onError)) : null;
}

export function connectTopology(topology: RedisTopology, onError: (error: Error) => void): RedisClient {
  switch (topology.mode) {
    case 'single':
      return connectRedis(topology.url, onError);
    case 'sentinel':
      return reportErrors(
        new Redis({
          sentinels: topology.sentinels,
          name: topology.master,
          ...(topology.sentinelPassword ? { sentinelPassword: topology.sentinelPassword } : {}),
          ...(topology.password ? { password: topology.password } : {}),
          ...FAIL_FAST,
          ...AUTO_PIPELINING,
          enableOfflineQueue: false,
          // Each reconnect asks the sentinels again, so after a failover it reaches the new master.
          retryStrategy: backoff,
          sentinelRetryStrategy: backoff,
          sentinelCommandTimeout: 1_000,
          // Subscribes to the sentinels' +switch-master: a promotion moves the connection at once,
          // even when the old master is still reachable (a partition, a manual failover).
          failoverDetector: true,
          // A master demoted under us answers writes with READONLY: reconnect (asking the sentinels).
          reconnectOnError: (error) => error.message.startsWith('READONLY'),
        }),
        onError,
      );
    case 'cluster':
      return reportErrors(
        new Cluster(topology.nodes, {
          // Commands while the cluster is not ready (starting, slots unknown) fail at once.
          enableOfflineQueue: false,
          redisOptions: {
            ...FAIL_FAST,
            ...(topology.password ? { password: topology.password } : {}),
          },
          // Reconnecting to the whole cluster (every seed lost): the same capped backoff.
          clusterRetryStrategy: backoff,
          slotsRefreshTimeout: 1_000,
          // A master lost to a failover: refresh the slots soon and retry on the promoted replica.
          retryDelayOnFailover: 100,
          retryDelayOnClusterDown: 100,
          retryDelayOnTryAgain: 100,
          maxRedirections: 6,
        }),
        onError,
      );
  }
}

/** Clients we are closing on purpose: their `end` is final. */
const closing = new WeakSet<RedisClient>();

/** Closes a client for good (QUIT, or a plain disconnect when Redis does not answer). */
export async function closeRedis(redis: RedisClient): Promise<void> {
  closing.add(redis);
  await redis.quit().catch(() => redis.disconnect());
}

/**
 * A client that ends by itself never comes back: every later command fails at once, so L2, shared
 * rate limits and readiness would stay down until the process restarts. ioredis ends a client when
 * a connection attempt is cut rather than failed (seen before ioredis 6.1 when a Sentinel's
 * +switch-master arrived while the client was already reconnecting to the new master). Whatever
 * the cause, an `end` we did not ask for starts a new connection after the usual backoff.
 */
function keepConnected<T extends RedisClient>(redis: T): T {
  let attempt = 0;
  redis.on('ready', () => {
    attempt = 0;
  });
  redis.on('end', () => {
    if (closing.has(redis)) return;
    const timer = setTimeout(() => {
      if (closing.has(redis) || redis.status !== 'end') return;
      redis.connect().catch(() => {});
    }, backoff(++attempt));
    timer.unref();
  });
  return redis;
}

function reportErrors<T extends RedisClient>(redis: T, onError: (error: Error) => void): T {
  let lastReport = 0;
  const report = (error: Error) => {
    // Reconnect attempts raise one error each; one line a few seconds is enough for an operator.
    const now = Date.now();
    if (now - lastReport > 5_000) {
      lastReport = now;
      onError(error);
    }
  };
  redis.on('error', report);
  if (redis instanceof Cluster) redis.on('node error', report);
  return redis;
}

export async function waitForRedis(redis: RedisClient, timeoutMs: number): Promise<boolean> {
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
