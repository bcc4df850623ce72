import { createRequire } from 'node:module';
import type { FastifyInstance } from 'fastify';
import { tooManyRequests } from './errors.js';
import type { RouteClass, RoutePolicy } from './principal.js';
import { errors } from './schemas.js';

interface WindowState {
  current: number;
  ttl: number;
}
interface LocalStore {
  incr(
    key: string,
    cb: (error: Error | null, state: WindowState) => void,
    timeWindow: number,
    max: number,
  ): void;
}

const require = createRequire(import.meta.url);
/** @fastify/rate-limit's in-process store: fixed windows in an LRU (toad-cache), answered synchronously. */
const LocalStoreCtor = require('@fastify/rate-limit/store/LocalStore.js') as new (
  continueExceeding: boolean,
  exponentialBackoff: boolean,
  cache?: number,
) => LocalStore;

/** The classes limited per user: reads, authorization checks and ordinary writes (SPEC §8). */
export const USER_LIMITED_CLASSES: ReadonlySet<RouteClass> = new Set(['fast', 'critical_auth', 'standard']);

const WINDOW_MS = 60_000;

/**
 * Checks asked through `/authz/check-bulk` count one by one (up to 1,000 a request), in a budget of
 * their own this many times the per-request limit: 60,000 checks a minute at the default 1,200.
 */
export const BULK_CHECKS_FACTOR = 50;

export type LimitClass = RouteClass | 'bulk_checks';

/**
 * Per-user, per-route-class request limits, counted in this process (SPEC §8): the hot path never
 * pays a network round trip for them, so with N instances a user may get up to N × the limit, which
 * is the trade the spec makes. Heavier routes keep their own, tighter limits (logins, generation
 * creates); `ultra_fast` routes are operational and not per user. Throws 429 + Retry-After.
 *
 * Counters live in an LRU of `maxKeys` (user, class) windows: a subject evicted by many others
 * starts a fresh window, which errs on the generous side, never on the strict one.
 */
export function createUserRateLimiter(options: { perMinute: number; maxKeys: number }) {
  if (options.perMinute <= 0) return null;
  const store = new LocalStoreCtor(false, false, options.maxKeys);
  const perMinute = options.perMinute;
  let limit = perMinute;
  let exceeded: WindowState | null = null;
  const record = (_error: Error | null, state: WindowState) => {
    exceeded = state.current > limit ? state : null;
  };
  /** Counts `count` units (requests, or bulk checks) of `limitClass` for the user. */
  return (userId: string, limitClass: LimitClass, count = 1): void => {
    if (limitClass !== 'bulk_checks' && !USER_LIMITED_CLASSES.has(limitClass)) return;
    limit = limitClass === 'bulk_checks' ? perMinute * BULK_CHECKS_FACTOR : perMinute;
    const key = `${userId}|${limitClass}`;
    // The store answers synchronously (an in-memory map): `record` has run when incr returns.
    for (let i = 0; i < count && exceeded === null; i++) store.incr(key, record, WINDOW_MS, limit);
    const state = exceeded as WindowState | null;
    if (state) {
      exceeded = null;
      const what = limitClass === 'bulk_checks' ? 'checks in bulk' : `${limitClass} requests`;
      throw tooManyRequests(
        Math.max(1, Math.ceil(state.ttl / 1000)),
        `Too many ${what} for this user; at most ${limit} a minute`,
      );
    }
  };
}

export type UserRateLimiter = NonNullable<ReturnType<typeof createUserRateLimiter>>;

/**
 * Documents the 429 on every route the limiter applies to (authenticated, of a limited class), so
 * the OpenAPI document says what a client can get. Registered before the routes.
 */
export function documentUserRateLimit(app: FastifyInstance): void {
  app.addHook('onRoute', (route) => {
    const config = route.config as RoutePolicy | undefined;
    if (config?.public || config?.ops) return;
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    const routeClass =
      config?.routeClass ?? (methods.every((m) => m === 'GET' || m === 'HEAD') ? 'fast' : 'standard');
    const response = route.schema?.response as Record<string, unknown> | undefined;
    if (!USER_LIMITED_CLASSES.has(routeClass) || !response || response[429]) return;
    Object.assign(response, errors(429));
  });
}
