import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { minRevisionOf } from '../../platform/http/context.js';
import { forbidden, unauthorized } from '../../platform/http/errors.js';
import type { Principal } from '../../platform/http/principal.js';
import { routeClassOf, routeOf } from '../../platform/http/request-context.js';
import type { UserRateLimiter } from '../../platform/http/user-rate-limit.js';
import type { CredentialFacts } from './credentials.js';
import { type AccessTokens, KEY_PREFIX, sha256 } from './tokens.js';

const MAX_CREDENTIAL_LENGTH = 4096;

export interface Authenticator {
  /**
   * Sync, the warm path: the principal (null: refused) when the token was verified before and its
   * session and user are in L1 at one revision; undefined when only `principalFor` can tell.
   */
  principalNow(authorization: string | undefined, minRevision?: number): Principal | null | undefined;
  /** `deferSession`: when the session is not cached, return the principal unchecked (see RoutePolicy). */
  principalFor(
    authorization: string | undefined,
    deferSession?: boolean,
    minRevision?: number,
  ): Promise<(Principal & { pending?: boolean }) | null>;
}

declare module 'fastify' {
  interface FastifyInstance {
    stillAuthenticated(request: FastifyRequest, minRevision: number): Promise<boolean>;
  }
}

export function createAuthenticator(deps: {
  tokens: AccessTokens;
  credentials: CredentialFacts;
  /** Told about each use of a service key (for its last_used_at). */
  onKeyUse: (keyId: string) => void;
  now?: () => number;
  /** False only when measuring (MEASURE_WITHOUT=session_liveness): the JWT alone then decides. */
  sessionLiveness?: boolean;
}): Authenticator {
  const now = deps.now ?? Date.now;
  const sessionLiveness = deps.sessionLiveness ?? true;
  function principalNow(authorization: string | undefined, minRevision = 0): Principal | null | undefined {
    const credential = bearer(authorization);
    if (!credential) return null;
    if (credential.startsWith(KEY_PREFIX)) return undefined;
    const claims = deps.tokens.known(credential);
    if (!claims) return claims;
    if (!sessionLiveness) return { kind: 'user', userId: claims.sub, role: 'user', sessionId: claims.sid };
    const role = deps.credentials.sessionRoleNow(claims.sid, claims.sub, now(), minRevision);
    if (!role) return role;
    return { kind: 'user', userId: claims.sub, role, sessionId: claims.sid };
  }

  return {
    principalNow,

    /** Null for anything that is not a valid, live credential. Never throws for bad input. */
    async principalFor(authorization, deferSession = false, minRevision = 0) {
      const known = principalNow(authorization, minRevision);
      if (known !== undefined) return known;
      const credential = bearer(authorization);
      if (!credential) return null;
      if (credential.startsWith(KEY_PREFIX)) {
        const key = await deps.credentials.serviceKey(sha256(credential).toString('hex'), now(), minRevision);
        if (!key) return null;
        deps.onKeyUse(key.keyId);
        return {
          kind: 'service_key',
          userId: key.userId,
          role: key.role,
          keyId: key.keyId,
          scopes: new Set(key.scopes),
        };
      }
      const claims = await deps.tokens.verify(credential);
      if (!claims) return null;
      if (!sessionLiveness) return { kind: 'user', userId: claims.sub, role: 'user', sessionId: claims.sid };
      // Not in L1: a route that checks resources reads the session's facts with its own, in one
      // round trip (L2's, else the database's) instead of one or two before it.
      if (deferSession) {
        return { kind: 'user', userId: claims.sub, role: 'user', sessionId: claims.sid, pending: true };
      }
      const role = await deps.credentials.sessionRole(claims.sid, claims.sub, now(), minRevision);
      if (!role) return null;
      return { kind: 'user', userId: claims.sub, role, sessionId: claims.sid };
    },
  };
}

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

/** The TCP peer itself is this machine and no proxy header says it relays someone else. */
function fromLoopback(request: FastifyRequest): boolean {
  const peer = request.raw.socket?.remoteAddress ?? '';
  return LOOPBACK.has(peer) && request.headers['x-forwarded-for'] === undefined;
}

function bearer(header: string | undefined): string | null {
  if (!header || header.length > MAX_CREDENTIAL_LENGTH + 7) return null;
  const space = header.indexOf(' ');
  if (space < 0 || header.slice(0, space).toLowerCase() !== 'bearer') return null;
  const value = header.slice(space + 1).trim();
  return value.length > 0 ? value : null;
}

/**
 * Every route is authenticated unless it declares `config: { public: true }`; service keys reach
 * only routes that declare the scope they need. Runs before body parsing, so an unauthenticated
 * caller cannot make the server parse a large body.
 */
export function installAuthentication(
  app: FastifyInstance,
  authenticator: Authenticator,
  options: {
    opsToken?: string | undefined;
    /** Without an OPS_TOKEN, operational routes answer loopback peers only (production). */
    opsLoopbackOnly?: boolean;
    limitUser?: UserRateLimiter | null;
  } = {},
) {
  const limitUser = options.limitUser ?? null;
  const opsToken = options.opsToken ? Buffer.from(`Bearer ${options.opsToken}`) : null;
  app.decorateRequest('pendingSession', null);
  // For answers that outlive their request (event streams): is the caller's credential still live,
  // on facts at least `minRevision` fresh?
  app.decorate(
    'stillAuthenticated',
    async (request: FastifyRequest, minRevision: number) =>
      (await authenticator.principalFor(request.headers.authorization, false, minRevision)) !== null,
  );
  // Fail closed: a success that never had its deferred session check would be an unauthenticated
  // answer. Only a route bug can get here; it becomes a 500, never a leak.
  // Only on the routes that may defer (no cost on the others).
  const guard = (
    request: FastifyRequest,
    reply: FastifyReply,
    payload: unknown,
    done: (err: Error | null, value?: unknown) => void,
  ) => {
    const pending = request.pendingSession;
    if (pending && !pending.verified && reply.statusCode < 400) {
      done(new Error(`route ${request.routeOptions.url} answered without checking the deferred session`));
      return;
    }
    done(null, payload);
  };
  app.addHook('onRoute', (route) => {
    if (!route.config?.deferSession) return;
    const existing = route.preSerialization;
    route.preSerialization = [...(Array.isArray(existing) ? existing : existing ? [existing] : []), guard];
  });
  /** What the route's policy says about this principal; throws the refusal. */
  function admit(request: FastifyRequest, principal: (Principal & { pending?: boolean }) | null) {
    const policy = routeOf(request).config;
    if (!principal)
      throw unauthorized('Access token is missing, invalid, expired or revoked', 'invalid_token');
    if (principal.pending && principal.kind === 'user') {
      request.pendingSession = { sessionId: principal.sessionId, userId: principal.userId };
    }
    if (principal.kind === 'service_key') {
      if (!policy.scope)
        throw forbidden('This route needs a signed-in user, not a service key', 'session_required');
      if (policy.scope !== 'any' && !principal.scopes.has(policy.scope)) {
        throw forbidden(`This service key lacks the ${policy.scope} scope`, 'insufficient_scope');
      }
    }
    if (policy.admin && principal.role !== 'admin') {
      throw forbidden('This route is for administrators', 'admin_required');
    }
    limitUser?.(principal.userId, routeClassOf(request));
    request.principal = principal;
  }

  function opsGate(request: FastifyRequest) {
    if (!opsToken) {
      // In production, operational data (and the self-test) without OPS_TOKEN is for this machine
      // only: a direct loopback peer, not one relaying someone else's request.
      if (options.opsLoopbackOnly && !fromLoopback(request))
        throw forbidden(
          'Operational endpoints answer only on loopback until OPS_TOKEN is set',
          'ops_token_required',
        );
      return;
    }
    const given = Buffer.from(request.headers.authorization ?? '');
    // Constant time: the comparison must not reveal how much of the token was right.
    if (given.length !== opsToken.length || !timingSafeEqual(given, opsToken)) {
      throw unauthorized('This operational endpoint needs the operations token', 'invalid_token');
    }
  }

  /** Admits the principal or hands the refusal to Fastify; `done` is called outside the try. */
  function admitThen(
    request: FastifyRequest,
    principal: (Principal & { pending?: boolean }) | null,
    done: (error?: Error) => void,
  ) {
    let refusal: Error | undefined;
    try {
      admit(request, principal);
    } catch (error) {
      refusal = error as Error;
    }
    done(refusal);
  }

  function opsThen(request: FastifyRequest, done: (error?: Error) => void) {
    let refusal: Error | undefined;
    try {
      opsGate(request);
    } catch (error) {
      refusal = error as Error;
    }
    done(refusal);
  }

  // Callback style: a warm request (token verified before, session and user in L1) is admitted
  // synchronously, with no promise and no closure; only the others wait for the credential's facts.
  app.addHook('onRequest', (request, _reply, done) => {
    // No route matched: the not-found handler answers, with no credential needed.
    const route = routeOf(request);
    if (route.url === undefined) return done();
    const policy = route.config;
    if (policy.public) return done();
    if (policy.ops) return opsThen(request, done);
    // A consistency token covers credentials too: a revoked session or key is refused with it.
    const minRevision = minRevisionOf(request) ?? 0;
    const authorization = request.headers.authorization;
    const known = authenticator.principalNow(authorization, minRevision);
    if (known !== undefined) return admitThen(request, known, done);
    authenticator.principalFor(authorization, policy.deferSession === true, minRevision).then(
      (principal) => admitThen(request, principal, done),
      (error: Error) => done(error),
    );
  });
}

/** For handlers of authenticated routes: the principal is always there once the hook has run. */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw unauthorized();
  return request.principal;
}

export function userSessionOf(request: FastifyRequest): Principal & { kind: 'user' } {
  const principal = principalOf(request);
  if (principal.kind !== 'user')
    throw forbidden('This route needs a signed-in user, not a service key', 'session_required');
  return principal;
}
