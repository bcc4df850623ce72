import { type Kysely, sql } from 'kysely';
import type { DB } from '../../platform/db/schema.js';
import { cutPage, type KeysetList, pageQuery, timeSerialKeyset } from '../../platform/http/cursor.js';

/**
 * Reading the audit log: newest first, keyset pages on (at, id). Every filter has an index ending
 * in (at DESC, id DESC) (migration 006), so a page is one index range scan whatever the filter.
 */

export interface AuditFilter {
  actorId?: string | undefined;
  action?: string | undefined;
  resourceType?: string | undefined;
  resourceId?: string | undefined;
  decision?: 'allow' | 'deny' | undefined;
  /** Inclusive. */
  from?: string | undefined;
  /** Exclusive. */
  to?: string | undefined;
  /** Only these actions (a user's security events). */
  actions?: readonly string[] | undefined;
}

export interface AuditRecord {
  id: number;
  at: string;
  actor_id: string | null;
  action: string;
  resource_type: string | null;
  resource_id: string | null;
  decision: 'allow' | 'deny' | null;
  reason: string | null;
  request_id: string | null;
  ip: string | null;
  details: Record<string, unknown> | null;
}

/**
 * What a user's own security history holds (`GET /auth/security-events`): events whose actor is the
 * user. Migration 006's partial index `audit_events_security_idx` lists the same actions: adding
 * one here needs a migration that widens it (test/audit-api.test.ts checks the plan). A failed sign-in is recorded with the account it tried as actor, so the owner sees it; one
 * for an email with no account has no actor and is seen by nobody but administrators.
 */
export const SECURITY_ACTIONS = [
  'auth.register',
  'auth.login',
  'auth.logout',
  'auth.logout_all',
  'auth.refresh_token_reuse',
  'auth.password_changed',
  'auth.password_change_failed',
  'service_key.create',
  'service_key.revoke',
] as const;

/** Newest first on (at, id); the cursor is the last event's exact `at::text` and id. */
const auditList: KeysetList<{ cursor_at: string; id: string }, { at: string; id: number }> = {
  keyset: timeSerialKeyset,
  columns: ['at', 'id'],
  keyOf: (row) => ({ at: row.cursor_at, id: Number(row.id) }),
};

export function auditQuery(
  db: Kysely<DB>,
  filter: AuditFilter,
  page: { limit: number; cursor?: string | undefined },
) {
  let query = db
    .selectFrom('audit_events')
    .select([
      'id',
      'at',
      sql<string>`at::text`.as('cursor_at'),
      'actor_id',
      'action',
      'resource_type',
      'resource_id',
      'decision',
      'reason',
      'request_id',
      sql<string | null>`host(ip)`.as('ip'),
      'details',
    ]);
  if (filter.actorId !== undefined) query = query.where('actor_id', '=', filter.actorId);
  if (filter.action !== undefined) query = query.where('action', '=', filter.action);
  // Constants written into the statement (never user input): a generic plan can then use the
  // partial index whose predicate lists them (migration 006, audit_events_security_idx).
  if (filter.actions !== undefined)
    query = query.where(sql<boolean>`action IN (${sql.join(filter.actions.map((a) => sql.lit(a)))})`);
  if (filter.resourceType !== undefined) query = query.where('resource_type', '=', filter.resourceType);
  if (filter.resourceId !== undefined) query = query.where('resource_id', '=', filter.resourceId);
  if (filter.decision !== undefined) query = query.where('decision', '=', filter.decision);
  if (filter.from !== undefined) query = query.where(sql<boolean>`at >= ${filter.from}::timestamptz`);
  if (filter.to !== undefined) query = query.where(sql<boolean>`at < ${filter.to}::timestamptz`);
  return pageQuery(query, auditList, page);
}

export async function readAudit(
  db: Kysely<DB>,
  filter: AuditFilter,
  page: { limit: number; cursor?: string | undefined },
): Promise<{ items: AuditRecord[]; next_cursor: string | null }> {
  const { rows, next_cursor } = cutPage(await auditQuery(db, filter, page).execute(), page.limit, auditList);
  return {
    items: rows.map((r) => ({
      id: Number(r.id),
      at: (r.at instanceof Date ? r.at : new Date(r.at)).toISOString(),
      actor_id: r.actor_id,
      action: r.action,
      resource_type: r.resource_type,
      resource_id: r.resource_id,
      decision: r.decision,
      reason: r.reason,
      request_id: r.request_id,
      ip: r.ip,
      details: (r.details as Record<string, unknown> | null) ?? null,
    })),
    next_cursor,
  };
}
