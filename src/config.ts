import { availableParallelism } from 'node:os';
import { type Static, type TObject, type TProperties, Type } from 'typebox';
import { Value } from 'typebox/value';
import { layersOff } from './platform/http/measurement.js';
import { redisTopology } from './platform/redis-topology.js';

/**
 * Every setting of the service, read from the environment in one place. The schema is the
 * documentation: the README's configuration table lists exactly these names.
 */
const Int = (def: number, min = 0, max = Number.MAX_SAFE_INTEGER) =>
  Type.Integer({ default: def, minimum: min, maximum: max });

export const POOL_NAMES = ['authorization', 'generation', 'write_heavy', 'background', 'analytics'] as const;
export type PoolName = (typeof POOL_NAMES)[number];

/** Seed 000's pool table: short and many for authorization, long and few for analytics. */
const POOL_DEFAULTS: Record<PoolName, { max: number; timeoutMs: number }> = {
  authorization: { max: 20, timeoutMs: 2_000 },
  generation: { max: 10, timeoutMs: 30_000 },
  write_heavy: { max: 10, timeoutMs: 5_000 },
  background: { max: 5, timeoutMs: 60_000 },
  analytics: { max: 3, timeoutMs: 300_000 },
};

const poolProperties: TProperties = {};
for (const name of POOL_NAMES) {
  const upper = name.toUpperCase();
  poolProperties[`DB_POOL_${upper}_MAX`] = Int(POOL_DEFAULTS[name].max, 1, 1000);
  poolProperties[`DB_POOL_${upper}_STATEMENT_TIMEOUT_MS`] = Int(POOL_DEFAULTS[name].timeoutMs, 100);
}

export const ConfigSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('production'), Type.Literal('test')], {
    default: 'development',
  }),
  // Unset: 127.0.0.1 (this machine only) in development and test, 0.0.0.0 in production. A
  // container sets HOST=0.0.0.0, or nothing outside it reaches the service.
  HOST: Type.Optional(Type.String({ minLength: 1 })),
  PORT: Int(3000, 0, 65535),
  // Pending connections the kernel may queue (capped by net.core.somaxconn); Node's default is 511.
  LISTEN_BACKLOG: Int(4096, 1, 65535),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
    { default: 'info' },
  ),
  DATA_DIR: Type.String({ default: './.velro' }),
  DATABASE_URL: Type.Optional(Type.String({ minLength: 1 })),
  // A streaming replica for lists, generation statistics, reports and the choice of what to warm;
  // authorization facts, credentials, writes and requests carrying a consistency token stay on the
  // primary (SPEC §6 rule 4). Unreachable or lagging, it is skipped for the primary.
  DATABASE_REPLICA_URL: Type.Optional(Type.String({ minLength: 1 })),
  // Reads leave a replica whose replay lags more than this for the primary (0: never for lag).
  DATABASE_REPLICA_MAX_LAG_MS: Int(5_000, 0, 3_600_000),
  // How often each process checks the replica's reachability and lag (velro_db_replica_lag_seconds).
  DATABASE_REPLICA_CHECK_INTERVAL_MS: Int(1_000, 50, 60_000),
  // LISTEN needs a session of its own: set this to a direct connection when DATABASE_URL goes
  // through a transaction-mode pooler (PgBouncer). Defaults to DATABASE_URL.
  DATABASE_LISTEN_URL: Type.Optional(Type.String({ minLength: 1 })),
  EMBEDDED_PG_PORT: Int(0, 0, 65535),
  REDIS_URL: Type.Optional(Type.String({ minLength: 1 })),
  // Redis behind Sentinel: the sentinels (host:port, comma-separated) asked for the current master
  // of REDIS_SENTINEL_MASTER; the client follows failovers. Instead of REDIS_URL, never with it.
  REDIS_SENTINELS: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_SENTINEL_MASTER: Type.String({ minLength: 1, default: 'mymaster' }),
  // The sentinels' own password (`requirepass` in sentinel.conf), when they have one.
  REDIS_SENTINEL_PASSWORD: Type.Optional(Type.String({ minLength: 1 })),
  // Redis Cluster: seed nodes (host:port, comma-separated); the client learns the others.
  // Instead of REDIS_URL and REDIS_SENTINELS, never with them.
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({ minLength: 1 })),
  // The data nodes' password with REDIS_SENTINELS or REDIS_CLUSTER_NODES (REDIS_URL carries its own).
  REDIS_PASSWORD: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_KEY_PREFIX: Type.String({ default: 'velro:' }),
  JWT_SECRET: Type.Optional(Type.String({ minLength: 32 })),
  MEDIA_SIGNING_SECRET: Type.Optional(Type.String({ minLength: 32 })),
  ACCESS_TOKEN_TTL_SECONDS: Int(900, 30, 86_400),
  REFRESH_TOKEN_TTL_SECONDS: Int(30 * 86_400, 60),
  // 0 (strict, the default): any use of a rotated refresh token revokes its session family.
  // Opt-in window: a rotated token presented again within this long gets the same successor (many
  // tabs refreshing); it weakens theft detection inside the window. Overlapping refreshes within
  // one process share one rotation whatever this says.
  REFRESH_TOKEN_REUSE_INTERVAL_MS: Int(0, 0, 60_000),
  INITIAL_CREDITS: Int(1000, 0),
  BODY_LIMIT_BYTES: Int(1_048_576, 1024),
  STATEMENT_TIMEOUT_MS: Type.Optional(Int(2_000, 100)),
  DB_CONNECT_TIMEOUT_MS: Int(2_000, 100),
  // Statements at least this slow are logged (pool, statement text without its values, duration);
  // 0 turns the log off. Every statement's time is in velro_db_query_duration_seconds regardless.
  SLOW_QUERY_MS: Int(250, 0, 3_600_000),
  DB_RETRY_AFTER_SECONDS: Int(2, 1, 3600),
  LOGIN_RATE_LIMIT_PER_IP: Int(30, 1),
  LOGIN_RATE_LIMIT_PER_ACCOUNT: Int(10, 1),
  LOGIN_RATE_LIMIT_WINDOW_SECONDS: Int(60, 1),
  REGISTER_RATE_LIMIT_PER_IP: Int(20, 1),
  ARGON2_MEMORY_KIB: Int(19_456, 1024),
  ARGON2_TIME_COST: Int(2, 1, 20),
  TRUST_PROXY: Type.Boolean({ default: false }),
  OPS_TOKEN: Type.Optional(Type.String({ minLength: 16 })),
  SHUTDOWN_GRACE_MS: Int(10_000, 100),
  // Server processes on one port (node:cluster); 0 means one per CPU. Each has its own pools, L1
  // and LISTEN connection: the database sees WEB_CONCURRENCY × (pool sizes + queue pool + 1).
  WEB_CONCURRENCY: Int(1, 0, 256),
  WORKER_ENABLED: Type.Boolean({ default: true }),
  WORKER_CONCURRENCY: Int(2, 1, 64),
  JOB_TIMEOUT_SECONDS: Int(120, 1, 86_400),
  JOB_RETRY_LIMIT: Int(2, 0, 20),
  JOB_RETRY_DELAY_SECONDS: Int(2, 0, 3600),
  WORKER_HEARTBEAT_MS: Int(2_000, 50, 60_000),
  WORKER_STALE_AFTER_MS: Int(10_000, 200, 600_000),
  QUEUE_POOL_MAX: Int(4, 1, 100),
  GENERATION_RATE_LIMIT_PER_MINUTE: Int(10, 1),
  MEMBER_ADDS_BY_EMAIL_PER_HOUR: Int(30, 1),
  // Per user and route class (reads, checks, writes), in process; 0 turns it off.
  USER_RATE_LIMIT_PER_MINUTE: Int(1200, 0),
  USER_RATE_LIMIT_MAX_KEYS: Int(100_000, 100),
  REFERENCE_IMAGE_MAX_BYTES: Int(20 * 1024 * 1024, 1024),
  MEDIA_URL_TTL_SECONDS: Int(3600, 10, 7 * 86_400),
  // Where generated media and reference images live: 'local' (DATA_DIR/media, one machine) or
  // 's3' (a bucket every instance shares; credentials from AWS_ACCESS_KEY_ID and
  // AWS_SECRET_ACCESS_KEY, or the machine's role, through the AWS SDK's default chain).
  MEDIA_STORE: Type.Union([Type.Literal('local'), Type.Literal('s3')], { default: 'local' }),
  // The bucket (required with MEDIA_STORE=s3).
  S3_BUCKET: Type.Optional(Type.String({ minLength: 3, maxLength: 63 })),
  // An S3-compatible endpoint (MinIO, R2, GCS interoperability); unset: AWS S3 in S3_REGION.
  S3_ENDPOINT: Type.Optional(Type.String({ minLength: 1 })),
  S3_REGION: Type.String({ default: 'us-east-1', minLength: 1 }),
  // Path-style URLs (endpoint/bucket/key), which MinIO and most self-hosted stores need.
  S3_FORCE_PATH_STYLE: Type.Boolean({ default: false }),
  // S3 store only: a valid signed media URL answers 302 to a presigned GET of the bucket (or a CDN
  // in front of it) instead of streaming the bytes through Velro. Checks stay Velro's.
  MEDIA_REDIRECT: Type.Boolean({ default: false }),
  // Life of that presigned GET; never longer than what is left of the Velro URL.
  MEDIA_REDIRECT_TTL_SECONDS: Int(60, 1, 7 * 86_400),
  LOCAL_PROVIDER_STEP_DELAY_MS: Int(40, 0, 10_000),
  HTTP_PROVIDER_BASE_URL: Type.Optional(Type.String({ minLength: 1 })),
  HTTP_PROVIDER_API_KEY: Type.Optional(Type.String({ minLength: 1 })),
  HTTP_PROVIDER_TIMEOUT_MS: Int(10_000, 100),
  CACHE_ENABLED: Type.Boolean({ default: true }),
  TRACKING_ENABLED: Type.Boolean({ default: true }),
  // Alertmanager base URLs (comma-separated): the tracker's firing and resolved alerts are posted to
  // each one's v2 API. Unset: alerts are only logged and shown on the dashboard.
  ALERTMANAGER_URL: Type.Optional(Type.String({ minLength: 1 })),
  // How often firing alerts are posted again; each post keeps the alert open four such periods.
  ALERTMANAGER_RESEND_SECONDS: Int(60, 1, 3600),
  // The runbook the alerts link to (this README where you serve it); each rule's name is its anchor.
  ALERT_RUNBOOK_URL: Type.String({ default: 'README.md' }),
  // Adaptive admission control per class of work (checks, reads, writes, auth, hashing): the excess
  // is refused at once with 503 overloaded. Unset: on in production, off otherwise (one developer's
  // bursts, or a test's deliberate races, are not overload).
  ADMISSION_CONTROL: Type.Optional(Type.Boolean()),
  // With admission control: while the event loop's p99 lateness stays above this (ms), a growing
  // share of new requests is refused at once, in every class alike (src/platform/http/loop-shedding.ts).
  // 0 turns that part off.
  ADMISSION_LOOP_DELAY_TARGET_MS: Int(20, 0, 10_000),
  // @fastify/under-pressure's event-loop check (ms; 0: off, the default). Off because it reads a
  // 100 ms sampling interval that holds no sample — one pause of 100 ms or more — as an infinite
  // delay and refuses everything for the next 100 ms: in load sweeps it refused 24 requests at 250
  // users while nothing was overloaded. Sustained lateness is admission control's loop shedding.
  OVERLOAD_MAX_EVENT_LOOP_DELAY_MS: Int(0, 0),
  OVERLOAD_MAX_HEAP_BYTES: Int(0, 0),
  OVERLOAD_RETRY_AFTER_SECONDS: Int(1, 1, 3600),
  OVERLOAD_STARTUP_GRACE_SECONDS: Int(15, 0, 3600),
  CORS_ORIGINS: Type.String({ default: '' }),
  L1_ENABLED: Type.Boolean({ default: true }),
  L1_MAX_BYTES: Int(256 * 1024 * 1024, 64 * 1024),
  L1_BULK_MAX_BYTES: Int(16 * 1024 * 1024, 64 * 1024),
  L1_TTL_SECONDS: Int(600, 1, 86_400),
  L2_TTL_SECONDS: Int(3600, 1, 7 * 86_400),
  // A negative fact ("no such resource": a lookup of an id that does not exist) lives at most this
  // long in either layer. Such ids are mostly looked up once (typos, enumeration, foreign ids), so
  // kept for the layers' full lifetimes they hold memory at the rate of denials × lifetime.
  NEGATIVE_FACT_TTL_SECONDS: Int(60, 1, 86_400),
  // Each stored fact lives between (100 - this) % and 100 % of its lifetime, drawn at random, so
  // facts stored together (the start-up warm, a burst after a flush) do not expire together.
  CACHE_LIFETIME_SPREAD_PERCENT: Int(20, 0, 90),
  L2_COMPRESS_ABOVE_BYTES: Int(1024, 64),
  WRITE_VISIBILITY_WAIT_MS: Int(100, 0, 10_000),
  // SPEC §6 rule 7: cached facts answer only within this long of a heartbeat that went through the
  // database and came back on the LISTEN connection; the bound on staleness without a token.
  INVALIDATION_LEASE_MS: Int(2_000, 100, 60_000),
  INVALIDATION_HEARTBEAT_MS: Int(500, 20, 30_000),
  CACHE_WARM_INTERVAL_SECONDS: Int(300, 0),
  CACHE_WARM_LIMIT: Int(10_000, 0, 1_000_000),
  // Measurement only (npm run bench -- --attribution): per-request layers to switch off.
  MEASURE_WITHOUT: Type.String({ default: '' }),
});

/** Per-pool size and statement timeout: `DB_POOL_<NAME>_MAX`, `DB_POOL_<NAME>_STATEMENT_TIMEOUT_MS`. */
export const PoolEnvSchema: TObject = Type.Object(poolProperties);

type BaseConfig = Static<typeof ConfigSchema>;
export type PoolSettings = { max: number; statementTimeoutMs: number };
export type Config = Omit<BaseConfig, 'HOST'> & { HOST: string; pools: Record<PoolName, PoolSettings> };

const BOOLEAN_TRUE = new Set(['1', 'true', 'yes', 'on']);

/** Environment strings become typed values; unknown variables are ignored, bad ones are fatal. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const base = parseSchema(ConfigSchema, env) as BaseConfig;
  const poolEnv = parseSchema(PoolEnvSchema, env) as Record<string, number>;
  if (base.NODE_ENV === 'production' && (!base.JWT_SECRET || !base.MEDIA_SIGNING_SECRET)) {
    throw new Error(
      'JWT_SECRET and MEDIA_SIGNING_SECRET (32+ characters each) are required when NODE_ENV=production',
    );
  }
  layersOff(base.MEASURE_WITHOUT);
  if (base.MEDIA_STORE === 's3' && !base.S3_BUCKET) {
    throw new Error('MEDIA_STORE=s3 needs S3_BUCKET: the bucket that holds the media');
  }
  if (base.MEDIA_REDIRECT && base.MEDIA_STORE !== 's3') {
    throw new Error('MEDIA_REDIRECT needs MEDIA_STORE=s3: the local store has nothing to redirect to');
  }
  // One way to reach Redis at a time; a conflicting combination stops the start here.
  redisTopology(base);
  if (base.INVALIDATION_HEARTBEAT_MS * 2 > base.INVALIDATION_LEASE_MS) {
    throw new Error('INVALIDATION_LEASE_MS must be at least twice INVALIDATION_HEARTBEAT_MS');
  }
  const pools = {} as Config['pools'];
  for (const name of POOL_NAMES) {
    const upper = name.toUpperCase();
    const timeoutKey = `DB_POOL_${upper}_STATEMENT_TIMEOUT_MS`;
    // STATEMENT_TIMEOUT_MS is the one knob most operators want: it sets the request-path pools
    // unless a pool's own variable says otherwise.
    const useGlobal =
      env[timeoutKey] === undefined && base.STATEMENT_TIMEOUT_MS !== undefined && isRequestPath(name);
    pools[name] = {
      max: poolEnv[`DB_POOL_${upper}_MAX`] as number,
      statementTimeoutMs: useGlobal ? (base.STATEMENT_TIMEOUT_MS as number) : (poolEnv[timeoutKey] as number),
    };
  }
  return { ...base, HOST: base.HOST ?? (base.NODE_ENV === 'production' ? '0.0.0.0' : '127.0.0.1'), pools };
}

/** How many server processes `npm start` runs: WEB_CONCURRENCY, where 0 means one per CPU. */
export function webConcurrency(config: Pick<Config, 'WEB_CONCURRENCY'>): number {
  return config.WEB_CONCURRENCY === 0 ? availableParallelism() : config.WEB_CONCURRENCY;
}

function parseSchema(schema: TObject, env: Record<string, string | undefined>): unknown {
  const raw: Record<string, unknown> = {};
  for (const [key, prop] of Object.entries(schema.properties)) {
    const value = env[key];
    if (value === undefined || value === '') continue;
    const type = (prop as { type?: string }).type;
    if (type === 'integer') raw[key] = /^-?\d+$/.test(value.trim()) ? Number(value) : value;
    else if (type === 'boolean') raw[key] = BOOLEAN_TRUE.has(value.trim().toLowerCase());
    else raw[key] = value;
  }
  const withDefaults = Value.Default(schema, raw);
  const errors = [...Value.Errors(schema, withDefaults)];
  if (errors.length > 0) {
    const lines = errors.map((e) => `  ${e.instancePath.slice(1) || '(root)'}: ${e.message}`);
    throw new Error(`Invalid configuration:\n${lines.join('\n')}`);
  }
  return withDefaults;
}

function isRequestPath(pool: PoolName): boolean {
  return pool === 'authorization' || pool === 'write_heavy';
}
