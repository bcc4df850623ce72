import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres } from '../../src/platform/db/embedded.js';
import { migrate } from '../../src/platform/db/migrate.js';
import { startQueue } from '../../src/platform/queue/boss.js';

declare module 'vitest' {
  export interface ProvidedContext {
    pgAdminUrl: string;
    templateDatabase: string;
    redisUrl: string | null;
  }
}

/**
 * One migrated template database per test run. Each test file clones it (CREATE DATABASE …
 * TEMPLATE), so files run in parallel and never see each other's rows. Uses DATABASE_URL's server
 * when set, else an embedded PostgreSQL in a temporary folder.
 */
export default async function setup(project: TestProject) {
  const redisUrl = process.env.REDIS_URL || null;
  if (process.env.CI === 'true' && !redisUrl) {
    throw new Error('CI=true requires REDIS_URL: the Redis tests must run in CI, not be skipped');
  }

  let adminUrl: string;
  let stopEmbedded: (() => Promise<void>) | undefined;
  let tempDir: string | undefined;
  if (process.env.DATABASE_URL) {
    adminUrl = process.env.DATABASE_URL;
  } else {
    tempDir = await mkdtemp(join(tmpdir(), 'velro-test-pg-'));
    const embedded = await startEmbeddedPostgres({
      dir: join(tempDir, 'pg'),
      port: 0,
      database: 'velro_test_admin',
      log: () => {},
      // Throw-away cluster: durability buys nothing here.
      settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
    });
    adminUrl = embedded.url;
    stopEmbedded = embedded.stop;
  }

  const template = `velro_tpl_${process.pid}_${Date.now().toString(36)}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${template}`);
  const templateUrl = withDatabase(adminUrl, template);
  await migrate(templateUrl);
  // The queue's schema too, so that no test file pays for creating it.
  const boss = await startQueue({
    url: templateUrl,
    poolMax: 1,
    expireInSeconds: 60,
    onError: () => {},
  });
  await boss.stop({ graceful: false, wait: true, close: true });

  project.provide('pgAdminUrl', adminUrl);
  project.provide('templateDatabase', template);
  project.provide('redisUrl', redisUrl);

  return async () => {
    const leftovers = await admin.query<{ datname: string }>(
      `SELECT datname FROM pg_database WHERE starts_with(datname, $1)`,
      [template],
    );
    for (const { datname } of leftovers.rows) {
      await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(datname)} WITH (FORCE)`);
    }
    await admin.end();
    await stopEmbedded?.();
    if (tempDir) await rm(tempDir, { recursive: true, force: true });
  };
}

export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}
