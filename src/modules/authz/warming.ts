import { type Kysely, sql } from 'kysely';
import type pg from 'pg';
import type { FactCache } from '../../platform/cache/fact-cache.js';
import type { DB } from '../../platform/db/schema.js';
import { type FactsRow, factKinds } from './fact-kinds.js';
import type { FactsLoader } from './facts.js';

/** Users and their memberships, under the facts row's column names (fact-kinds.ts). */
const SUBJECTS = {
  name: 'authz_warm_subjects_v2',
  text: `SELECT (SELECT rev FROM authz_revision) AS rev, u.id AS u_id, u.role AS u_role, u.is_active AS u_active,
                coalesce(json_agg(json_build_array(tm.team_id, tm.role, tm.is_active))
                           FILTER (WHERE tm.team_id IS NOT NULL), '[]') AS mems
           FROM unnest($1::uuid[]) AS s(id)
           JOIN users u ON u.id = s.id
           LEFT JOIN team_members tm ON tm.user_id = u.id
          GROUP BY u.id`,
};

/**
 * Rows per statement. Each chunk's rows are turned into cache entries in one turn of the event loop,
 * so a chunk bounds how long warming holds the loop between two requests.
 */
const CHUNK = 250;
const REFRESH_LOCK = 4_205_731_978;

export interface WarmReport {
  /** Users whose facts were loaded (not those L1 already held). */
  subjects: number;
  /** Generations whose facts were loaded (not those L1 already held). */
  generations: number;
  /** Users and generations L1 lacked but a periodic pass left alone: chosen by the pass before too. */
  skipped: number;
  ms: number;
}

export interface WarmOptions {
  /**
   * The periodic pass: leave out what the previous pass chose as well. Such a fact was loaded then
   * (or held), so if L1 lacks it now it was not asked for during its whole lifetime (or changed and
   * was not asked for since): the views rank by recency of change, not of use, and reloading those
   * every interval was the bulk of the work (a soak's pass at 25 minutes loaded 2,971 generations
   * in 1.6 s, and the 503s of that interval came with it). Demand loads any of them in one round trip.
   */
  onlyNew?: boolean;
}

/**
 * Fills the cache ahead of demand: a user's facts when they sign in, and at start-up and
 * periodically the hottest users and generations according to the materialized views. The views
 * only choose WHAT to warm; the values always come from the live tables (they lag, so no decision
 * may rest on them).
 */
export function createWarmer(deps: {
  pool: pg.Pool;
  /** Where the views are read to choose what to warm (a read replica may serve); default `pool`. */
  viewsDb?: Kysely<DB>;
  cache: FactCache;
  loadFacts: FactsLoader;
}) {
  const { pool, cache } = deps;
  /** What the last pass chose from the views (generation and user ids), for `onlyNew`. */
  let chosenBefore = new Set<string>();

  async function readViews(limit: number) {
    if (deps.viewsDb) {
      const generations = await sql<{ id: string; creator: string }>`
        SELECT generation_id AS id, creator_id AS creator FROM mv_generation_access_patterns
         ORDER BY updated_at DESC LIMIT ${limit}`.execute(deps.viewsDb);
      const users = await sql<{ id: string }>`
        SELECT user_id AS id FROM mv_user_authorization_context WHERE is_active
         ORDER BY last_seen_at DESC NULLS LAST, last_generation_at DESC NULLS LAST LIMIT ${limit}`.execute(
        deps.viewsDb,
      );
      return { generations: generations.rows, users: users.rows };
    }
    const generations = await pool.query<{ id: string; creator: string }>(
      `SELECT generation_id AS id, creator_id AS creator FROM mv_generation_access_patterns
        ORDER BY updated_at DESC LIMIT $1`,
      [limit],
    );
    const users = await pool.query<{ id: string }>(
      `SELECT user_id AS id FROM mv_user_authorization_context WHERE is_active
        ORDER BY last_seen_at DESC NULLS LAST, last_generation_at DESC NULLS LAST LIMIT $1`,
      [limit],
    );
    return { generations: generations.rows, users: users.rows };
  }

  async function warmSubjects(userIds: string[]): Promise<number> {
    let warmed = 0;
    for (let i = 0; i < userIds.length; i += CHUNK) {
      const chunk = userIds.slice(i, i + CHUNK);
      const { rows } = await pool.query<
        { rev: number; u_id: string } & Pick<FactsRow, 'u_role' | 'u_active' | 'mems'>
      >({ ...SUBJECTS, values: [chunk] });
      const entries = new Map<string, unknown>();
      let rev = 0;
      for (const row of rows) {
        rev = row.rev;
        entries.set(factKinds.user.key(row.u_id), factKinds.user.valueOf(row));
        entries.set(factKinds.memberships.key(row.u_id), factKinds.memberships.valueOf(row));
      }
      if (rows.length > 0) cache.warm(entries, rev);
      warmed += rows.length;
    }
    return warmed;
  }

  async function warmGenerations(rows: { id: string; creator: string }[]): Promise<number> {
    for (let i = 0; i < rows.length; i += CHUNK) {
      const chunk = rows.slice(i, i + CHUNK);
      const loaded = await deps.loadFacts(
        chunk.map((r) => ({ subjectId: r.creator, resource: { type: 'generation' as const, id: r.id } })),
      );
      cache.warm(loaded.entries, loaded.revision);
    }
    return rows.length;
  }

  return {
    warmSubjects,

    /**
     * The hottest generations and users of the access-pattern views, up to `limit` of each, that L1
     * does not hold already (and, for the periodic pass, that the previous pass did not choose).
     * Under load the hottest facts are in L1 (and exact: invalidation removes a changed one), so
     * loading them again only costs: every 5 minutes the periodic warm reloaded 10,000 generations
     * and 10,000 users and wrote them all to L2, and the soaks' 503s and p95 spikes came at exactly
     * those moments (300, 600, 900 … s).
     */
    async warmFromViews(limit: number, options: WarmOptions = {}): Promise<WarmReport> {
      const started = performance.now();
      if (!cache.enabled || limit === 0) return { subjects: 0, generations: 0, skipped: 0, ms: 0 };
      const { generations, users } = await readViews(limit);
      const chosen = new Set<string>();
      let skipped = 0;
      /** Whether to load `id`'s facts: L1 lacks them, and (periodic pass) the last pass did not choose it. */
      const wanted = (id: string, lacking: boolean) => {
        chosen.add(id);
        if (!lacking) return false;
        if (options.onlyNew && chosenBefore.has(id)) {
          skipped += 1;
          return false;
        }
        return true;
      };
      const warmedGenerations = await warmGenerations(
        generations.filter((r) => {
          const id = r.id.toLowerCase();
          return wanted(id, !cache.holds(factKinds.generation.key(id)));
        }),
      );
      const warmedSubjects = await warmSubjects(
        users
          .map((r) => r.id.toLowerCase())
          .filter((id) =>
            wanted(id, !cache.holds(factKinds.user.key(id)) || !cache.holds(factKinds.memberships.key(id))),
          ),
      );
      chosenBefore = chosen;
      return {
        subjects: warmedSubjects,
        generations: warmedGenerations,
        skipped,
        ms: Math.round(performance.now() - started),
      };
    },

    /**
     * Refreshes the views without blocking readers (CONCURRENTLY), on one instance at a time.
     * Returns false when another instance is already doing it.
     */
    async refreshViews(): Promise<boolean> {
      const client = await pool.connect();
      try {
        const { rows } = await client.query<{ locked: boolean }>(
          'SELECT pg_try_advisory_lock($1) AS locked',
          [REFRESH_LOCK],
        );
        if (!rows[0]?.locked) return false;
        try {
          await client.query('REFRESH MATERIALIZED VIEW CONCURRENTLY mv_generation_access_patterns');
          await client.query('REFRESH MATERIALIZED VIEW CONCURRENTLY mv_user_authorization_context');
        } finally {
          await client.query('SELECT pg_advisory_unlock($1)', [REFRESH_LOCK]);
        }
        return true;
      } finally {
        client.release();
      }
    },
  };
}

export type Warmer = ReturnType<typeof createWarmer>;
