import { type Kysely, sql, type Transaction } from 'kysely';
import type { DB } from '../db/schema.js';

/** A write's result with the consistency token of its commit (`Velro-Consistency-Token`). */
export interface Revised<T> {
  value: T;
  revision: number;
}

/**
 * The latest committed authorization revision. Read after a write has committed, it is at least the
 * revision that write committed at: a correct consistency token for it (a later one only asks a
 * little more of the cache, never less).
 *
 * Why after, not inside: the triggers of migrations 004/009 advance the revision at commit, so the
 * revision row's lock is held only while the commit runs, never across the transaction's round
 * trips. Inside the transaction the number is not known yet (`authz_settle()` would force it, and
 * hold the lock from there to the commit).
 */
export async function committedRevision(db: Kysely<DB>): Promise<number> {
  const result = await sql<{ rev: number }>`SELECT rev FROM authz_revision WHERE id`.execute(db);
  const row = result.rows[0];
  if (!row) throw new Error('authz_revision row is missing');
  return row.rev;
}

/** Runs `work` in one transaction, then returns its value with the token of its commit. */
export async function transactRevised<T>(
  db: Kysely<DB>,
  work: (trx: Transaction<DB>) => Promise<T>,
): Promise<Revised<T>> {
  const value = await db.transaction().execute(work);
  return { value, revision: await committedRevision(db) };
}

export const CONSISTENCY_HEADER = 'velro-consistency-token';

/**
 * An operator flush: a revision of its own, recorded as the flush floor and announced with key
 * '*'. Every listening instance empties its L1, and shared (L2) entries read before it are ignored
 * by every instance, including ones started later. Usable in a transaction or on its own.
 */
export const FLUSH_SQL = `WITH bumped AS (UPDATE authz_revision SET rev = rev + 1, flush_floor = rev + 1 WHERE id RETURNING rev)
  SELECT rev, pg_notify('velro_authz', json_build_object('rev', rev, 'key', '*')::text) FROM bumped`;

export async function flushEverywhere(db: {
  query: (text: string) => Promise<{ rows: unknown[] }>;
}): Promise<number> {
  const { rows } = await db.query(FLUSH_SQL);
  return (rows[0] as { rev: number } | undefined)?.rev ?? 0;
}

/**
 * The fleet-wide cache kill switch (PATCH /admin/flags): recorded on the revision row as a revision
 * of its own and announced with key '!flags', so every listening instance applies it in commit order
 * and one started later reads it at start. Returns the revision it was recorded at.
 */
export async function setCacheEnabledEverywhere(
  db: { query: (text: string, values: unknown[]) => Promise<{ rows: unknown[] }> },
  enabled: boolean,
): Promise<number> {
  const { rows } = await db.query(
    `WITH bumped AS (
       UPDATE authz_revision SET rev = rev + 1, cache_enabled = $1, cache_flag_rev = rev + 1 WHERE id
       RETURNING rev, cache_enabled)
     SELECT rev, pg_notify('velro_authz',
              json_build_object('rev', rev, 'key', '!flags', 'cache_enabled', cache_enabled)::text)
       FROM bumped`,
    [enabled],
  );
  return (rows[0] as { rev: number } | undefined)?.rev ?? 0;
}

/** The key of a kill-switch announcement on the invalidation channel (never a fact's key). */
export const FLAGS_KEY = '!flags';

/** The key of an alert-rules change (PUT /admin/alert-rules; src/platform/observability/alert-rule-store.ts). */
export const RULES_KEY = '!rules';
