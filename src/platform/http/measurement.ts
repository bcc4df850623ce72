/**
 * Per-request layers that `npm run bench -- --attribution` switches off one at a time, to report
 * what each costs (`MEASURE_WITHOUT=<layer>[,<layer>…]`). For measurement only: some of them are
 * protections (session liveness, rate limits, security headers, load shedding), and the service
 * warns loudly at start when any is off. Production never sets it.
 */
export const MEASURABLE_LAYERS = [
  /** The API's security response headers. */
  'security_headers',
  /** X-Request-Id, X-Response-Time, X-Route-Class and the per-request tracking (HDR + Prometheus). */
  'request_context',
  /** @fastify/under-pressure's hooks (event-loop and heap load shedding). */
  'under_pressure',
  /** The graceful-close hooks (a 503 and `connection: close` once the server is closing). */
  'closing',
  /** The check that the access token's session is still live (the JWT alone then decides). */
  'session_liveness',
  /** The per-user, per-route-class request counters. */
  'user_rate_limit',
  /** Reading Velro-Consistency-Token from the request. */
  'consistency_token',
  /** The X-Cache header of authorization answers. */
  'x_cache',
  /** Response schemas (Fastify then serializes with JSON.stringify). */
  'response_schema',
] as const;

export type MeasurableLayer = (typeof MEASURABLE_LAYERS)[number];

/** The layers named in `MEASURE_WITHOUT`; throws on an unknown name (a typo must not go unnoticed). */
export function layersOff(value: string): ReadonlySet<MeasurableLayer> {
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const name of names) {
    if (!(MEASURABLE_LAYERS as readonly string[]).includes(name))
      throw new Error(`MEASURE_WITHOUT: unknown layer ${name} (known: ${MEASURABLE_LAYERS.join(', ')})`);
  }
  return new Set(names as MeasurableLayer[]);
}
