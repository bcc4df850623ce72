import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { FastifyBaseLogger } from 'fastify';
import type PgBoss from 'pg-boss';
import type { AppDeps } from './app.js';
import type { Config } from './config.js';
import { GENERATION_CHANNEL, GenerationEventHub } from './modules/generations/events.js';
import { createGenerationWorker, type GenerationWorker } from './modules/generations/worker.js';
import { openMediaStorage } from './modules/media/open-storage.js';
import type { MediaStorage } from './modules/media/storage.js';
import { ModelCatalogue } from './modules/models/catalogue.js';
import { createHttpProvider } from './modules/providers/http.js';
import { createLocalProvider } from './modules/providers/local.js';
import type { Provider } from './modules/providers/types.js';
import { INVALIDATION_CHANNEL, type InvalidationBus } from './platform/cache/bus.js';
import type { FactCache } from './platform/cache/fact-cache.js';
import { openFactCache } from './platform/cache/open.js';
import { provisionDatabase } from './platform/db/database.js';
import { PgListener } from './platform/db/listener.js';
import { Pools, replicaOptions } from './platform/db/pools.js';
import { startQueue } from './platform/queue/boss.js';
import { closeRedis, openRedis, type RedisClient } from './platform/redis.js';
import { resolveSecrets } from './platform/security/secrets.js';

type Log = Pick<FastifyBaseLogger, 'info' | 'warn' | 'debug'>;

/** The queue, notifications, model catalogue, media storage and providers of one process. */
export interface Pipeline {
  cache: FactCache;
  bus: InvalidationBus;
  boss: PgBoss;
  listener: PgListener;
  hub: GenerationEventHub;
  catalogue: ModelCatalogue;
  storage: MediaStorage;
  providers: Record<string, Provider>;
  close(): Promise<void>;
}

export async function openPipeline(
  config: Config,
  databaseUrl: string,
  pools: Pools,
  redis: RedisClient | null,
  log: Log,
): Promise<Pipeline> {
  const boss = await startQueue({
    url: databaseUrl,
    poolMax: config.QUEUE_POOL_MAX,
    // pg-boss's own expiry is the backstop; the worker's timeout (JOB_TIMEOUT_SECONDS) acts first.
    expireInSeconds: config.JOB_TIMEOUT_SECONDS + 60,
    onError: (error) => log.warn({ err: error }, 'queue error'),
  });
  const listener = new PgListener({
    url: config.DATABASE_LISTEN_URL ?? databaseUrl,
    channels: [GENERATION_CHANNEL, INVALIDATION_CHANNEL],
    heartbeatMs: config.INVALIDATION_HEARTBEAT_MS,
    leaseMs: config.INVALIDATION_LEASE_MS,
    onError: (error) => log.warn({ err: error }, 'notification listener lost its connection; reconnecting'),
  });
  // How this process is named where instances report to each other (the kill switch's acknowledgements).
  const instanceId = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  const { cache, bus } = openFactCache(
    config,
    redis,
    listener,
    async () => {
      const { rows } = await pools.pg.authorization.query<{
        rev: number;
        flush_floor: number;
        cache_enabled: boolean;
        cache_flag_rev: number;
      }>('SELECT rev, flush_floor, cache_enabled, cache_flag_rev FROM authz_revision');
      const row = rows[0];
      return {
        rev: row?.rev ?? 0,
        flushFloor: row?.flush_floor ?? 0,
        cacheEnabled: row?.cache_enabled ?? true,
        cacheFlagRev: row?.cache_flag_rev ?? 0,
      };
    },
    (message, details) => log.warn(details ?? {}, message),
    {
      instanceId,
      // Which instance applied which state of the fleet's kill switch: for the operator, best effort.
      acknowledge: (flagRev, cacheEnabled) => {
        pools.pg.write_heavy
          .query(
            `INSERT INTO cache_flag_acks (instance_id, flag_rev, cache_enabled) VALUES ($1, $2, $3)
           ON CONFLICT (instance_id) DO UPDATE
             SET flag_rev = excluded.flag_rev, cache_enabled = excluded.cache_enabled, acknowledged_at = now()`,
            [instanceId, flagRev, cacheEnabled],
          )
          .catch((error: Error) =>
            log.warn({ err: error }, 'could not record the kill switch acknowledgement'),
          );
      },
    },
  );
  await listener.start();
  await bus.start(config.CACHE_ENABLED);
  const hub = new GenerationEventHub(listener);
  const catalogue = new ModelCatalogue(pools.db.authorization);
  await catalogue.load();
  catalogue.startRefreshing(60_000, (error) => log.warn({ err: error }, 'model catalogue refresh failed'));
  const providers: Record<string, Provider> = {
    local: createLocalProvider({ stepDelayMs: config.LOCAL_PROVIDER_STEP_DELAY_MS }),
  };
  const http = config.HTTP_PROVIDER_BASE_URL
    ? createHttpProvider({
        baseUrl: config.HTTP_PROVIDER_BASE_URL,
        apiKey: config.HTTP_PROVIDER_API_KEY ?? '',
        requestTimeoutMs: config.HTTP_PROVIDER_TIMEOUT_MS,
      })
    : null;
  if (http) providers.http = http;
  const storage = openMediaStorage(config);
  log.info(
    config.MEDIA_STORE === 's3'
      ? {
          media_store: 's3',
          bucket: config.S3_BUCKET,
          endpoint: config.S3_ENDPOINT ?? 'AWS S3',
          redirect: config.MEDIA_REDIRECT,
        }
      : { media_store: 'local' },
    'media store',
  );
  return {
    cache,
    bus,
    boss,
    listener,
    hub,
    catalogue,
    storage,
    providers,
    async close() {
      catalogue.stop();
      http?.close();
      bus.stop();
      cache.close();
      await boss.stop({ graceful: true, timeout: 5_000, wait: true });
      await listener.close();
      storage.close?.();
    },
  };
}

export function createWorker(config: Config, pools: Pools, pipeline: Pipeline, log: Log): GenerationWorker {
  return createGenerationWorker(
    {
      db: pools.db.generation,
      boss: pipeline.boss,
      hub: pipeline.hub,
      catalogue: pipeline.catalogue,
      providers: pipeline.providers,
      storage: pipeline.storage,
      log: { info: (o, m) => log.info(o, m), warn: (o, m) => log.warn(o, m) },
    },
    {
      concurrency: config.WORKER_CONCURRENCY,
      jobTimeoutMs: config.JOB_TIMEOUT_SECONDS * 1000,
      heartbeatMs: config.WORKER_HEARTBEAT_MS,
      staleAfterMs: config.WORKER_STALE_AFTER_MS,
      retryLimit: config.JOB_RETRY_LIMIT,
      retryDelaySeconds: config.JOB_RETRY_DELAY_SECONDS,
    },
  );
}

export interface Runtime {
  deps: AppDeps;
  pools: Pools;
  pipeline: Pipeline;
  redis: RedisClient | null;
  databaseUrl: string;
  close(): Promise<void>;
}

/** Everything the app needs from the outside world, opened in order and closed in reverse. */
export async function openRuntime(config: Config, logger: FastifyBaseLogger): Promise<Runtime> {
  const database = await provisionDatabase(config, {
    info: (m) => logger.info(m),
    debug: (m) => logger.debug(m),
  });
  const pools = new Pools({
    url: database.url,
    ...replicaOptions(config),
    onReplicaChange: (state) =>
      state.up
        ? logger.info('read replica reachable again: lists and reports read it')
        : logger.warn(
            { reason: state.error },
            'read replica unavailable: lists and reports read the primary',
          ),
    pools: config.pools,
    slowQueryMs: config.SLOW_QUERY_MS,
    onSlowQuery: (query) => logger.warn(query, 'slow query'),
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    onError: (pool, error) => logger.warn({ pool, err: error }, 'idle database connection failed'),
  });
  const redis = openRedis(config, (error) => logger.warn({ err: error }, 'redis connection problem'));
  const secrets = await resolveSecrets(config, (m) => logger.warn(m));
  const pipeline = await openPipeline(config, database.url, pools, redis, logger);
  return {
    deps: {
      config,
      pools,
      redis,
      secrets,
      logger,
      boss: pipeline.boss,
      hub: pipeline.hub,
      catalogue: pipeline.catalogue,
      storage: pipeline.storage,
      cache: pipeline.cache,
      bus: pipeline.bus,
    },
    pools,
    pipeline,
    redis,
    databaseUrl: database.url,
    async close() {
      await pipeline.close();
      await pools.close();
      if (redis) await closeRedis(redis);
      await database.stop?.();
    },
  };
}
