import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import pg from 'pg';
import { inject } from 'vitest';
import { buildApp } from '../../src/app.js';
import { type Config, loadConfig } from '../../src/config.js';
import type { GenerationWorker } from '../../src/modules/generations/worker.js';
import { Pools, replicaOptions } from '../../src/platform/db/pools.js';
import type { AlertRule } from '../../src/platform/observability/alert-rules.js';
import { closeRedis, openRedis, type RedisClient, waitForRedis } from '../../src/platform/redis.js';
import { createWorker, openPipeline, type Pipeline } from '../../src/runtime.js';
import { withDatabase } from './global-setup.js';

export interface TestDatabase {
  url: string;
  name: string;
  drop(): Promise<void>;
}

/** A fresh database cloned from the migrated template: this file's rows and nobody else's. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = inject('pgAdminUrl');
  const template = inject('templateDatabase');
  const name = `${template}_f${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    // Two files cloning at the same instant can collide on the template's lock; try again.
    for (let attempt = 0; ; attempt++) {
      try {
        await admin.query(`CREATE DATABASE ${name} TEMPLATE ${template}`);
        break;
      } catch (error) {
        if (attempt >= 20 || !String((error as Error).message).includes('is being accessed by other users'))
          throw error;
        await new Promise((r) => setTimeout(r, 50 + attempt * 25));
      }
    }
  } finally {
    await admin.end();
  }
  return {
    url: withDatabase(adminUrl, name),
    name,
    async drop() {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).finally(() => client.end());
    },
  };
}

/** Settings for tests: cheap password hashing, small pools, fixed secrets. */
export const TEST_ENV: Record<string, string> = {
  NODE_ENV: 'test',
  LOG_LEVEL: 'silent',
  JWT_SECRET: 'test-jwt-secret-0123456789abcdef0123456789',
  MEDIA_SIGNING_SECRET: 'test-media-secret-0123456789abcdef012345678',
  ARGON2_MEMORY_KIB: '1024',
  ARGON2_TIME_COST: '1',
  DB_POOL_AUTHORIZATION_MAX: '4',
  DB_POOL_GENERATION_MAX: '2',
  DB_POOL_WRITE_HEAVY_MAX: '4',
  DB_POOL_BACKGROUND_MAX: '2',
  DB_POOL_ANALYTICS_MAX: '1',
  LOGIN_RATE_LIMIT_PER_IP: '1000',
  LOGIN_RATE_LIMIT_PER_ACCOUNT: '1000',
  REGISTER_RATE_LIMIT_PER_IP: '1000',
  GENERATION_RATE_LIMIT_PER_MINUTE: '1000',
  MEMBER_ADDS_BY_EMAIL_PER_HOUR: '1000',
  USER_RATE_LIMIT_PER_MINUTE: '1000000',
  LOCAL_PROVIDER_STEP_DELAY_MS: '0',
  WORKER_CONCURRENCY: '2',
  CACHE_WARM_INTERVAL_SECONDS: '0',
  // Test files share two cores: load shedding is tested on its own, with its own threshold.
  OVERLOAD_MAX_EVENT_LOOP_DELAY_MS: '0',
  OVERLOAD_STARTUP_GRACE_SECONDS: '0',
};

export interface TestApp {
  app: FastifyInstance;
  config: Config;
  pools: Pools;
  redis: RedisClient | null;
  pipeline: Pipeline;
  /** Present when started with `worker: true`. */
  worker: GenerationWorker | null;
  close(): Promise<void>;
}

export interface TestAppOptions {
  databaseUrl: string;
  env?: Record<string, string>;
  /** Connect to the run's Redis (REDIS_URL) under a key prefix of this app's own. */
  redis?: boolean | { prefix: string };
  now?: () => number;
  /** Run a generation worker in this process. */
  worker?: boolean;
  /** Share media storage between apps (defaults to a fresh temporary folder). */
  dataDir?: string;
  /** Alert rules for the tracker instead of the shipped ones (quick rules for delivery tests). */
  alertRules?: AlertRule[];
}

/** The production app (`buildApp`), on a real database, ready for `inject` or `listen`. */
export async function startTestApp(options: TestAppOptions): Promise<TestApp> {
  const redisUrl = inject('redisUrl');
  const prefix =
    typeof options.redis === 'object'
      ? options.redis.prefix
      : `velro-test:${randomBytes(4).toString('hex')}:`;
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'velro-test-data-')));
  const config = loadConfig({
    ...TEST_ENV,
    DATA_DIR: dataDir,
    ...(options.redis && redisUrl ? { REDIS_URL: redisUrl } : {}),
    ...options.env,
    DATABASE_URL: options.databaseUrl,
    REDIS_KEY_PREFIX: prefix,
  });
  const pools = new Pools({
    url: options.databaseUrl,
    ...replicaOptions(config),
    pools: config.pools,
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    onError: () => {},
  });
  // REDIS_URL, or REDIS_SENTINELS / REDIS_CLUSTER_NODES from `env`: the production factory.
  const redis = openRedis(config, () => {});
  if (redis && !(await waitForRedis(redis, 10_000))) {
    await closeRedis(redis);
    throw new Error(
      `Redis (${config.REDIS_URL ?? config.REDIS_SENTINELS ?? config.REDIS_CLUSTER_NODES}) did not answer`,
    );
  }
  const quiet = { info: () => {}, warn: () => {}, debug: () => {} };
  const pipeline = await openPipeline(config, options.databaseUrl, pools, redis, quiet);
  const worker = options.worker ? createWorker(config, pools, pipeline, quiet) : null;
  const app = await buildApp({
    config,
    pools,
    redis,
    boss: pipeline.boss,
    hub: pipeline.hub,
    catalogue: pipeline.catalogue,
    storage: pipeline.storage,
    cache: pipeline.cache,
    bus: pipeline.bus,
    ...(worker ? { onGenerationQueued: () => worker.nudge() } : {}),
    secrets: {
      jwtSecret: new TextEncoder().encode(config.JWT_SECRET),
      mediaSigningSecret: new TextEncoder().encode(config.MEDIA_SIGNING_SECRET),
    },
    ...(options.now ? { now: options.now } : {}),
    ...(options.alertRules ? { alertRules: options.alertRules } : {}),
  });
  await app.ready();
  await worker?.start();
  return {
    app,
    config,
    pools,
    redis,
    pipeline,
    worker,
    async close() {
      await worker?.stop();
      await app.close();
      await pipeline.close();
      await pools.close();
      if (!options.dataDir) await rm(dataDir, { recursive: true, force: true });
      if (redis) await closeRedis(redis);
    },
  };
}

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

export interface SignedUp {
  id: string;
  email: string;
  password: string;
  accessToken: string;
  refreshToken: string;
}

let userCounter = 0;

export async function signUp(app: FastifyInstance, overrides: { email?: string; password?: string } = {}) {
  userCounter += 1;
  const email = overrides.email ?? `user${userCounter}-${randomBytes(3).toString('hex')}@example.com`;
  const password = overrides.password ?? 'correct horse battery';
  const res = await app.inject({
    method: 'POST',
    url: '/api/v1/auth/register',
    payload: { email, password },
  });
  if (res.statusCode !== 201) throw new Error(`sign-up failed: ${res.statusCode} ${res.body}`);
  const body = res.json();
  return {
    id: body.user.id as string,
    email,
    password,
    accessToken: body.access_token as string,
    refreshToken: body.refresh_token as string,
  } satisfies SignedUp;
}

/** The error envelope of SPEC §4, checked on every error answer a test looks at. */
export function errorOf(res: LightMyRequestResponse): {
  code: string;
  message: string;
  request_id: string;
  details?: unknown;
} {
  const body = res.json();
  if (!body?.error || typeof body.error.code !== 'string' || typeof body.error.request_id !== 'string') {
    throw new Error(`not an error envelope: ${res.statusCode} ${res.body}`);
  }
  if (res.headers['x-request-id'] !== body.error.request_id)
    throw new Error('request_id differs from X-Request-Id');
  return body.error;
}

/**
 * After changing facts with raw SQL (outside the API), wait until the app has applied the
 * invalidations the database announced, as any instance does within the propagation bound.
 */
export async function settle(t: TestApp): Promise<void> {
  const { rows } = await t.pools.pg.authorization.query<{ rev: number }>('SELECT rev FROM authz_revision');
  const applied = await t.pipeline.bus.waitFor(rows[0]?.rev ?? 0, 5_000);
  if (!applied) throw new Error('invalidations were not applied within 5 s');
}
