import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Kysely } from 'kysely';
import type { DB } from '../../platform/db/schema.js';
import { accessContext, minRevisionOf } from '../../platform/http/context.js';
import { badRequest, forbidden } from '../../platform/http/errors.js';
import type { Principal } from '../../platform/http/principal.js';
import { errors } from '../../platform/http/schemas.js';
import type { AuthzTally } from '../../platform/observability/authz-tally.js';
import { principalOf } from '../auth/authenticate.js';
import { type AuthzEngine, type CacheLayer, type CheckResult, denialReason } from './engine.js';
import { explainFacts } from './explain.js';
import { lookupResources } from './lookup.js';
import {
  CheckAnswer,
  CheckBodyWithExample,
  CheckBulkAnswer,
  CheckBulkBody,
  ExplainAnswer,
  LookupAnswer,
  LookupBody,
} from './schemas.js';
import { PERMISSIONS, type Permission, type ResourceType } from './types.js';

const tags = ['authorization'];
const config = { scope: 'authz:check' as const, routeClass: 'critical_auth' as const };
/** Check routes answer only through the engine, so a cold session is checked with the facts. */
const checkConfig = { ...config, deferSession: true };

/**
 * A caller asks about themselves. Only a service key with `authz:check` that belongs to an
 * administrator may ask about someone else: any user can mint an `authz:check` key, and answers
 * about other people's resources (lookups above all) would otherwise list or confirm what that user
 * cannot see. (Route scope already requires `authz:check` of every key here.)
 */
function subjectFor(principal: Principal, requested: string | undefined): string {
  if (requested === undefined || requested.toLowerCase() === principal.userId) return principal.userId;
  if (principal.kind === 'service_key' && principal.scopes.has('authz:check') && principal.role === 'admin')
    return requested;
  throw forbidden(
    'Only an administrator’s service key with the authz:check scope can ask about another subject',
    'subject_forbidden',
  );
}

function requirePermissionOfType(type: ResourceType, permission: string, field: string): Permission {
  if (!(PERMISSIONS[type] as readonly string[]).includes(permission)) {
    throw badRequest(`${permission} is not a permission of a ${type}`, [
      { field, message: `must be one of ${PERMISSIONS[type].join(', ')}` },
    ]);
  }
  return permission as Permission;
}

/**
 * Counts one answered check (velro_authz_decisions_total; a denial also by reason, and towards the
 * caller's probing figure). Returns whether it was allowed.
 */
function counted(
  tally: AuthzTally | null,
  principal: Principal,
  result: CheckResult,
  permission: Permission,
): boolean {
  const allowed = result.decision.permissions.includes(permission);
  if (tally !== null) {
    const byKey = principal.kind === 'service_key';
    if (allowed) tally.allowed(byKey, result.cache);
    else tally.denied(byKey, result.cache, denialReason(result), principal.userId);
  }
  return allowed;
}

/** The body of one check's answer, with its X-Cache header. */
function checkAnswer(reply: FastifyReply, result: CheckResult, xCache: boolean, allowed: boolean) {
  if (xCache) reply.header('x-cache', result.cache);
  return {
    allowed,
    permissions: result.decision.permissions,
    access_method: result.decision.accessMethod,
    consistency_token: String(result.revision),
  };
}

/** One check's answer in a bulk. The decision's permissions are a frozen array: handed on, not copied. */
function answer(result: CheckResult, allowed: boolean) {
  return {
    allowed,
    permissions: result.decision.permissions,
    access_method: result.decision.accessMethod,
  };
}

/** The weakest layer any answer came from: one cold fact makes the whole answer a miss. */
function setCacheHeader(reply: FastifyReply, results: CheckResult[]) {
  const order: CacheLayer[] = ['miss', 'l2', 'l1'];
  const worst = results.reduce<CacheLayer>(
    (acc, r) => (order.indexOf(r.cache) < order.indexOf(acc) ? r.cache : acc),
    'l1',
  );
  reply.header('x-cache', results.length === 0 ? 'miss' : worst);
}

export async function authzRoutes(
  fastify: FastifyInstance,
  opts: {
    engine: AuthzEngine;
    readDb: Kysely<DB>;
    /** Counts a bulk request's checks against the caller's per-user budget (throws 429). */
    limitChecks?: (userId: string, count: number) => void;
    /** False only when measuring (MEASURE_WITHOUT=x_cache). */
    xCache?: boolean;
    /** Counts each answered check (see `counted`). */
    tally?: AuthzTally | undefined;
  },
) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { engine } = opts;
  const tally = opts.tally ?? null;
  const xCache = opts.xCache !== false;
  const cacheHeader = xCache ? setCacheHeader : () => {};

  app.post(
    '/authz/check',
    {
      config: checkConfig,
      schema: {
        operationId: 'checkPermission',
        summary: 'May the subject (default: me) do this to that resource?',
        tags,
        body: CheckBodyWithExample,
        response: { 200: CheckAnswer, ...errors(400, 401, 403) },
      },
    },
    // Not async: a warm check (facts in L1) is answered synchronously, with no promise. No closure
    // is made on that path either (each costs, the more so where names are kept on functions).
    (request, reply) => {
      const { resource, subject } = request.body;
      const permission = requirePermissionOfType(resource.type, request.body.permission, 'body.permission');
      const principal = principalOf(request);
      const subjectId = subjectFor(principal, subject);
      const minRevision = minRevisionOf(request);
      const pending = request.pendingSession ?? undefined;
      const now = engine.checkNowOrLater(subjectId, resource, minRevision, pending);
      if (!(now instanceof Promise))
        return checkAnswer(reply, now, xCache, counted(tally, principal, now, permission));
      return now.then((result) =>
        checkAnswer(reply, result, xCache, counted(tally, principal, result, permission)),
      );
    },
  );

  app.post(
    '/authz/check-bulk',
    {
      config: { ...checkConfig, routeClass: 'heavy' as const },
      schema: {
        operationId: 'checkPermissionsBulk',
        summary: 'Up to 1,000 checks, answered in order; the cold ones in one database round trip',
        tags,
        body: CheckBulkBody,
        response: {
          200: CheckBulkAnswer,
          ...errors(400, 401, 403, 413, 429),
        },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      // Checks are counted, not requests: a bulk of 1,000 costs what 1,000 single checks would.
      opts.limitChecks?.(principal.userId, request.body.checks.length);
      const checks = request.body.checks.map((c, i) => ({
        subjectId: subjectFor(principal, c.subject),
        resource: c.resource,
        permission: requirePermissionOfType(c.resource.type, c.permission, `body.checks.${i}.permission`),
      }));
      const ctx = accessContext(request);
      const results = await engine.checkMany(checks, ctx.minRevision, ctx.pendingSession);
      cacheHeader(reply, results);
      const revision = Math.max(0, ...results.map((r) => r.revision));
      return {
        results: results.map((r, i) =>
          answer(r, counted(tally, principal, r, (checks[i] as { permission: Permission }).permission)),
        ),
        consistency_token: String(revision),
      };
    },
  );

  app.post(
    '/authz/lookup',
    {
      config,
      schema: {
        operationId: 'lookupResources',
        summary: 'Ids of the resources of a type on which the subject holds a permission, newest first',
        tags,
        body: LookupBody,
        response: {
          200: LookupAnswer,
          ...errors(400, 401, 403),
        },
      },
    },
    async (request) => {
      const { resource_type: type, subject, limit, cursor } = request.body;
      const permission = requirePermissionOfType(type, request.body.permission, 'body.permission');
      const page = await lookupResources(opts.readDb, {
        subjectId: subjectFor(principalOf(request), subject),
        type,
        permission,
        limit: limit ?? 20,
        cursor,
      });
      return { items: page.ids, next_cursor: page.next_cursor };
    },
  );

  app.post(
    '/authz/explain',
    {
      config: checkConfig,
      schema: {
        operationId: 'explainPermission',
        summary: 'Which rule allowed or denied, and on which facts',
        tags,
        body: CheckBodyWithExample,
        response: {
          200: ExplainAnswer,
          ...errors(400, 401, 403),
        },
      },
    },
    async (request, reply) => {
      const { resource, subject } = request.body;
      const permission = requirePermissionOfType(resource.type, request.body.permission, 'body.permission');
      const principal = principalOf(request);
      const subjectId = subjectFor(principal, subject);
      const ctx = accessContext(request);
      const result = await engine.check(subjectId, resource, ctx.minRevision, ctx.pendingSession);
      cacheHeader(reply, [result]);
      const allowed = counted(tally, principal, result, permission);
      const visible = result.decision.permissions.includes('view');
      // Deleted-or-invisible reads exactly like "does not exist" to someone who cannot view it.
      const decision = visible ? result.decision : { rule: 6, reason: 'no rule grants access' };
      return {
        ...answer(result, allowed),
        permission,
        rule: decision.rule,
        reason: decision.reason,
        facts: visible ? explainFacts(result.facts) : null,
        consistency_token: String(result.revision),
      };
    },
  );
}
