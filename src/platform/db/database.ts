import { join } from 'node:path';
import type { Config } from '../../config.js';
import { startEmbeddedPostgres } from './embedded.js';
import { migrate } from './migrate.js';

export interface DatabaseLocation {
  url: string;
  /** Set when the service started its own embedded PostgreSQL and must stop it. */
  stop?: () => Promise<void>;
}

/** `DATABASE_URL` when given; otherwise the embedded PostgreSQL in `DATA_DIR`. Migrations applied. */
export async function provisionDatabase(
  config: Pick<Config, 'DATABASE_URL' | 'DATA_DIR' | 'EMBEDDED_PG_PORT'>,
  log: { info: (msg: string) => void; debug: (msg: string) => void },
): Promise<DatabaseLocation> {
  let location: DatabaseLocation;
  if (config.DATABASE_URL) {
    location = { url: config.DATABASE_URL };
  } else {
    const started = Date.now();
    const embedded = await startEmbeddedPostgres({
      dir: join(config.DATA_DIR, 'pg'),
      port: config.EMBEDDED_PG_PORT,
      database: 'velro',
      log: (m) => log.debug(`postgres: ${m}`),
    });
    log.info(
      `embedded PostgreSQL ready in ${Date.now() - started} ms (data in ${join(config.DATA_DIR, 'pg')})`,
    );
    location = embedded;
  }
  try {
    const { applied } = await migrate(location.url);
    if (applied.length > 0) log.info(`applied migrations: ${applied.join(', ')}`);
  } catch (error) {
    await location.stop?.();
    throw error;
  }
  return location;
}
