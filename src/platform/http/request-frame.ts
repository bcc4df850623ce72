import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** Work at the start of every request; returns true when it answered the request itself. */
export type FirstStep = (request: FastifyRequest, reply: FastifyReply) => boolean | undefined;
/** Work on every answer, just before it is written. */
export type LastStep = (request: FastifyRequest, reply: FastifyReply) => void;

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
    if (last.length > 0)
      app.addHook('onSend', (request, reply, payload, done) => {
        for (const step of last) step(request, reply);
        done(null, payload);
      });
  }

  private assertOpen() {
    if (this.installed) throw new Error('the request frame is already installed');
  }
}
