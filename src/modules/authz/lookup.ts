import { type Kysely, type RawBuilder, sql } from 'kysely';
import type { DB } from '../../platform/db/schema.js';
import { decodeTimeIdCursor, encodeTimeIdCursor } from '../../platform/http/cursor.js';
import { publicGrants, rolesGranting } from './policy.js';
import type { Permission, ResourceType } from './types.js';

export interface LookupQuery {
  subjectId: string;
  type: ResourceType;
  permission: Permission;
  limit: number;
  cursor?: string | undefined;
}

export interface LookupPage {
  ids: string[];
  next_cursor: string | null;
}

/**
 * Which resources of a type the subject holds a permission on, newest first, in keyset pages. The
 * rules are not restated here: the role lists and the public grant come from policy.ts, and a test
 * compares every lookup with `decide` over random worlds. Each branch is an index scan of its own,
 * limited before the union, so a page costs the same however many resources exist.
 */
export async function lookupResources(db: Kysely<DB>, query: LookupQuery): Promise<LookupPage> {
  const roles = rolesGranting(query.type, query.permission);
  const isPublic = publicGrants(query.type, query.permission);
  const after = query.cursor ? decodeTimeIdCursor(query.cursor) : null;
  const take = query.limit + 1;
  const S = query.subjectId;

  const before = (alias: string): RawBuilder<boolean> =>
    after
      ? sql`(${sql.ref(`${alias}.created_at`)}, ${sql.ref(`${alias}.id`)}) < (${after.at}::timestamptz, ${after.id}::uuid)`
      : sql`true`;
  const order = (alias: string) =>
    sql`ORDER BY ${sql.ref(`${alias}.created_at`)} DESC, ${sql.ref(`${alias}.id`)} DESC LIMIT ${take}`;

  let branches: RawBuilder<unknown>[];
  switch (query.type) {
    case 'project':
      branches = [
        sql`SELECT p.id, p.created_at FROM projects p
             WHERE p.owner_id = ${S} AND p.deleted_at IS NULL AND ${before('p')} ${order('p')}`,
        sql`SELECT p.id, p.created_at FROM team_members tm JOIN projects p ON p.team_id = tm.team_id
             WHERE tm.user_id = ${S} AND tm.is_active AND tm.role = ANY(${roles}::text[])
               AND p.visibility <> 'private' AND p.deleted_at IS NULL AND ${before('p')} ${order('p')}`,
      ];
      if (isPublic) {
        branches.push(sql`SELECT p.id, p.created_at FROM projects p
             WHERE p.visibility = 'public' AND p.deleted_at IS NULL AND ${before('p')} ${order('p')}`);
      }
      break;
    case 'generation':
      branches = [
        sql`SELECT g.id, g.created_at FROM generations g LEFT JOIN projects p ON p.id = g.project_id
             WHERE g.user_id = ${S} AND g.deleted_at IS NULL AND (p.id IS NULL OR p.deleted_at IS NULL)
               AND ${before('g')} ${order('g')}`,
        sql`SELECT g.id, g.created_at FROM projects p JOIN generations g ON g.project_id = p.id
             WHERE p.owner_id = ${S} AND p.deleted_at IS NULL AND g.deleted_at IS NULL AND ${before('g')} ${order('g')}`,
        sql`SELECT g.id, g.created_at FROM team_members tm
               JOIN projects p ON p.team_id = tm.team_id
               JOIN generations g ON g.project_id = p.id
             WHERE tm.user_id = ${S} AND tm.is_active AND tm.role = ANY(${roles}::text[])
               AND p.visibility <> 'private' AND p.deleted_at IS NULL AND g.deleted_at IS NULL
               AND ${before('g')} ${order('g')}`,
      ];
      if (isPublic) {
        branches.push(sql`SELECT g.id, g.created_at FROM projects p JOIN generations g ON g.project_id = p.id
             WHERE p.visibility = 'public' AND p.deleted_at IS NULL AND g.deleted_at IS NULL
               AND ${before('g')} ${order('g')}`);
      }
      break;
    case 'team':
      branches = [
        sql`SELECT t.id, t.created_at FROM teams t WHERE t.owner_id = ${S} AND ${before('t')} ${order('t')}`,
        sql`SELECT t.id, t.created_at FROM team_members tm JOIN teams t ON t.id = tm.team_id
             WHERE tm.user_id = ${S} AND tm.is_active AND tm.role = ANY(${roles}::text[])
               AND ${before('t')} ${order('t')}`,
      ];
      break;
  }

  const union = sql.join(
    branches.map((b) => sql`(${b})`),
    sql` UNION `,
  );
  const result = await sql<{ id: string; cursor_at: string }>`
    SELECT u.id, u.created_at::text AS cursor_at FROM (${union}) u
     ORDER BY u.created_at DESC, u.id DESC LIMIT ${take}`.execute(db);
  const rows = result.rows;
  const page = rows.slice(0, query.limit);
  const last = rows.length > query.limit ? page[page.length - 1] : undefined;
  return {
    ids: page.map((r) => r.id),
    next_cursor: last ? encodeTimeIdCursor(last.cursor_at, last.id) : null,
  };
}
