import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { withClient } from './world.js';

const SQL_FILE = join(dirname(dirname(fileURLToPath(import.meta.url))), 'peers', 'rls.sql');

/**
 * Applies bench/peers/rls.sql to the world's database, gives the `authenticator` login role a fresh
 * password, and returns the URL the RLS peer connects with, plus the plan of its query under the
 * policy (to show the indexes it relies on are used).
 */
export async function installRlsBaseline(url: string, sampleGeneration: string, sampleUser: string) {
  const password = randomBytes(18).toString('base64url');
  const plan = await withClient(url, async (c) => {
    await c.query(await readFile(SQL_FILE, 'utf8'));
    await c.query(`ALTER ROLE authenticator PASSWORD ${pg.escapeLiteral(password)}`);
    await c.query('BEGIN');
    try {
      await c.query(
        "SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)",
        [JSON.stringify({ sub: sampleUser, role: 'authenticated' })],
      );
      const explained = await c.query<{ 'QUERY PLAN': string }>(
        'EXPLAIN (COSTS OFF) SELECT g.id, g.project_id, g.status, g.created_at FROM generations g WHERE g.id = $1',
        [sampleGeneration],
      );
      return explained.rows.map((r) => r['QUERY PLAN']);
    } finally {
      await c.query('ROLLBACK');
    }
  });
  const parsed = new URL(url);
  parsed.username = 'authenticator';
  parsed.password = password;
  return { url: parsed.toString(), plan };
}
