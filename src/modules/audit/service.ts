import type { Kysely, QueryCreator } from 'kysely';
import { prepared } from '../../platform/db/prepared.js';
import type { DB } from '../../platform/db/schema.js';

export interface AuditEvent {
  actorId: string | null;
  action: string;
  resourceType?: string;
  resourceId?: string;
  decision?: 'allow' | 'deny';
  reason?: string;
  requestId?: string;
  ip?: string;
  details?: Record<string, unknown>;
}

/**
 * The request part of an audit event: the request's id, and its address only when it is known
 * (an event without one stores no address).
 */
export function auditRequest(context: {
  requestId: string;
  ip?: string | null | undefined;
}): Pick<AuditEvent, 'requestId' | 'ip'> {
  return context.ip ? { requestId: context.requestId, ip: context.ip } : { requestId: context.requestId };
}

/**
 * The INSERT of one audit event, for a write that wants its event in the same statement (as a
 * data-modifying CTE: `.with('audited', (qb) => auditInsert(qb, event).returning('id'))`).
 */
export function auditInsert(db: QueryCreator<DB>, event: AuditEvent) {
  return db.insertInto('audit_events').values(auditRow(event));
}

/** An audit event as its row in audit_events: the one mapping, for single and batched inserts. */
export function auditRow(event: AuditEvent) {
  return {
    actor_id: event.actorId,
    action: event.action,
    resource_type: event.resourceType ?? null,
    resource_id: event.resourceId ?? null,
    decision: event.decision ?? null,
    reason: event.reason ?? null,
    request_id: event.requestId ?? null,
    ip: event.ip ?? null,
    details: event.details ? JSON.stringify(event.details) : null,
  };
}

/**
 * The standalone INSERT of one event (`recordAudit`), compiled once (platform/db/prepared.ts): the
 * statement `auditInsert` builds, with every column of `auditRow` a parameter, in its order.
 * `auditInsert` itself stays an ordinary builder: it is a part of other statements (their CTEs).
 */
const insertAuditQuery = prepared((db: Kysely<DB>, p: ReturnType<typeof auditRow>) =>
  db.insertInto('audit_events').values({
    actor_id: p.actor_id,
    action: p.action,
    resource_type: p.resource_type,
    resource_id: p.resource_id,
    decision: p.decision,
    reason: p.reason,
    request_id: p.request_id,
    ip: p.ip,
    details: p.details,
  }),
);

/**
 * Security-relevant events. Pass the transaction of the write being audited so that the event
 * commits (or not) with it.
 */
export async function recordAudit(db: Kysely<DB>, event: AuditEvent): Promise<void> {
  await insertAuditQuery.run(db, auditRow(event));
}
