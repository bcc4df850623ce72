import type { FastifyReply, FastifyRequest } from 'fastify';
import { Counter, Gauge, type Registry } from 'prom-client';
import { sendError } from './error-handler.js';
import { LoopShedder, type LoopSheddingOptions } from './loop-shedding.js';
import { routeOf } from './request-context.js';
import type { RequestFrame } from './request-frame.js';

/**
 * Admission control: each class of work has its own budget of requests in flight, so reads cannot
 * take the capacity writes need and the cheap checks never wait behind expensive work. A budget is
 * adaptive (the idea of Netflix's concurrency-limits and Envoy's adaptive concurrency): every
 * window, the class's latency is compared with its target; above it while the class was near its
 * limit (at least half of it in flight), the limit falls to just under the concurrency that
 * produced it; at the limit and within target, it grows by a step.
 * A request over its class's limit is answered at once — 503 `overloaded` with Retry-After —
 * instead of queueing for a pool connection until it times out.
 *
 * The latency measured is the service's own (first hook to last), which includes waiting for a
 * database connection or a hashing thread: exactly the queueing this bounds. Event-loop overload
 * (CPU) is @fastify/under-pressure's to shed; the two complement each other.
 */
export type AdmissionClass = 'checks' | 'reads' | 'writes' | 'auth' | 'hashing';

export interface ClassPolicy {
  /** The class's latency objective for the 90th percentile, in ms. */
  targetMs: number;
  initial: number;
  /** Never below this: a burst of this many from one client is always admitted. */
  min: number;
  max: number;
}

/**
 * Targets are about half the seeds' client-side p95 objectives (auth without hashing 50 ms,
 * authorization 75 ms, generation access 100 ms, team operations 100 ms), leaving room for what
 * the service cannot see (the kernel's queue, parsing, the network). Hashing (argon2id) costs tens
 * of ms by design and runs on four threads.
 */
export const ADMISSION_POLICIES: Record<AdmissionClass, ClassPolicy> = {
  checks: { targetMs: 35, initial: 512, min: 64, max: 8192 },
  reads: { targetMs: 50, initial: 256, min: 32, max: 4096 },
  writes: { targetMs: 50, initial: 128, min: 32, max: 2048 },
  auth: { targetMs: 25, initial: 128, min: 32, max: 2048 },
  hashing: { targetMs: 250, initial: 32, min: 8, max: 512 },
};

/** Routes never refused: liveness, readiness and the operators' own views. */
const EXEMPT = new Set(['/health', '/ready', '/metrics']);
/** Authorization decisions: the cheap warm work that must never queue behind the rest. */
export const CHECK_ROUTES = new Set([
  '/api/v1/authz/check',
  '/api/v1/authz/check-bulk',
  '/api/v1/generations/:id/authorize',
]);
/** Routes that hash a password (argon2id): slow on purpose, bounded on their own. */
export const HASHING_ROUTES = new Set([
  '/api/v1/auth/register',
  '/api/v1/auth/login',
  '/api/v1/auth/password',
]);

/** The class of a route, or null when it is never refused. */
export function admissionClassOf(
  url: string | undefined,
  method: string,
  routeClass?: string,
): AdmissionClass | null {
  if (url === undefined || EXEMPT.has(url) || url.startsWith('/docs') || url.startsWith('/dashboard'))
    return null;
  if (CHECK_ROUTES.has(url)) return 'checks';
  if (HASHING_ROUTES.has(url)) return 'hashing';
  if (routeClass === 'critical_auth') return 'auth';
  return method === 'GET' || method === 'HEAD' ? 'reads' : 'writes';
}

const WINDOW_SAMPLES = 512;
/** Below this many answers in a window, latency says too little to cut a limit. */
const MIN_SAMPLES = 8;
const DECREASE = 0.9;
/** A window is congested when its peak in flight reached this share of the limit. */
const CONGESTED = 0.5;
const INCREASE = 0.05;

/** One class's adaptive limit. Plain counters and one preallocated array: no allocation per request. */
export class AdaptiveLimit {
  limit: number;
  inflight = 0;
  rejected = 0;
  private peak = 0;
  private rejectedInWindow = 0;
  private readonly latencies = new Float64Array(WINDOW_SAMPLES);
  private count = 0;

  constructor(readonly policy: ClassPolicy) {
    this.limit = policy.initial;
  }

  tryAcquire(): boolean {
    if (this.inflight >= this.limit) {
      this.rejected += 1;
      this.rejectedInWindow += 1;
      return false;
    }
    this.inflight += 1;
    if (this.inflight > this.peak) this.peak = this.inflight;
    return true;
  }

  release(latencyMs: number): void {
    this.inflight -= 1;
    if (this.count < WINDOW_SAMPLES) this.latencies[this.count] = latencyMs;
    else this.latencies[(this.count * 2654435761) % WINDOW_SAMPLES] = latencyMs;
    this.count += 1;
  }

  /** End of a window: adjust the limit from what the window saw. Returns the window's p90 (ms). */
  adjust(): number | null {
    const n = Math.min(this.count, WINDOW_SAMPLES);
    let p90: number | null = null;
    if (n >= MIN_SAMPLES) {
      const sorted = this.latencies.slice(0, n).sort();
      p90 = sorted[Math.min(n - 1, Math.floor(n * 0.9))] as number;
    }
    const { targetMs, min, max } = this.policy;
    if (p90 !== null && p90 > targetMs && this.peak >= this.limit * CONGESTED) {
      // Too slow while the class was near its limit: just under the concurrency that produced it.
      // Slow with few in flight is not queueing (a pause of the process, one slow statement):
      // cutting the limit then would only refuse the burst that follows the pause.
      this.limit = Math.max(min, Math.floor(Math.min(this.limit, this.peak) * DECREASE));
    } else if (this.rejectedInWindow > 0 || this.peak >= this.limit * 0.9) {
      // Within target and the limit was what held requests back: allow more.
      this.limit = Math.min(max, Math.ceil(this.limit + Math.max(1, this.limit * INCREASE)));
    }
    this.count = 0;
    this.peak = this.inflight;
    this.rejectedInWindow = 0;
    return p90;
  }
}

const ADMITTED = Symbol('velro.admitted');
const ADMITTED_AT = Symbol('velro.admittedAt');
type Admitted = FastifyRequest & { [ADMITTED]?: AdaptiveLimit | null; [ADMITTED_AT]?: number };

/**
 * Gives a request's place in its class back (exactly once; nothing for a request never admitted).
 * The answer's last step does it for every reply, including one taken over by `hijackAnswer` (an
 * event stream), which runs the last steps before the hijack: a stream is long-lived by design,
 * and holding a place for its whole life would let a few hundred readers of event streams use up
 * the budget of every other read.
 */
function leaveAdmission(request: FastifyRequest): void {
  const admitted = request as Admitted;
  const limit = admitted[ADMITTED];
  if (!limit) return;
  admitted[ADMITTED] = null;
  limit.release(performance.now() - (admitted[ADMITTED_AT] ?? 0));
}

export interface AdmissionOptions {
  retryAfterSeconds: number;
  windowMs?: number;
  registry?: Registry;
  policies?: Partial<Record<AdmissionClass, Partial<ClassPolicy>>>;
  /** Refuse a share of requests in every class while the event loop is late (loop-shedding.ts). */
  loop?: LoopSheddingOptions;
}

export class AdmissionControl {
  readonly limits: Record<AdmissionClass, AdaptiveLimit>;
  readonly shedder: LoopShedder | null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: AdmissionOptions) {
    const limits = {} as Record<AdmissionClass, AdaptiveLimit>;
    for (const name of Object.keys(ADMISSION_POLICIES) as AdmissionClass[]) {
      limits[name] = new AdaptiveLimit({ ...ADMISSION_POLICIES[name], ...options.policies?.[name] });
    }
    this.limits = limits;
    this.shedder = options.loop ? new LoopShedder(options.loop) : null;
    if (options.registry) this.register(options.registry);
  }

  /** The first step (after the closing answer) and the release just before the answer is written. */
  install(frame: RequestFrame): void {
    const retryAfter = String(this.options.retryAfterSeconds);
    frame.atStart((request: FastifyRequest, reply: FastifyReply) => {
      const route = routeOf(request);
      const name = admissionClassOf(route.url, request.method, route.config?.routeClass);
      if (name === null) return undefined;
      const limit = this.limits[name];
      if (this.shedder?.refuse() || !limit.tryAcquire()) {
        reply.header('retry-after', retryAfter);
        sendError(
          request,
          reply,
          503,
          'overloaded',
          'The service is at capacity for this kind of request; retry shortly',
        );
        return true;
      }
      (request as Admitted)[ADMITTED] = limit;
      (request as Admitted)[ADMITTED_AT] = performance.now();
      return undefined;
    });
    frame.beforeSend((request) => this.release(request));
  }

  /** Also called when a client goes away before its answer: a request is released exactly once. */
  release(request: FastifyRequest): void {
    leaveAdmission(request);
  }

  start(): void {
    if (this.timer) return;
    this.shedder?.start();
    this.timer = setInterval(() => {
      for (const limit of Object.values(this.limits)) limit.adjust();
      this.shedder?.adjust();
    }, this.options.windowMs ?? 250);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.shedder?.stop();
  }

  snapshot(): Record<AdmissionClass, { limit: number; inflight: number; rejected: number }> {
    const out = {} as Record<AdmissionClass, { limit: number; inflight: number; rejected: number }>;
    for (const [name, l] of Object.entries(this.limits) as [AdmissionClass, AdaptiveLimit][]) {
      out[name] = { limit: l.limit, inflight: l.inflight, rejected: l.rejected };
    }
    return out;
  }

  private register(registry: Registry): void {
    const limits = this.limits;
    const shedder = this.shedder;
    if (shedder) {
      new Gauge({
        name: 'velro_admission_loop_shed_share',
        help: 'Share of new requests refused while the event loop is late (0 when on time)',
        registers: [registry],
        collect() {
          this.set(shedder.share);
        },
      });
      new Gauge({
        name: 'velro_admission_loop_delay_p99_seconds',
        help: 'p99 lateness of the event loop over the last admission window',
        registers: [registry],
        collect() {
          this.set(shedder.lastDelayP99Ms / 1000);
        },
      });
      new Counter({
        name: 'velro_admission_loop_shed_total',
        help: 'Requests refused at once with 503 overloaded because the event loop was late',
        registers: [registry],
        collect() {
          this.reset();
          this.inc(shedder.refused);
        },
      });
    }
    new Gauge({
      name: 'velro_admission_limit',
      help: 'Requests of a class admitted in flight at most (adaptive)',
      labelNames: ['class'],
      registers: [registry],
      collect() {
        for (const [name, l] of Object.entries(limits)) this.set({ class: name }, l.limit);
      },
    });
    new Gauge({
      name: 'velro_admission_inflight',
      help: 'Requests of a class in flight',
      labelNames: ['class'],
      registers: [registry],
      collect() {
        for (const [name, l] of Object.entries(limits)) this.set({ class: name }, l.inflight);
      },
    });
    new Counter({
      name: 'velro_admission_rejected_total',
      help: 'Requests refused at once with 503 overloaded because their class was at its limit',
      labelNames: ['class'],
      registers: [registry],
      collect() {
        // The limits count; the scrape copies their totals.
        this.reset();
        for (const [name, l] of Object.entries(limits)) this.inc({ class: name }, l.rejected);
      },
    });
  }
}

/** ADMISSION_CONTROL when set; otherwise on in production only. */
export function admissionEnabled(config: {
  ADMISSION_CONTROL?: boolean | undefined;
  NODE_ENV: string;
}): boolean {
  return config.ADMISSION_CONTROL ?? config.NODE_ENV === 'production';
}
