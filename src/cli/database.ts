import type { Kysely } from 'kysely';
import { type Config, loadConfig } from '../config.js';
import { normaliseEmail } from '../modules/auth/service.js';
import { provisionDatabase } from '../platform/db/database.js';
import { Pools } from '../platform/db/pools.js';
import type { DB } from '../platform/db/schema.js';
import { CliError } from './output.js';

const APPLIED_PREFIX = 'applied migrations: ';

export interface CliDatabase {
  config: Config;
  url: string;
  /** Where the database is, for messages (no credentials). */
  where: string;
  pools: Pools;
  /** Migrations this start applied (provisionDatabase migrates, as the server does on start). */
  applied: string[];
  close(): Promise<void>;
}

/**
 * The server's own database configuration: loadConfig (DATABASE_URL, else the embedded PostgreSQL
 * in DATA_DIR) and provisionDatabase, which applies pending migrations first, as `npm start` does.
 */
export async function openDatabase(): Promise<CliDatabase> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error));
  }
  const applied: string[] = [];
  const location = await provisionDatabase(config, {
    info: (message) => {
      if (message.startsWith(APPLIED_PREFIX))
        applied.push(...message.slice(APPLIED_PREFIX.length).split(', '));
      else process.stderr.write(`${message}\n`);
    },
    debug: () => undefined,
  }).catch((error: unknown) => {
    const reason = error instanceof Error ? error.message : String(error);
    throw new CliError(
      `could not open the database (${describe(config.DATABASE_URL, config.DATA_DIR)}): ${reason}`,
    );
  });
  const pools = new Pools({
    url: location.url,
    pools: config.pools,
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    onError: () => undefined,
  });
  return {
    config,
    url: location.url,
    where: describe(config.DATABASE_URL, config.DATA_DIR),
    pools,
    applied,
    async close() {
      await pools.close();
      await location.stop?.();
    },
  };
}

/** Runs `work` with the database open, and closes it whatever happens. */
export async function withDatabase<T>(work: (db: CliDatabase) => Promise<T>): Promise<T> {
  const db = await openDatabase();
  try {
    return await work(db);
  } finally {
    await db.close();
  }
}

export interface UserRef {
  id: string;
  email: string;
  role: 'user' | 'admin';
}

/** The account behind an email (case-insensitive, as sign-in), or a clear error. */
export async function userByEmail(db: Kysely<DB>, email: string): Promise<UserRef> {
  const normalised = normaliseEmail(email);
  const row = await db
    .selectFrom('users')
    .select(['id', 'email', 'role'])
    .where('email', '=', normalised)
    .executeTakeFirst();
  if (!row) throw new CliError(`no user with the email ${normalised}`, 1, 'user_not_found');
  return row;
}

function describe(url: string | undefined, dataDir: string): string {
  if (!url) return `the embedded PostgreSQL in ${dataDir}`;
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || '5432'}${parsed.pathname}`;
  } catch {
    return 'DATABASE_URL';
  }
}
