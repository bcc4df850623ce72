import { join } from 'node:path';
import type { Config } from '../../config.js';
import { startEmbeddedPostgres } from './embedded.js';
import { migrate } from './migrate.js';

export interface DatabaseLocation {
  url: string;
  /** Set for the embedded PostgreSQL: whether this process started it or joined a running one. */
  embedded?: { dir: string; port: number; started: boolean };
  /** Set with the embedded PostgreSQL: leaves it (the last process using it stops it). */
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
    const dir = join(config.DATA_DIR, 'pg');
    const embedded = await startEmbeddedPostgres({
      dir,
      port: config.EMBEDDED_PG_PORT,
      database: 'velro',
      log: (m) => log.debug(`postgres: ${m}`),
      ownProcessGroup: true,
    });
    log.info(
      embedded.started
        ? `embedded PostgreSQL ready in ${Date.now() - started} ms (data in ${dir})`
        : `using the embedded PostgreSQL already running on port ${embedded.port} (data in ${dir})`,
    );
    location = {
      url: embedded.url,
      embedded: { dir, port: embedded.port, started: embedded.started },
      stop: embedded.stop,
    };
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
