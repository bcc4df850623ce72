import { createHash } from 'node:crypto';
import pg from 'pg';
import { withClient } from './world.js';

/**
 * The database and the data of `npm run bench:micro`: a throw-away database (on DATABASE_URL's
 * server, else an embedded PostgreSQL in a temporary folder), a world of realistic proportions
 * loaded with set-based SQL, and the mix of (subject, generation) pairs the checks ask about.
 */

export interface WorldSize {
  users: number;
  teams: number;
  projects: number;
  generations: number;
}

export const WORLD: WorldSize = { users: 10_000, teams: 500, projects: 20_000, generations: 200_000 };

/** What was loaded, counted by the database after loading (not what we meant to load). */
export interface WorldCounts extends WorldSize {
  memberships: number;
  inactiveMemberships: number;
  teamProjects: number;
  publicProjects: number;
  deletedGenerations: number;
  loadMs: number;
  /** Milliseconds per statement, to see where a slow load goes. */
  loadSteps: Record<string, number>;
}

/** Ids are md5('<kind>:<n>')::uuid, as in test/authz-facts-plan.test.ts: rows can be named without reading them. */
export function idOf(kind: 'user' | 'team' | 'project' | 'generation', n: number): string {
  const hex = createHash('md5').update(`${kind}:${n}`).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * 10k users; 500 teams of 5–30 (owner first, then mixed roles, one in ten inactive); 20k projects,
 * half in a team and owned by one of its members, visibility mixed, 2 % deleted; 200k generations,
 * 85 % in a project (made by a team member or the owner), 3 % deleted. `setseed` makes the world the
 * same on every run, so runs compare.
 */
export async function loadWorld(url: string, size: WorldSize = WORLD): Promise<WorldCounts> {
  const started = Date.now();
  const steps: Record<string, number> = {};
  return withClient(url, async (c) => {
    const { users: U, teams: T, projects: P, generations: G } = size;
    const step = async (label: string, sql: string) => {
      const t0 = Date.now();
      await c.query(sql);
      steps[label] = Date.now() - t0;
    };
    await step('setseed', 'SELECT setseed(0.4242)');
    await step('begin', 'BEGIN');
    // Bulk-load as PostgreSQL's manual advises, all restored from the catalogue's own definitions
    // before COMMIT: foreign keys dropped and re-added (one set-based validation instead of 600k
    // per-row lookups), and the membership trigger off: it bumps the revision once per row, serialised
    // on one row, and nothing has cached anything yet that it would need to invalidate.
    const foreignKeys = (
      await c.query<{ table: string; name: string; definition: string }>(
        `SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS definition
           FROM pg_constraint
          WHERE contype = 'f' AND conrelid = ANY('{teams,team_members,projects,generations}'::regclass[])`,
      )
    ).rows;
    for (const fk of foreignKeys)
      await c.query(`ALTER TABLE ${fk.table} DROP CONSTRAINT ${pg.escapeIdentifier(fk.name)}`);
    await c.query('ALTER TABLE team_members DISABLE TRIGGER team_members_authz_insert');
    // Secondary indexes of generations too: one sorted build each is cheaper than 200k random inserts.
    const indexes = (
      await c.query<{ name: string; definition: string }>(
        `SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
           FROM pg_index i
          WHERE i.indrelid = 'generations'::regclass
            AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)`,
      )
    ).rows;
    for (const index of indexes) await c.query(`DROP INDEX ${index.name}`);
    await step(
      'users',
      `INSERT INTO users (id, email, password_hash, display_name)
       SELECT md5('user:' || i)::uuid, 'micro' || i || '@example.com', 'not-a-hash', 'User ' || i
         FROM generate_series(1, ${U}) i`,
    );
    // A temporary table, not a CTE, pins each random() to one value per row for the joins below.
    await step(
      'team_spec',
      `CREATE TEMP TABLE team_spec ON COMMIT DROP AS
       SELECT t, 1 + floor(random() * ${U})::int AS owner_n, 5 + floor(random() * 26)::int AS size
         FROM generate_series(1, ${T}) t`,
    );
    await step(
      'teams',
      `INSERT INTO teams (id, name, owner_id)
       SELECT md5('team:' || t)::uuid, 'Team ' || t, md5('user:' || owner_n)::uuid FROM team_spec`,
    );
    // Member k of a team is user owner_n + 7907·k (mod U): distinct within a team since 7907 is prime
    // to U, and k = 0 is the owner. Roles drawn from 2 admin : 7 editor : 11 viewer.
    await step(
      'team_members',
      `INSERT INTO team_members (team_id, user_id, role, is_active)
       SELECT md5('team:' || s.t)::uuid,
              md5('user:' || (1 + (s.owner_n - 1 + k * 7907) % ${U}))::uuid,
              CASE WHEN k = 0 THEN 'owner'
                   ELSE (ARRAY['admin', 'admin', 'editor', 'editor', 'editor', 'editor', 'editor', 'editor',
                               'editor', 'viewer', 'viewer', 'viewer', 'viewer', 'viewer', 'viewer', 'viewer',
                               'viewer', 'viewer', 'viewer', 'viewer'])[1 + floor(random() * 20)::int] END,
              k = 0 OR random() >= 0.1
         FROM team_spec s, generate_series(0, s.size - 1) k`,
    );
    await step(
      'team_pool',
      `CREATE TEMP TABLE team_pool ON COMMIT DROP AS
       SELECT team_id, array_agg(user_id ORDER BY user_id) AS members
         FROM team_members WHERE is_active GROUP BY team_id`,
    );
    await step(
      'project_spec',
      `CREATE TEMP TABLE project_spec ON COMMIT DROP AS
       SELECT p, CASE WHEN p % 2 = 0 THEN 1 + floor(random() * ${T})::int END AS team_n,
              1 + floor(random() * ${U})::int AS owner_n, random() AS pick, random() AS vis, random() AS del
         FROM generate_series(1, ${P}) p`,
    );
    await step(
      'projects',
      `INSERT INTO projects (id, owner_id, team_id, name, visibility, deleted_at, created_at)
       SELECT md5('project:' || s.p)::uuid,
              coalesce(tp.members[1 + floor(s.pick * cardinality(tp.members))::int],
                       md5('user:' || s.owner_n)::uuid),
              tp.team_id,
              'Project ' || s.p,
              CASE WHEN s.team_n IS NULL THEN CASE WHEN s.vis < 0.3 THEN 'public' ELSE 'private' END
                   WHEN s.vis < 0.2 THEN 'public' WHEN s.vis < 0.8 THEN 'team' ELSE 'private' END,
              CASE WHEN s.del < 0.02 THEN now() - interval '1 day' END,
              now() - s.p * interval '2 minutes'
         FROM project_spec s
         LEFT JOIN team_pool tp ON tp.team_id = md5('team:' || s.team_n)::uuid`,
    );
    await step(
      'generation_spec',
      `CREATE TEMP TABLE generation_spec ON COMMIT DROP AS
       SELECT g, CASE WHEN random() < 0.85 THEN 1 + floor(random() * ${P})::int END AS project_n,
              1 + floor(random() * ${U})::int AS user_n, random() AS who, random() AS pick, random() AS del
         FROM generate_series(1, ${G}) g`,
    );
    await step(
      'generations',
      `INSERT INTO generations (id, user_id, project_id, model_id, prompt, status, progress, cost_credits,
                                deleted_at, created_at, updated_at, completed_at)
       SELECT md5('generation:' || s.g)::uuid,
              CASE WHEN p.id IS NULL THEN md5('user:' || s.user_n)::uuid
                   WHEN tp.members IS NOT NULL AND s.who < 0.7
                     THEN tp.members[1 + floor(s.pick * cardinality(tp.members))::int]
                   ELSE p.owner_id END,
              p.id,
              (ARRAY['velro-sketch', 'velro-studio', 'velro-photon', 'velro-ultra'])[1 + s.g % 4],
              'a lighthouse at dusk, variation ' || s.g,
              'completed', 100, 5,
              CASE WHEN s.del < 0.03 THEN now() - interval '1 hour' END,
              now() - s.g * interval '20 seconds', now() - s.g * interval '20 seconds',
              now() - s.g * interval '20 seconds'
         FROM generation_spec s
         LEFT JOIN projects p ON p.id = md5('project:' || s.project_n)::uuid
         LEFT JOIN team_pool tp ON tp.team_id = p.team_id`,
    );
    await c.query('ALTER TABLE team_members ENABLE TRIGGER team_members_authz_insert');
    const restoring = Date.now();
    for (const index of indexes) await c.query(index.definition);
    steps.indexes = Date.now() - restoring;
    for (const fk of foreignKeys)
      await c.query(
        `ALTER TABLE ${fk.table} ADD CONSTRAINT ${pg.escapeIdentifier(fk.name)} ${fk.definition}`,
      );
    steps.foreign_keys = Date.now() - restoring - steps.indexes;
    await step('commit', 'COMMIT');
    // VACUUM as well as ANALYZE: otherwise autovacuum (inserts alone trigger it) and the first
    // readers setting hint bits would write to the new tables during the measured rounds.
    await step('vacuum_analyze', 'VACUUM (ANALYZE)');
    // And flush now rather than mid-round. It needs pg_checkpoint on a shared server: best effort.
    await step('checkpoint', 'CHECKPOINT').catch(() => undefined);
    const counts = await c.query<Omit<WorldCounts, 'loadMs' | 'loadSteps'>>(
      `SELECT (SELECT count(*) FROM users)::int AS users,
              (SELECT count(*) FROM teams)::int AS teams,
              (SELECT count(*) FROM projects)::int AS projects,
              (SELECT count(*) FROM generations)::int AS generations,
              (SELECT count(*) FROM team_members)::int AS "memberships",
              (SELECT count(*) FROM team_members WHERE NOT is_active)::int AS "inactiveMemberships",
              (SELECT count(*) FROM projects WHERE team_id IS NOT NULL)::int AS "teamProjects",
              (SELECT count(*) FROM projects WHERE visibility = 'public')::int AS "publicProjects",
              (SELECT count(*) FROM generations WHERE deleted_at IS NOT NULL)::int AS "deletedGenerations"`,
    );
    const row = counts.rows[0];
    if (!row) throw new Error('counting the world returned no row');
    return { ...row, loadMs: Date.now() - started, loadSteps: steps };
  });
}

/** A seeded PRNG (mulberry32): the same mix on every run. */
export function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

export type PairKind = 'creator' | 'team_member' | 'public' | 'random' | 'nonexistent';

export interface Pair {
  subjectId: string;
  generationId: string;
  kind: PairKind;
}

/**
 * How many pairs of each kind. Random and nonexistent pairs are denied, and so are a few of the others
 * (deleted generations or projects, inactive members): a little over half of all pairs.
 */
const MIX: Record<PairKind, number> = {
  creator: 180,
  team_member: 140,
  public: 100,
  random: 480,
  nonexistent: 100,
};

interface CandidateRow {
  id: string;
  creator: string;
  visibility: string | null;
  members: string[] | null;
}

/**
 * 1,000 distinct (subject, generation) pairs: creators of their generations, team members on
 * team-visible projects (any role, active or not), anyone on public projects, random subjects on
 * random generations (almost always denied) and random subjects on ids that name nothing.
 */
export async function buildPairs(url: string, size: WorldSize = WORLD): Promise<Pair[]> {
  const random = seeded(20_251_123);
  const pick = (n: number) => 1 + Math.floor(random() * n);
  const user = () => idOf('user', pick(size.users));
  const candidates = Array.from({ length: 6_000 }, () => idOf('generation', pick(size.generations)));
  const rows = await withClient(
    url,
    async (c) =>
      (
        await c.query<CandidateRow>(
          `SELECT g.id, g.user_id AS creator, p.visibility,
                (SELECT array_agg(tm.user_id ORDER BY tm.user_id) FROM team_members tm
                  WHERE tm.team_id = p.team_id) AS members
           FROM generations g
           LEFT JOIN projects p ON p.id = g.project_id
          WHERE g.id = ANY($1::uuid[])
          ORDER BY array_position($1::uuid[], g.id)`,
          [candidates],
        )
      ).rows,
  );
  const pairs: Pair[] = [];
  const seen = new Set<string>();
  const counts: Record<PairKind, number> = {
    creator: 0,
    team_member: 0,
    public: 0,
    random: 0,
    nonexistent: 0,
  };
  const add = (kind: PairKind, subjectId: string, generationId: string) => {
    const key = `${subjectId}/${generationId}`;
    if (counts[kind] >= MIX[kind] || seen.has(key)) return;
    seen.add(key);
    counts[kind] += 1;
    pairs.push({ kind, subjectId, generationId });
  };
  for (const row of rows) {
    add('creator', row.creator, row.id);
    if (row.members && row.visibility !== 'private')
      add('team_member', row.members[Math.floor(random() * row.members.length)] as string, row.id);
    if (row.visibility === 'public') add('public', user(), row.id);
    add('random', user(), row.id);
  }
  while (counts.nonexistent < MIX.nonexistent) {
    // A v4-shaped uuid from the seeded PRNG: valid syntax, so it costs a real lookup.
    const hex = Array.from({ length: 32 }, () => Math.floor(random() * 16).toString(16)).join('');
    add(
      'nonexistent',
      user(),
      `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20)}`,
    );
  }
  for (const kind of Object.keys(MIX) as PairKind[]) {
    if (counts[kind] < MIX[kind])
      throw new Error(`only ${counts[kind]} of ${MIX[kind]} ${kind} pairs found among the candidates`);
  }
  return pairs;
}

/**
 * A sequence of indexes into `ranked` drawn from Zipf(s): rank 0 is asked most often. Built once so
 * the measured loops only read an array.
 */
export function zipfSequence(ranks: number, length: number, s: number, random: () => number): Uint32Array {
  const cdf = new Float64Array(ranks);
  let total = 0;
  for (let k = 0; k < ranks; k++) {
    total += 1 / (k + 1) ** s;
    cdf[k] = total;
  }
  const sequence = new Uint32Array(length);
  for (let i = 0; i < length; i++) {
    const u = random() * total;
    let lo = 0;
    let hi = ranks - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((cdf[mid] as number) < u) lo = mid + 1;
      else hi = mid;
    }
    sequence[i] = lo;
  }
  return sequence;
}
