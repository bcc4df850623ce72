import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** Work at the start of every request; returns true when it answered the request itself. */
export type FirstStep = (request: FastifyRequest, reply: FastifyReply) => boolean | undefined;
/** Work on every answer, just before it is written. */
export type LastStep = (request: FastifyRequest, reply: FastifyReply) => void;

const BEFORE_SEND = Symbol('velro.frame.beforeSend');
type WithFrame = { [BEFORE_SEND]?: LastStep };

/**
 * Takes the response over (`reply.hijack()`: an event stream) after the frame's last steps ran, as
 * for any answer: its place in admission control is given back, X-Request-Id, X-Response-Time and
 * X-Route-Class are set on `reply` (write them with `reply.getHeaders()`) and the request is
 * observed (its latency is the time until the stream opened). No hook runs after a hijack, so a
 * route that skipped this would hold an admission place for the stream's whole life and never be
 * counted. Every hijacking route calls this instead of `reply.hijack()`.
 */
export function hijackAnswer(request: FastifyRequest, reply: FastifyReply): void {
  (request.server as unknown as WithFrame)[BEFORE_SEND]?.(request, reply);
  reply.hijack();
}

/**
 * The per-request work every answer needs (timing and request-id headers, security headers, the
 * closing answer) as steps of ONE onRequest and ONE onSend hook, however many modules contribute:
 * each hook Fastify runs is an iteration of its hook runner, on every request. Steps are plain
 * synchronous functions, made once; none allocates a closure or a promise per request.
 */
export class RequestFrame {
  private readonly first: FirstStep[] = [];
  private readonly last: LastStep[] = [];
  private installed = false;

  atStart(step: FirstStep): this {
    this.assertOpen();
    this.first.push(step);
    return this;
  }

  beforeSend(step: LastStep): this {
    this.assertOpen();
    this.last.push(step);
    return this;
  }

  /** Adds the two hooks, in the order the steps were given. */
  install(app: FastifyInstance): void {
    this.assertOpen();
    this.installed = true;
    const first = [...this.first];
    const last = [...this.last];
    if (first.length > 0)
      app.addHook('onRequest', (request, reply, done) => {
        for (const step of first) if (step(request, reply) === true) return;
        done();
      });
    if (last.length > 0) {
      const beforeSend: LastStep = (request, reply) => {
        for (const step of last) step(request, reply);
      };
      app.addHook('onSend', (request, reply, payload, done) => {
        beforeSend(request, reply);
        done(null, payload);
      });
      // For hijackAnswer; child contexts (every route's plugin) inherit it from the root instance.
      (app as unknown as WithFrame)[BEFORE_SEND] = beforeSend;
    }
  }

  private assertOpen() {
    if (this.installed) throw new Error('the request frame is already installed');
  }
}
