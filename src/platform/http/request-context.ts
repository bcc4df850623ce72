import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { RouteClass } from './principal.js';
import { RequestFrame } from './request-frame.js';

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** A caller's own request id is kept when it is harmless, so traces join up across services. */
export function requestIdFrom(request: { headers: Record<string, string | string[] | undefined> }): string {
  const given = request.headers['x-request-id'];
  return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? given : randomUUID();
}

const ROUTE = Symbol('velro.route');
type Routed = FastifyRequest & { [ROUTE]?: FastifyRequest['routeOptions'] | null };

/**
 * The matched route's options, read once per request. Fastify's `request.routeOptions` is a getter
 * that builds a new object of a dozen fields on every read, and the request path reads it about
 * six times (authentication, route class, headers, tracking).
 */
export function routeOf(request: FastifyRequest): FastifyRequest['routeOptions'] {
  const routed = request as Routed;
  let options = routed[ROUTE];
  if (options == null) {
    options = request.routeOptions;
    routed[ROUTE] = options;
  }
  return options;
}

export function routeClassOf(request: FastifyRequest): RouteClass {
  const declared = routeOf(request).config?.routeClass;
  if (declared) return declared;
  return request.method === 'GET' || request.method === 'HEAD' ? 'fast' : 'standard';
}

const START = Symbol('velro.start');
type Timed = FastifyRequest & { [START]?: bigint };

/** Called once per answered request with its route pattern, class, status and duration. */
export type RequestObserver = (
  route: string,
  method: string,
  routeClass: string,
  status: number,
  micros: number,
) => void;

/**
 * X-Request-Id, X-Response-Time (ms, 3 decimals) and X-Route-Class on every response, and one
 * observation per request for the performance tracker and metrics. Both happen just before the
 * answer is written: the tracked duration is the one the client reads in X-Response-Time, and no
 * onResponse hook is added to every request's chain.
 */
export function addRequestContext(frame: RequestFrame, observe?: RequestObserver): void {
  frame.atStart((request) => {
    (request as Timed)[START] = process.hrtime.bigint();
    return undefined;
  });
  frame.beforeSend((request, reply) => {
    const start = (request as Timed)[START] ?? process.hrtime.bigint();
    const micros = Number(process.hrtime.bigint() - start) / 1e3;
    const routeClass = routeClassOf(request);
    reply.header('x-request-id', request.id);
    reply.header('x-response-time', (micros / 1e3).toFixed(3));
    reply.header('x-route-class', routeClass);
    observe?.(routeOf(request).url ?? 'unmatched', request.method, routeClass, reply.statusCode, micros);
  });
}

/** The request context alone, in hooks of its own (for apps without a shared request frame). */
export function installRequestContext(app: FastifyInstance, observe?: RequestObserver, enabled = true) {
  decorateRequestContext(app);
  // Off only when measuring what this layer costs (MEASURE_WITHOUT=request_context).
  if (!enabled) return;
  const frame = new RequestFrame();
  addRequestContext(frame, observe);
  frame.install(app);
}

export function decorateRequestContext(app: FastifyInstance): void {
  app.decorateRequest('principal', null);
  // Declared up front, so every request object has the same shape.
  app.decorateRequest(ROUTE as unknown as string, null);
}
