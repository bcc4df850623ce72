import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { serviceUrls, withoutPassword } from '../banner.js';
import { type Config, loadConfig } from '../config.js';
import { embeddedPostgresVersion, findRunningEmbedded } from '../platform/db/embedded.js';
import { MIGRATIONS_DIR } from '../platform/db/migrate.js';
import { GENERATION_QUEUE } from '../platform/queue/boss.js';
import { connectTopology, waitForRedis } from '../platform/redis.js';
import { describeRedisTopology, type RedisTopology, redisTopology } from '../platform/redis-topology.js';
import { CliError } from './output.js';

export interface StatusReport {
  service: {
    version: string;
    node_env: string;
    api_url: string;
    docs_url: string;
    dashboard_url: string;
    /** Whether something answers GET /health at that address. */
    answering: boolean;
  };
  database: {
    kind: 'embedded' | 'external';
    /** The connection string in use, password included (as `supabase status` prints it). */
    url: string | null;
    running: boolean;
    data_dir?: string;
    pid?: number;
    port?: number;
    error?: string;
  };
  /** `url`: the server, or for Sentinel and Cluster the sentinels or seed nodes (never a password). */
  redis: { configured: boolean; mode?: RedisTopology['mode']; url?: string; answering?: boolean };
  versions: { velro: string; node: string; postgresql: string | null };
  migrations: { applied: number; pending: string[]; latest: string | null } | null;
  queue: { waiting: number; running: number } | null;
}

const PROBE_TIMEOUT_MS = 2_000;

/** Looks, and changes nothing: no migration, no database started or stopped. */
export async function collectStatus(): Promise<StatusReport> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error));
  }
  const urls = serviceUrls(config);
  const [answering, database, redis, version] = await Promise.all([
    fetch(`${urls.base}/health`, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) })
      .then((res) => res.ok)
      .catch(() => false),
    locateDatabase(config),
    probeRedis(redisTopology(config)),
    velroVersion(),
  ]);
  let facts: Awaited<ReturnType<typeof databaseFacts>> | null = null;
  let unreachable: string | undefined;
  if (database.url) {
    try {
      facts = await databaseFacts(database.url);
    } catch (error) {
      unreachable = error instanceof Error ? error.message : String(error);
    }
  }
  return {
    service: {
      version,
      node_env: config.NODE_ENV,
      api_url: urls.api,
      docs_url: urls.docs,
      dashboard_url: urls.dashboard,
      answering,
    },
    database: { ...database, ...(unreachable ? { running: false, error: unreachable } : {}) },
    redis,
    versions: {
      velro: version,
      node: process.version,
      postgresql:
        facts?.postgresql ??
        (database.kind === 'embedded' ? await embeddedPostgresVersion().catch(() => null) : null),
    },
    migrations: facts?.migrations ?? null,
    queue: facts?.queue ?? null,
  };
}

async function locateDatabase(config: Config): Promise<StatusReport['database']> {
  if (config.DATABASE_URL) return { kind: 'external', url: config.DATABASE_URL, running: true };
  const dir = join(config.DATA_DIR, 'pg');
  const running = await findRunningEmbedded(dir);
  if (!running) return { kind: 'embedded', url: null, running: false, data_dir: dir };
  return {
    kind: 'embedded',
    url: running.url('velro'),
    running: true,
    data_dir: dir,
    pid: running.record.pid,
    port: running.record.port,
  };
}

async function databaseFacts(url: string) {
  const client = new pg.Client({
    connectionString: url,
    application_name: 'velro_status',
    connectionTimeoutMillis: PROBE_TIMEOUT_MS,
  });
  await client.connect();
  try {
    const { rows: server } = await client.query<{ server_version: string }>('SHOW server_version');
    const files = (await readdir(MIGRATIONS_DIR)).filter((f) => /^\d+_[\w-]+\.sql$/.test(f)).sort();
    const applied = await client
      .query<{ version: string }>('SELECT version FROM schema_migrations ORDER BY version')
      .then((r) => r.rows.map((row) => row.version))
      .catch(() => [] as string[]);
    const done = new Set(applied);
    const queue = await client
      .query<{ waiting: number; running: number }>(
        `SELECT count(*) FILTER (WHERE state IN ('created', 'retry'))::int AS waiting,
                count(*) FILTER (WHERE state = 'active')::int AS running
           FROM pgboss.job WHERE name = $1`,
        [GENERATION_QUEUE],
      )
      .then((r) => r.rows[0] ?? { waiting: 0, running: 0 })
      // No queue schema yet: the service has never started on this database.
      .catch(() => null);
    return {
      postgresql: server[0]?.server_version ?? 'unknown',
      migrations: {
        applied: applied.length,
        pending: files.filter((f) => !done.has(f)),
        latest: applied.at(-1) ?? null,
      },
      queue,
    };
  } finally {
    await client.end();
  }
}

async function probeRedis(topology: RedisTopology | null): Promise<StatusReport['redis']> {
  if (!topology) return { configured: false };
  if (topology.mode !== 'single') {
    // Sentinel or Cluster: the client asks the sentinels (or learns the slots) first; ready means
    // it reached the current master (or every slot's), which is what "answering" should say.
    const client = connectTopology(topology, () => undefined);
    const shown = { configured: true, mode: topology.mode, url: describeRedisTopology(topology) };
    try {
      const answering =
        (await waitForRedis(client, PROBE_TIMEOUT_MS)) && (await client.ping().catch(() => null)) === 'PONG';
      return { ...shown, answering };
    } finally {
      client.disconnect();
    }
  }
  const url = topology.url;
  const redis = new Redis(url, {
    lazyConnect: true,
    connectTimeout: PROBE_TIMEOUT_MS,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    const answering = (await redis.ping()) === 'PONG';
    return { configured: true, mode: 'single', url: withoutPassword(url), answering };
  } catch {
    return { configured: true, mode: 'single', url: withoutPassword(url), answering: false };
  } finally {
    redis.disconnect();
  }
}

async function velroVersion(): Promise<string> {
  const manifest = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version?: string;
  };
  return manifest.version ?? 'unknown';
}

export function formatStatus(report: StatusReport): string {
  const { service, database, redis, versions, migrations, queue } = report;
  const server = service.answering ? 'answering' : 'not answering: start it with npm start';
  let db: string;
  if (database.url) {
    const where =
      database.kind === 'embedded'
        ? `embedded, pid ${database.pid}, port ${database.port}, data in ${database.data_dir}`
        : 'DATABASE_URL';
    db = `${database.url} (${where}${database.error ? `; not answering: ${database.error}` : ''})`;
  } else {
    db = `not running (embedded, data in ${database.data_dir}: npm start starts it)`;
  }
  const notReachable = database.url ? 'unknown (database not answering)' : 'unknown (database not running)';
  const rows: [string, string][] = [
    ['API URL', `${service.api_url} (${server})`],
    ['Docs', service.docs_url],
    ['Dashboard', service.dashboard_url],
    ['DATABASE_URL', db],
    [
      'Redis',
      redis.configured
        ? `${redis.url} (${redis.answering ? 'answering' : 'not answering'})`
        : 'not configured (caches and rate limits stay in each process)',
    ],
    [
      'Versions',
      `Velro ${versions.velro} (${service.node_env}), Node.js ${versions.node}, PostgreSQL ${versions.postgresql ?? 'unknown'}`,
    ],
    [
      'Migrations',
      migrations
        ? `${migrations.applied} applied${migrations.latest ? ` (latest ${migrations.latest})` : ''}, ${
            migrations.pending.length === 0
              ? 'none pending'
              : `${migrations.pending.length} pending (velro migrate applies them): ${migrations.pending.join(', ')}`
          }`
        : notReachable,
    ],
    [
      'Queue depth',
      queue
        ? `${queue.waiting} waiting, ${queue.running} running`
        : migrations
          ? 'no queue yet (the service has not started on this database)'
          : notReachable,
    ],
  ];
  return rows.map(([name, value]) => `${name.padStart(13)}: ${value}`).join('\n');
}
