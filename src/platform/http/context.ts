import type { FastifyReply, FastifyRequest } from 'fastify';
import { CONSISTENCY_HEADER } from '../cache/revision.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Resolves once this process has applied every invalidation up to `revision` (or gave up). */
    awaitRevision(revision: number): Promise<boolean>;
    /** False only when measuring (MEASURE_WITHOUT=consistency_token); undecorated means true. */
    readsConsistencyTokens?: boolean;
  }
}

const TOKEN = /^\d{1,15}$/;

/** The consistency token the client sent, if any: answers must come from facts at least that fresh. */
export function minRevisionOf(request: FastifyRequest): number | undefined {
  // Off only when measuring what reading the token costs (MEASURE_WITHOUT=consistency_token).
  if (request.server.readsConsistencyTokens === false) return undefined;
  const token = request.headers[CONSISTENCY_HEADER];
  return typeof token === 'string' && TOKEN.test(token) ? Number(token) : undefined;
}

/**
 * What services need to know about the request: for audit (id, address) and for consistency (the
 * token the client sent: answers must come from facts at least that fresh). The one request
 * context: every field comes from what the authentication hook set on the request (principal,
 * pending session) or from the request itself, and this is the only place that reads them for
 * services. It is made when a handler asks rather than by the hook for every request, on purpose:
 * the warm checks answer without it, and an object per request they never read would be pure cost
 * on the path measured in microseconds.
 */
export function accessContext(request: FastifyRequest): {
  requestId: string;
  ip: string | null;
  minRevision: number | undefined;
  pendingSession: NonNullable<FastifyRequest['pendingSession']> | undefined;
  sessionId: string | undefined;
} {
  const principal = request.principal;
  return {
    requestId: request.id,
    ip: request.ip || null,
    minRevision: minRevisionOf(request),
    pendingSession: request.pendingSession ?? undefined,
    sessionId: principal?.kind === 'user' ? principal.sessionId : undefined,
  };
}

/**
 * A write that changed authorization facts tells the client the revision it committed at, and
 * answers only once this process has applied that revision's invalidations, so the writer's own
 * next request never sees the old facts here.
 */
export async function sendRevision(reply: FastifyReply, revision: number | null): Promise<void> {
  if (revision === null) return;
  reply.header(CONSISTENCY_HEADER, String(revision));
  await reply.server.awaitRevision(revision);
}
