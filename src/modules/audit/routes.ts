import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import { Type } from 'typebox';
import type { DB } from '../../platform/db/schema.js';
import { minRevisionOf } from '../../platform/http/context.js';
import { badRequest } from '../../platform/http/errors.js';
import { errors, PageQuery, page } from '../../platform/http/schemas.js';
import { principalOf } from '../auth/authenticate.js';
import { readAudit, SECURITY_ACTIONS } from './read.js';
import { AuditQuery } from './schemas.js';

export interface AuditRouteOptions {
  /**
   * The administrators' reads: filtered scans, on the analytics pool — a replica when configured,
   * unless the request carries a consistency token (then the primary: SPEC §6 rule 4).
   */
  adminDb: (minRevision: number | undefined) => Kysely<DB>;
  /** A user's own events, on the primary: an event shows up as soon as its request has answered. */
  userDb: Kysely<DB>;
}

/**
 * What PostgreSQL's timestamptz accepts of ISO 8601 text: `date-time` alone admits year 0 and zone
 * offsets up to 23:59, which PostgreSQL refuses (its offsets stop at 15:59).
 */
function timeField(value: string | undefined, field: string): void {
  if (value === undefined) return;
  const year = Number(value.slice(0, 4));
  const offsetHours = /([+-])(\d{2}):?\d{2}$/.exec(value)?.[2];
  if (!(year >= 1) || Number(offsetHours ?? 0) > 15 || Number.isNaN(Date.parse(value)))
    throw badRequest(`${field} is not a time`, [
      { field: `query.${field}`, message: 'must be a date-time from year 1' },
    ]);
}

/**
 * The audit log, read. Administrators filter everything; a user reads their own security history
 * and nothing else (the actor is the caller, never a parameter, and a cursor only narrows that).
 */
export async function auditRoutes(fastify: FastifyInstance, opts: AuditRouteOptions) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();

  app.get(
    '/admin/audit',
    {
      config: { scope: 'admin', admin: true },
      schema: {
        operationId: 'listAuditEvents',
        summary: 'The audit log, newest first, filtered (administrators)',
        description:
          'Every filter is optional and they combine (AND). `resource_type`/`resource_id` match the ' +
          'resource an event is about; `decision` only matches events that record one (authorization ' +
          'denials, sign-ins, refresh-token reuse). `from` is inclusive, `to` exclusive. Keyset pages: ' +
          'pass `next_cursor` back as `cursor` with the same filters; events written meanwhile never ' +
          'shift a page (no duplicates, no gaps). Denials are written a fraction of a second after ' +
          'their answer (buffered), and with a read replica configured this list may lag the primary.',
        tags: ['admin'],
        querystring: AuditQuery,
        response: { 200: page(Type.Ref('AuditEvent')), ...errors(400, 401, 403) },
      },
    },
    async (request) => {
      const q = request.query;
      timeField(q.from, 'from');
      timeField(q.to, 'to');
      if (q.from !== undefined && q.to !== undefined && Date.parse(q.from) >= Date.parse(q.to)) {
        throw badRequest('to must be after from', [
          { field: 'query.to', message: 'is not after query.from' },
        ]);
      }
      return readAudit(
        opts.adminDb(minRevisionOf(request)),
        {
          actorId: q.actor?.toLowerCase(),
          action: q.action,
          resourceType: q.resource_type,
          resourceId: q.resource_id,
          decision: q.decision,
          from: q.from,
          to: q.to,
        },
        { limit: q.limit ?? 20, cursor: q.cursor },
      );
    },
  );

  app.get(
    '/auth/security-events',
    {
      // No service-key scope: a signed-in session only. A key acting for its user cannot read where
      // and when that user signed in (403 for every key, whatever its scopes).
      config: { routeClass: 'fast' },
      schema: {
        operationId: 'listSecurityEvents',
        summary: 'My security history, newest first',
        description:
          'Sign-ins (successful and failed, for this account), sign-outs, refresh-token reuse detections ' +
          '(the session was revoked), password changes and failed attempts, service-key creations and ' +
          'revocations. Only the caller’s own events; user sessions only (a service key gets 403).',
        tags: ['auth'],
        querystring: Type.Object(PageQuery),
        response: { 200: page(Type.Ref('SecurityEvent')), ...errors(400, 401, 403) },
      },
    },
    async (request) => {
      const userId = principalOf(request).userId;
      const found = await readAudit(
        opts.userDb,
        { actorId: userId, actions: SECURITY_ACTIONS },
        { limit: request.query.limit ?? 20, cursor: request.query.cursor },
      );
      return {
        items: found.items.map((e) => ({
          id: e.id,
          at: e.at,
          action: e.action,
          decision: e.decision,
          reason: e.reason,
          resource_type: e.resource_type,
          resource_id: e.resource_id,
          ip: e.ip,
          request_id: e.request_id,
          details: e.details,
        })),
        next_cursor: found.next_cursor,
      };
    },
  );
}
