import { CompiledQuery, type Kysely } from 'kysely';
import type pg from 'pg';
import {
  addFactsRow,
  type CachedGeneration,
  type CachedMemberships,
  type CachedProject,
  type CachedTeam,
  FACTS_COLUMNS,
  FACTS_ROW_KINDS,
  type FactsRow,
  factKinds,
} from './fact-kinds.js';
import type { MembershipFacts, ResourceFacts, ResourceType } from './types.js';

export interface ResourceRef {
  type: ResourceType;
  id: string;
}

export interface FactsRequest {
  subjectId: string;
  resource: ResourceRef;
}

/** Keys of the facts a check reads (declared in fact-kinds.ts). */
export const factKeys = {
  generation: factKinds.generation.key,
  project: factKinds.project.key,
  team: factKinds.team.key,
  memberships: factKinds.memberships.key,
};

export function rootKey(resource: ResourceRef): string {
  return resource.type === 'generation'
    ? factKeys.generation(resource.id)
    : resource.type === 'project'
      ? factKeys.project(resource.id)
      : factKeys.team(resource.id);
}

/** Every key (with its value; null = does not exist) one load learned, and the revision it saw. */
export interface LoadedFacts {
  revision: number;
  entries: Map<string, unknown>;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const isUuid = (value: string) => UUID.test(value);

/**
 * The columns of a facts row, in the order both statements return them (FACTS_COLUMNS, from the
 * fact kinds; both statements select each column under that name). Each row comes back as ONE json
 * array column instead of 23 columns. node-postgres sets up a parser per column and copies a
 * 23-key template object per row, about 20 µs of CPU per query here (measured), against under 1 µs
 * for one json column that JSON.parse reads; the database builds the array for about what it would
 * spend writing the columns as text.
 */
const COLUMNS = FACTS_COLUMNS.join(', ');

/** The fact kinds whose columns the statements select from their declared SQL, in column order. */
const SQL_KINDS = FACTS_ROW_KINDS.flatMap((kind) => (kind.sql ? [kind.sql] : []));

/**
 * Those kinds' columns as one part of a statement selects them (`show` each column, a kind a line),
 * so that a column is declared once, in fact-kinds.ts, and every part selects it in its place.
 */
function selectList(
  show: (read: 'resource' | 'session', column: string, expr: string, type: string) => string,
  indent: string,
): string {
  return SQL_KINDS.map(({ read, columns }) =>
    Object.entries(columns)
      .map(([column, [expr, type]]) => show(read, column, expr, type))
      .join(', '),
  ).join(`,\n${indent}`);
}

/**
 * Everything any number of checks need, in ONE statement and so one round trip: each resource's
 * row, its project, each distinct subject's memberships, and the revision current when the
 * statement ran, read in the same snapshot, so the stamp is exactly the state the facts reflect.
 */
export const FACTS_STATEMENT = {
  name: 'authz_facts_v6',
  text: `
    WITH current AS (
      SELECT rev FROM authz_revision WHERE id
    ), req AS (
      SELECT * FROM unnest($1::text[], $2::uuid[]) AS r(type, id)
    ), subjects AS (
      SELECT s.id AS subject,
             coalesce(json_agg(json_build_array(tm.team_id, tm.role, tm.is_active))
                        FILTER (WHERE tm.team_id IS NOT NULL), '[]') AS mems
        FROM unnest($3::uuid[]) AS s(id)
        LEFT JOIN team_members tm ON tm.user_id = s.id
       GROUP BY s.id
    ), facts AS (
      SELECT (SELECT rev FROM current) AS rev,
             r.type, r.id, NULL::uuid AS subject, NULL::json AS mems,
             ${selectList((read, column, expr, type) => (read === 'resource' ? `${expr} AS ${column}` : `NULL::${type} AS ${column}`), '             ')}
        FROM req r
        LEFT JOIN generations g ON r.type = 'generation' AND g.id = r.id
        LEFT JOIN projects p
               ON p.id = CASE r.type WHEN 'generation' THEN g.project_id WHEN 'project' THEN r.id END
        LEFT JOIN teams t ON r.type = 'team' AND t.id = r.id
      UNION ALL
      SELECT (SELECT rev FROM current), 'subject', NULL, s.subject, s.mems,
             ${selectList(() => 'NULL', '             ')}
        FROM subjects s
      UNION ALL
      SELECT (SELECT rev FROM current), 'session', NULL, NULL, NULL,
             ${selectList((read, _column, expr) => (read === 'session' ? expr : 'NULL'), '             ')}
        FROM sessions s LEFT JOIN users u ON u.id = s.user_id
       WHERE s.id = $4
    )
    SELECT json_build_array(${COLUMNS}) AS f FROM facts`,
};

/**
 * The same facts for ONE check (the common case), as a single row: no arrays to unnest and no
 * union, so it parses, plans and runs in a fraction of the general statement's time.
 */
export const FACT_ONE_STATEMENT = {
  name: 'authz_fact_one_v3',
  text: `
    SELECT json_build_array(${COLUMNS}) AS f FROM (
    SELECT (SELECT rev FROM authz_revision WHERE id) AS rev,
           $1::text AS type, $2::uuid AS id, $3::uuid AS subject,
           (SELECT coalesce(json_agg(json_build_array(tm.team_id, tm.role, tm.is_active)), '[]')
              FROM team_members tm WHERE tm.user_id = $3::uuid) AS mems,
           ${selectList((_read, column, expr) => `${expr} AS ${column}`, '           ')}
      FROM (SELECT 1) one
      LEFT JOIN generations g ON $1::text = 'generation' AND g.id = $2::uuid
      LEFT JOIN projects p
             ON p.id = CASE $1::text WHEN 'generation' THEN g.project_id WHEN 'project' THEN $2::uuid END
      LEFT JOIN teams t ON $1::text = 'team' AND t.id = $2::uuid
      LEFT JOIN sessions s ON s.id = $4::uuid
      LEFT JOIN users u ON u.id = s.user_id
    ) facts`,
};

/** One row of either statement, as the json array of its FACTS_COLUMNS, made back into an object. */
function rowOf(values: unknown[]): FactsRow {
  const row: Record<string, unknown> = {};
  for (let i = 0; i < FACTS_COLUMNS.length; i++) row[FACTS_COLUMNS[i] as string] = values[i];
  return row as unknown as FactsRow;
}

/**
 * `sessionId`: also load that session and its user (the access token's liveness), so that a
 * check on a cold cache costs one round trip in all, authentication included.
 */
export type FactsLoader = (requests: FactsRequest[], sessionId?: string) => Promise<LoadedFacts>;

/** Runs one of the facts statements with its values, and returns its rows. */
export type FactsQuery = (
  statement: { name: string; text: string },
  values: unknown[],
) => Promise<{ f: unknown[] }[]>;

/** Through a pool, as a named prepared statement (the read path). */
export const poolFactsQuery =
  (pool: pg.Pool): FactsQuery =>
  async (statement, values) =>
    (await pool.query<{ f: unknown[] }>({ ...statement, values })).rows;

/** Through a Kysely connection or transaction (the write path: facts read in the write's own transaction). */
export const kyselyFactsQuery =
  <T>(db: Kysely<T>): FactsQuery =>
  async (statement, values) =>
    (await db.executeQuery<{ f: unknown[] }>(CompiledQuery.raw(statement.text, values))).rows;

export function createFactsLoader(source: pg.Pool | FactsQuery): FactsLoader {
  const query = typeof source === 'function' ? source : poolFactsQuery(source);
  return async (requests, sessionId) => {
    const types: string[] = [];
    const ids: string[] = [];
    const seenResource = new Set<string>();
    const subjects = new Set<string>();
    const entries = new Map<string, unknown>();
    for (const r of requests) {
      if (isUuid(r.subjectId)) subjects.add(r.subjectId.toLowerCase());
      // An id that is not a uuid names nothing; `assemble` knows that without any entry (so no
      // caller-chosen string ever becomes a cache key).
      if (!isUuid(r.resource.id)) continue;
      const id = r.resource.id.toLowerCase();
      const key = `${r.resource.type}:${id}`;
      if (seenResource.has(key)) continue;
      seenResource.add(key);
      types.push(r.resource.type);
      ids.push(id);
    }
    const session = sessionId && isUuid(sessionId) ? sessionId.toLowerCase() : null;
    if (session) entries.set(factKinds.session.key(session), null);
    if (types.length === 0 && subjects.size === 0 && !session) return { revision: 0, entries };
    const subjectList = [...subjects];
    if (types.length === 1 && subjectList.length === 1) {
      const rows = await query(FACT_ONE_STATEMENT, [types[0], ids[0], subjectList[0], session]);
      const row = rowOf((rows[0] as { f: unknown[] }).f);
      addFactsRow(entries, row);
      return { revision: row.rev, entries };
    }
    const rows = await query(FACTS_STATEMENT, [types, ids, subjectList, session]);
    let revision = 0;
    for (const { f } of rows) {
      const row = rowOf(f);
      revision = row.rev;
      addFactsRow(entries, row);
    }
    return { revision, entries };
  };
}

/** A cache (or a fresh load) answering whether a key is known, and its value. */
export type Lookup = (key: string) => { known: true; value: unknown } | { known: false };

/**
 * Builds the ResourceFacts of one check from its pieces. Returns the first missing key when a
 * piece is not known, so the caller can load it (all pieces of one check come from one
 * statement). Ids must already be lower-case, as the database writes them in keys.
 */
export function assemble(
  subjectId: string,
  resource: ResourceRef,
  lookup: Lookup,
): { facts: ResourceFacts } | { missing: string } {
  if (!isUuid(resource.id) || !isSubjectUuid(subjectId))
    return { facts: { type: resource.type, exists: false } };
  const root = lookup(rootKey(resource));
  if (!root.known) return { missing: rootKey(resource) };
  if (root.value === null) return { facts: { type: resource.type, exists: false } };
  switch (resource.type) {
    case 'generation': {
      const g = root.value as CachedGeneration;
      const generation = { id: resource.id, creatorId: g.creatorId, deleted: g.deleted };
      if (g.projectId === null)
        return { facts: { type: 'generation', exists: true, generation, project: null, membership: null } };
      const p = projectOf(g.projectId, lookup);
      if ('missing' in p) return p;
      if (p.value === null)
        return { facts: { type: 'generation', exists: true, generation, project: null, membership: null } };
      const project = { id: g.projectId, ...p.value };
      const m = membershipIn(subjectId, p.value.teamId, lookup);
      if ('missing' in m) return m;
      return { facts: { type: 'generation', exists: true, generation, project, membership: m.value } };
    }
    case 'project': {
      const p = root.value as CachedProject;
      const project = { id: resource.id, ...p };
      const m = membershipIn(subjectId, p.teamId, lookup);
      if ('missing' in m) return m;
      return { facts: { type: 'project', exists: true, project, membership: m.value } };
    }
    case 'team': {
      const t = root.value as CachedTeam;
      const m = membershipIn(subjectId, resource.id, lookup);
      if ('missing' in m) return m;
      return {
        facts: {
          type: 'team',
          exists: true,
          team: { id: resource.id, ownerId: t.ownerId },
          membership: m.value,
        },
      };
    }
  }
}

/** The last subject found to be a uuid: a bulk asks about one subject a hundred times, tested once. */
let uuidSubject = '';
function isSubjectUuid(subjectId: string): boolean {
  if (subjectId === uuidSubject) return true;
  if (!isUuid(subjectId)) return false;
  uuidSubject = subjectId;
  return true;
}

// Module-level rather than closures inside `assemble`: it runs on every check, and a closure per
// call costs an allocation (and, under tsx/esbuild, a naming call) each time.
function membershipIn(
  subjectId: string,
  teamId: string | null,
  lookup: Lookup,
): { missing: string } | { value: MembershipFacts | null } {
  if (teamId === null) return { value: null };
  const key = factKeys.memberships(subjectId);
  const found = lookup(key);
  if (!found.known) return { missing: key };
  const rows = found.value as CachedMemberships | null;
  if (rows) for (const row of rows) if (row[0] === teamId) return { value: { role: row[1], active: row[2] } };
  return { value: null };
}

function projectOf(projectId: string, lookup: Lookup): { missing: string } | { value: CachedProject | null } {
  const key = factKeys.project(projectId);
  const found = lookup(key);
  return found.known ? { value: found.value as CachedProject | null } : { missing: key };
}
