/**
 * The fact kinds, declared once: for each kind the prefix of its cache keys (the same prefix the
 * database's `authz_key()` announces when the row changes), its key, the columns of the facts row it
 * is read from, and how a row becomes the cached value. The facts statements' column list, the
 * loader's row mapping (facts.ts), the credentials loader (auth/credentials.ts) and warming
 * (warming.ts) all read from here.
 *
 * Before this table, a kind was declared in up to six places: its key prefix in
 * platform/cache/keys.ts (the `FactKind` union, now `KeyKind`, and the unused `FACT_KINDS` set); its key function in
 * authz/facts.ts (`factKeys`) or auth/credentials.ts (`credentialKeys`); its cached type in facts.ts
 * (`GenerationFact`, `ProjectFact`, `TeamFact`, `MembershipsFact`) or credentials.ts (`SessionFact`,
 * `UserFact`, `ServiceKeyFact`); its columns in facts.ts (`COLUMN_NAMES`, `FactsRow`, and both
 * statements' select lists); its row mapping in facts.ts (`addResource`, `addSession`, the
 * memberships lines of the loader), again in credentials.ts (`loadSession`, `loadServiceKey`,
 * `userEntry`) and again in warming.ts (`warmSubjects`); and its invalidation in migration 004's
 * `authz_changed()` CASE (table → key), whose triggers migration 009 defers to commit.
 *
 * Adding a fact kind now: an entry here (its columns in `FactsRow`, their SQL, and the kind in
 * `FACTS_ROW_KINDS`: facts.ts builds both statements' select lists from it), its prefix in keys.ts's
 * `KeyKind` (the compiler asks for it), a migration whose trigger announces `authz_key('<prefix>', …)`
 * when the row changes, and the policy that reads it. Only a kind read from a table the statements
 * do not join yet also needs that join in facts.ts; any change to the statements' text needs new
 * statement names there. Nothing here does I/O.
 */
import { type KeyKind, oneFieldKey } from '../../platform/cache/keys.js';
import type { Scope } from '../../platform/http/principal.js';
import type { TeamRole, Visibility } from './types.js';

/** The values cached per key (null in the cache: the row does not exist). */
export interface CachedGeneration {
  creatorId: string;
  projectId: string | null;
  deleted: boolean;
}
export interface CachedProject {
  ownerId: string;
  teamId: string | null;
  visibility: Visibility;
  deleted: boolean;
}
export interface CachedTeam {
  ownerId: string;
}
/** Every team the subject belongs to: [team id, role, active]. */
export type CachedMemberships = [string, TeamRole, boolean][];
export interface CachedSession {
  userId: string;
  revoked: boolean;
  expiresAt: number;
}
export interface CachedUser {
  role: 'user' | 'admin';
  active: boolean;
}
export interface CachedServiceKey {
  keyId: string;
  userId: string;
  scopes: Scope[];
  revoked: boolean;
  expiresAt: number | null;
}

/**
 * One row of the facts statements (facts.ts), by column: which resource or subject it is about,
 * then each kind's columns. Every row carries every column; those of other kinds are null.
 */
export interface FactsRow {
  rev: number;
  type: string;
  id: string | null;
  subject: string | null;
  mems: CachedMemberships | null;
  g_creator: string | null;
  g_project: string | null;
  g_deleted: boolean | null;
  g_found: boolean | null;
  p_id: string | null;
  p_owner: string | null;
  p_team: string | null;
  p_visibility: Visibility | null;
  p_deleted: boolean | null;
  t_found: boolean | null;
  t_owner: string | null;
  s_id: string | null;
  s_user: string | null;
  s_revoked: boolean | null;
  s_expires_ms: number | null;
  u_id: string | null;
  u_role: 'user' | 'admin' | null;
  u_active: boolean | null;
}

/** The service-key statement's row (auth/credentials.ts): the key's columns, and its user's. */
export interface ServiceKeyRow {
  k_id: string | null;
  k_user: string | null;
  k_scopes: Scope[] | null;
  k_revoked: boolean | null;
  k_expires_ms: number | null;
}

export type FactsColumn = keyof FactsRow;

/** What a fact kind declares. `Row`: the columns `valueOf` reads (a facts row has them all). */
interface FactKindSpec<Row, Value> {
  /** Cache keys begin with it; the database announces `authz_key(prefix, …)` when the row changes. */
  prefix: KeyKind;
  /** The table whose changes invalidate this kind (the trigger's CASE in the migrations). */
  table: string;
  /** Its columns in the row it is read from. */
  columns: readonly (keyof Row & string)[];
  /** The cached value a row holds (null: the row says this does not exist). */
  valueOf: (row: Row) => Value | null;
}

/**
 * A kind read from the facts statements: the id a given facts row holds a value for, if any, and
 * how the statements select its columns (facts.ts builds their select lists from this).
 */
interface FactsRowKindSpec<Row, Value> extends FactKindSpec<Row, Value> {
  idIn: (row: FactsRow) => string | null;
  /**
   * Each column's SQL expression and type, over the aliases the statements join (`g` generations,
   * `p` projects, `t` teams, `s` sessions, `u` users), and the part of the general statement whose
   * rows carry it: `resource` (one row per resource checked) or `session`. Absent (memberships):
   * the statements select the column themselves.
   */
  sql?: {
    read: 'resource' | 'session';
    columns: { [C in keyof Row & string]: [expr: string, type: string] };
  };
}

function factKind<Row, Value>(spec: FactKindSpec<Row, Value>) {
  const { prefix } = spec;
  return { ...spec, key: oneFieldKey(prefix) };
}

function factsRowKind<Row extends Partial<FactsRow>, Value>(spec: FactsRowKindSpec<Row, Value>) {
  return { ...factKind(spec), idIn: spec.idIn, sql: spec.sql };
}

const generation = factsRowKind({
  prefix: 'gen',
  table: 'generations',
  columns: ['g_creator', 'g_project', 'g_deleted', 'g_found'],
  sql: {
    read: 'resource',
    columns: {
      g_creator: ['g.user_id', 'uuid'],
      g_project: ['g.project_id', 'uuid'],
      g_deleted: ['g.deleted_at IS NOT NULL', 'boolean'],
      g_found: ['g.id IS NOT NULL', 'boolean'],
    },
  },
  idIn: (row) => (row.type === 'generation' ? row.id : null),
  valueOf: (
    row: Pick<FactsRow, 'g_creator' | 'g_project' | 'g_deleted' | 'g_found'>,
  ): CachedGeneration | null =>
    row.g_found
      ? { creatorId: row.g_creator as string, projectId: row.g_project, deleted: row.g_deleted === true }
      : null,
});

const project = factsRowKind({
  prefix: 'proj',
  table: 'projects',
  columns: ['p_id', 'p_owner', 'p_team', 'p_visibility', 'p_deleted'],
  sql: {
    read: 'resource',
    columns: {
      p_id: ['p.id', 'uuid'],
      p_owner: ['p.owner_id', 'uuid'],
      p_team: ['p.team_id', 'uuid'],
      p_visibility: ['p.visibility', 'text'],
      p_deleted: ['p.deleted_at IS NOT NULL', 'boolean'],
    },
  },
  // A row about a generation carries its project too; a row about a missing project says so.
  idIn: (row) => row.p_id ?? (row.type === 'project' ? row.id : null),
  valueOf: (
    row: Pick<FactsRow, 'p_id' | 'p_owner' | 'p_team' | 'p_visibility' | 'p_deleted'>,
  ): CachedProject | null =>
    row.p_id === null
      ? null
      : {
          ownerId: row.p_owner as string,
          teamId: row.p_team,
          visibility: row.p_visibility as Visibility,
          deleted: row.p_deleted === true,
        },
});

const team = factsRowKind({
  prefix: 'team',
  table: 'teams',
  columns: ['t_found', 't_owner'],
  sql: {
    read: 'resource',
    columns: { t_found: ['t.id IS NOT NULL', 'boolean'], t_owner: ['t.owner_id', 'uuid'] },
  },
  idIn: (row) => (row.type === 'team' ? row.id : null),
  valueOf: (row: Pick<FactsRow, 't_found' | 't_owner'>): CachedTeam | null =>
    row.t_found ? { ownerId: row.t_owner as string } : null,
});

/** Keyed by user: the subject's memberships in every team (team_members rows). */
const memberships = factsRowKind({
  prefix: 'mems',
  table: 'team_members',
  columns: ['mems'],
  idIn: (row) => row.subject,
  valueOf: (row: Pick<FactsRow, 'mems'>): CachedMemberships | null => row.mems ?? [],
});

/** An access token's session (loaded with a check when asked to, and by auth/credentials.ts). */
const session = factsRowKind({
  prefix: 'sess',
  table: 'sessions',
  columns: ['s_id', 's_user', 's_revoked', 's_expires_ms'],
  sql: {
    read: 'session',
    columns: {
      s_id: ['s.id', 'uuid'],
      s_user: ['s.user_id', 'uuid'],
      s_revoked: ['s.revoked_at IS NOT NULL', 'boolean'],
      s_expires_ms: ['(extract(epoch FROM s.expires_at) * 1000)::float8', 'float8'],
    },
  },
  idIn: (row) => row.s_id,
  valueOf: (row: Pick<FactsRow, 's_id' | 's_user' | 's_revoked' | 's_expires_ms'>): CachedSession | null =>
    row.s_id
      ? { userId: row.s_user as string, revoked: row.s_revoked === true, expiresAt: row.s_expires_ms ?? 0 }
      : null,
});

/** A session's or a service key's user: role and whether the account is active. */
const user = factsRowKind({
  prefix: 'user',
  table: 'users',
  columns: ['u_id', 'u_role', 'u_active'],
  sql: {
    read: 'session',
    columns: { u_id: ['u.id', 'uuid'], u_role: ['u.role', 'text'], u_active: ['u.is_active', 'boolean'] },
  },
  idIn: (row) => row.u_id,
  valueOf: (row: Pick<FactsRow, 'u_id' | 'u_role' | 'u_active'>): CachedUser | null =>
    row.u_id ? { role: row.u_role as 'user' | 'admin', active: row.u_active === true } : null,
});

/** Keyed by the hex of the secret's hash; read by its own statement (auth/credentials.ts), not the facts rows. */
const serviceKey = factKind({
  prefix: 'svckey',
  table: 'service_keys',
  columns: ['k_id', 'k_user', 'k_scopes', 'k_revoked', 'k_expires_ms'],
  valueOf: (row: ServiceKeyRow): CachedServiceKey | null =>
    row.k_id
      ? {
          keyId: row.k_id,
          userId: row.k_user as string,
          scopes: row.k_scopes ?? [],
          revoked: row.k_revoked === true,
          expiresAt: row.k_expires_ms,
        }
      : null,
});

/** Every fact kind. */
export const factKinds = { generation, project, team, memberships, session, user, serviceKey };

/**
 * The kinds the facts statements read, in the order of their columns in the row (after `rev`,
 * `type`, `id` and `subject`).
 */
export const FACTS_ROW_KINDS = [memberships, generation, project, team, session, user] as const;

/** The facts row's columns in the order both statements return them. */
export const FACTS_COLUMNS: readonly FactsColumn[] = [
  'rev',
  'type',
  'id',
  'subject',
  ...FACTS_ROW_KINDS.flatMap((kind) => kind.columns),
];

/** The entries (key → value) one facts row holds, added to `entries`. */
export function addFactsRow(entries: Map<string, unknown>, row: FactsRow): void {
  for (const kind of FACTS_ROW_KINDS) {
    const id = kind.idIn(row);
    if (id !== null) entries.set(kind.key(id), kind.valueOf(row));
  }
}
