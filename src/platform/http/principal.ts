/** Who is calling, once authentication has run. Services receive this, never raw headers. */
export const SCOPES = [
  'projects:read',
  'projects:write',
  'generations:read',
  'generations:write',
  'media:read',
  'authz:check',
  'admin',
] as const;
export type Scope = (typeof SCOPES)[number];

export type Principal =
  | { kind: 'user'; userId: string; role: 'user' | 'admin'; sessionId: string }
  | {
      kind: 'service_key';
      userId: string;
      role: 'user' | 'admin';
      keyId: string;
      scopes: ReadonlySet<Scope>;
    };

export type RouteClass = 'ultra_fast' | 'critical_auth' | 'fast' | 'standard' | 'heavy';

/** Route-level policy, declared on each route in `config`. Authentication is the default. */
export interface RoutePolicy {
  /** No authentication at all. Must be said explicitly; a forgotten policy fails closed. */
  public?: boolean;
  /**
   * What a service key needs to call this route: one scope, or `any` for any live key. A route that
   * declares nothing is for signed-in user sessions only (minting keys, changing the password…).
   */
  scope?: Scope | 'any';
  /**
   * Operational endpoints (metrics, dashboard, performance): open, unless OPS_TOKEN is set, then
   * they need `Authorization: Bearer <OPS_TOKEN>` (a user token does not do).
   */
  ops?: boolean;
  /**
   * The route checks resources through the authorization engine and can take the access token's
   * session check into the same statement when that session is not cached (cold: one round trip
   * in all). Only for routes whose every success path goes through the engine; a response that
   * would leave the session unchecked fails closed.
   */
  deferSession?: boolean;
  /** Only users with role `admin` (and, for service keys, the `admin` scope as well). */
  admin?: boolean;
  routeClass?: RouteClass;
  /** A browser page (docs, dashboard): it gets the page header set, not the API one. */
  page?: boolean;
}

declare module 'fastify' {
  interface FastifyContextConfig extends RoutePolicy {}
  interface FastifyRequest {
    principal: Principal | null;
    /** Set when authentication left the session check to the engine (see `deferSession`). */
    pendingSession: { sessionId: string; userId: string; verified?: boolean } | null;
  }
}
