import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { provisionDatabase } from '../src/platform/db/database.js';

const quiet = { info: () => {}, debug: () => {} };

describe('embedded PostgreSQL (the default without DATABASE_URL)', () => {
  let dir: string | undefined;
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('starts in DATA_DIR with migrations applied, and keeps its data across restarts', async () => {
    dir = await mkdtemp(join(tmpdir(), 'velro-embedded-'));
    const first = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    try {
      const client = new pg.Client({ connectionString: first.url });
      await client.connect();
      const migrations = await client.query('SELECT version FROM schema_migrations');
      expect(migrations.rows.map((r) => r.version)).toContain('001_foundation.sql');
      await client.query(
        `INSERT INTO users (email, password_hash, display_name) VALUES ('kept@example.com', 'x', 'Kept')`,
      );
      await client.end();
    } finally {
      await first.stop?.();
    }
    expect((await stat(join(dir, 'pg', 'PG_VERSION'))).isFile()).toBe(true);

    const second = await provisionDatabase({ DATA_DIR: dir, EMBEDDED_PG_PORT: 0 }, quiet);
    try {
      const client = new pg.Client({ connectionString: second.url });
      await client.connect();
      const kept = await client.query(`SELECT display_name FROM users WHERE email = 'kept@example.com'`);
      expect(kept.rows).toEqual([{ display_name: 'Kept' }]);
      await client.end();
    } finally {
      await second.stop?.();
    }
  });
});
