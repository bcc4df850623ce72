import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { RouteClass } from './principal.js';

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** A caller's own request id is kept when it is harmless, so traces join up across services. */
export function requestIdFrom(request: { headers: Record<string, string | string[] | undefined> }): string {
  const given = request.headers['x-request-id'];
  return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? given : randomUUID();
}

export function routeClassOf(request: FastifyRequest): RouteClass {
  const declared = request.routeOptions.config?.routeClass;
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
 * observation per request for the performance tracker and metrics. Callback-style hooks: they
 * run on every request, and a promise per hook is measurable there.
 */
export function installRequestContext(app: FastifyInstance, observe?: RequestObserver) {
  app.decorateRequest('principal', null);
  app.addHook('onRequest', (request, _reply, done) => {
    (request as Timed)[START] = process.hrtime.bigint();
    done();
  });
  app.addHook('onSend', (request, reply, payload, done) => {
    const start = (request as Timed)[START] ?? process.hrtime.bigint();
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    reply.header('x-request-id', request.id);
    reply.header('x-response-time', ms.toFixed(3));
    reply.header('x-route-class', routeClassOf(request));
    done(null, payload);
  });
  if (observe) {
    app.addHook('onResponse', (request, reply, done) => {
      const start = (request as Timed)[START];
      if (start !== undefined) {
        const micros = Number(process.hrtime.bigint() - start) / 1e3;
        observe(
          request.routeOptions.url ?? 'unmatched',
          request.method,
          routeClassOf(request),
          reply.statusCode,
          micros,
        );
      }
      done();
    });
  }
}
