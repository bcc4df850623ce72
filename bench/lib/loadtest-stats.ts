import * as hdr from 'hdr-histogram-js';

/**
 * What one request came to. Errors (the error rate of the seeds' target) are `server_error`,
 * `timeout` and `network`; a 4xx the scenario asked for (404 for another user's generation, 402
 * when credits run out) is `expected`; any other 4xx is `unexpected`: a bug in the scenario or the
 * service, reported on its own so that it can never hide inside the successes.
 */
export type Outcome = 'ok' | 'expected' | 'unexpected' | 'server_error' | 'timeout' | 'network';

export const ERROR_OUTCOMES: readonly Outcome[] = ['server_error', 'timeout', 'network'];

/** Latencies are recorded in microseconds, up to 10 minutes, 3 significant digits. */
const HIGHEST_MICROS = 600_000_000;

export function newHistogram(): hdr.Histogram {
  return hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: HIGHEST_MICROS,
    numberOfSignificantValueDigits: 3,
    autoResize: true,
  });
}

export function recordMs(histogram: hdr.Histogram, ms: number): void {
  histogram.recordValue(Math.min(HIGHEST_MICROS, Math.max(1, Math.round(ms * 1000))));
}

export interface EndpointStats {
  /** `METHOD /api/v1/route/:pattern`: ids never appear here. */
  name: string;
  histogram: hdr.Histogram;
  outcomes: Record<Outcome, number>;
  statuses: Map<number, number>;
  /** `X-Cache` of authorization answers (l1, l2, miss). */
  cache: Map<string, number>;
  /** 503 `overloaded` answers (admission control refusing at once): part of `server_error`. */
  refused: number;
}

export interface TimelinePoint {
  second: number;
  requests: number;
  errors: number;
  activeUsers: number;
  /** Longest delay of the load generator's own 100 ms timer in that second. */
  clientLagMs: number;
}

/** One place that every request of the timed phase is counted in (setup has its own). */
export class Recorder {
  readonly endpoints = new Map<string, EndpointStats>();
  readonly errorCodes = new Map<string, number>();
  private readonly perSecond = new Map<number, { requests: number; errors: number }>();
  private startedAt = 0;
  total = 0;
  errors = 0;
  activeUsers = 0;
  private readonly activeAt = new Map<number, number>();
  private readonly lagAt = new Map<number, number>();

  /** Called by a 100 ms timer with how late it fired. */
  noteLag(now: number, lagMs: number): void {
    const second = Math.floor((now - this.startedAt) / 1000);
    this.lagAt.set(second, Math.max(this.lagAt.get(second) ?? 0, lagMs));
  }

  private frozen = false;
  /** performance.now() before which nothing is counted (a sweep stage's ramp). */
  private countFrom = 0;
  /** Latency of every 503 `overloaded` answer: how fast the excess is refused. */
  readonly refusals = newHistogram();
  /** Latencies since the last `takeWindow()` (a soak's per-interval percentiles); off unless asked for. */
  private window: { histogram: hdr.Histogram; errors: number } | null = null;

  /** Starts keeping the latencies of each interval (see `takeWindow`). */
  keepWindows(): void {
    this.window = { histogram: newHistogram(), errors: 0 };
  }

  /** The latencies and errors counted since the previous call, and a fresh interval begun. */
  takeWindow(): { histogram: hdr.Histogram; errors: number } | null {
    const taken = this.window;
    if (taken) this.window = { histogram: newHistogram(), errors: 0 };
    return taken;
  }

  /**
   * `countAfterMs`: requests that start within that long after `now` are not counted (warm-up: a
   * sweep stage's ramp, where every user opens its connection at once). Counted by when a request
   * started, not when it ended: a request caught in the ramp's connection storm is the ramp's.
   */
  start(now: number, countAfterMs = 0): void {
    this.startedAt = now;
    this.countFrom = countAfterMs > 0 ? now + countAfterMs : 0;
  }

  /** Whether a request that started at `startedAt` (default: now) is counted. */
  private counting(startedAt = performance.now()): boolean {
    return !this.frozen && (this.countFrom === 0 || startedAt >= this.countFrom);
  }

  /** Nothing is counted after this: requests we abort ourselves when stopping are not the service's errors. */
  freeze(): void {
    this.frozen = true;
  }

  record(
    endpoint: string,
    outcome: Outcome,
    status: number,
    latencyMs: number | null,
    cache: string | null,
    /** When the request started, for a timeout or network error (no latency to tell it). */
    startedAt?: number,
  ): void {
    if (!this.counting(startedAt ?? performance.now() - (latencyMs ?? 0))) return;
    const stats = this.endpoint(endpoint);
    stats.outcomes[outcome] += 1;
    if (status > 0) stats.statuses.set(status, (stats.statuses.get(status) ?? 0) + 1);
    if (latencyMs !== null) recordMs(stats.histogram, latencyMs);
    if (this.window) {
      if (latencyMs !== null) recordMs(this.window.histogram, latencyMs);
      if (ERROR_OUTCOMES.includes(outcome)) this.window.errors += 1;
    }
    if (cache) stats.cache.set(cache, (stats.cache.get(cache) ?? 0) + 1);
    const isError = ERROR_OUTCOMES.includes(outcome);
    this.total += 1;
    if (isError) this.errors += 1;
    const second = Math.floor((performance.now() - this.startedAt) / 1000);
    const bucket = this.perSecond.get(second) ?? { requests: 0, errors: 0 };
    bucket.requests += 1;
    if (isError) bucket.errors += 1;
    this.perSecond.set(second, bucket);
    this.activeAt.set(second, this.activeUsers);
  }

  /** A few bodies of 5xx and unexpected 4xx answers per endpoint and status: what went wrong. */
  readonly samples = new Map<string, string[]>();

  sample(endpoint: string, status: number, body: string): void {
    const key = `${endpoint} → ${status}`;
    const list = this.samples.get(key) ?? [];
    if (list.length >= 3) return;
    list.push(body.slice(0, 300));
    this.samples.set(key, list);
  }

  /** A 503 `overloaded` already recorded with `record`: counted again as a refusal, with its latency. */
  noteRefusal(endpoint: string, latencyMs: number): void {
    if (!this.counting(performance.now() - latencyMs)) return;
    this.endpoint(endpoint).refused += 1;
    recordMs(this.refusals, latencyMs);
  }

  noteErrorCode(code: string): void {
    if (!this.counting()) return;
    this.errorCodes.set(code, (this.errorCodes.get(code) ?? 0) + 1);
  }

  /** Requests completed during the last whole second (for the progress line). */
  lastSecond(now: number): { requests: number; errors: number } {
    const second = Math.floor((now - this.startedAt) / 1000) - 1;
    return this.perSecond.get(second) ?? { requests: 0, errors: 0 };
  }

  timeline(): TimelinePoint[] {
    const seconds = [...new Set([...this.perSecond.keys(), ...this.lagAt.keys()])].sort((a, b) => a - b);
    return seconds.map((second) => ({
      second,
      requests: this.perSecond.get(second)?.requests ?? 0,
      errors: this.perSecond.get(second)?.errors ?? 0,
      activeUsers: this.activeAt.get(second) ?? 0,
      clientLagMs: Math.round(this.lagAt.get(second) ?? 0),
    }));
  }

  /** Requests completed in [fromS, toS) seconds after the start. */
  requestsBetween(fromS: number, toS: number): number {
    let sum = 0;
    for (const [second, bucket] of this.perSecond)
      if (second >= fromS && second < toS) sum += bucket.requests;
    return sum;
  }

  private endpoint(name: string): EndpointStats {
    let stats = this.endpoints.get(name);
    if (!stats) {
      stats = {
        name,
        histogram: newHistogram(),
        outcomes: { ok: 0, expected: 0, unexpected: 0, server_error: 0, timeout: 0, network: 0 },
        statuses: new Map(),
        cache: new Map(),
        refused: 0,
      };
      this.endpoints.set(name, stats);
    }
    return stats;
  }
}

/** Per scenario: how many iterations ran and how many requests each produced. */
export class ScenarioCounters {
  readonly iterations = new Map<string, number>();
  readonly users = new Map<string, number>();

  addIteration(scenario: string): void {
    this.iterations.set(scenario, (this.iterations.get(scenario) ?? 0) + 1);
  }
}

/** The generation pipeline as the virtual users saw it. */
export class GenerationCounters {
  created = 0;
  /** 402: out of credits (an outcome of the scenario, not an error). */
  insufficientCredits = 0;
  creditGrants = 0;
  /** Creates skipped because the global create budget (--create-rate) was spent. */
  createsThrottled = 0;
  completed = 0;
  failed = 0;
  /** Observation given up (poll or stream cap reached) before a terminal state. */
  unfinished = 0;
  streamsOpened = 0;
  streamsEnded = 0;
  /** Streams closed by us at --sse-max-ms: each costs that user's connection a reconnect. */
  streamsCapped = 0;
  mediaBytes = 0;
  /** Create → terminal state observed, for the generations observed to complete. */
  readonly endToEnd = newHistogram();
}
