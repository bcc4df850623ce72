import {
  type EventLoopUtilization,
  type IntervalHistogram,
  monitorEventLoopDelay,
  performance,
} from 'node:perf_hooks';

/**
 * The queue admission control cannot see. When the process runs out of CPU, requests wait before
 * any hook runs: in the socket buffers and the event loop's queue of ready connections. Measured at
 * 1,000 users of the mixed load test on two cores: PostgreSQL idle (every backend in ClientRead),
 * three writes in flight inside the service, yet writes answered in 1.4 s at p95 — each of their
 * round trips waited a full turn of a crowded loop. Per-class limits, which count requests from
 * their first hook, stayed far below their budgets and refused nothing.
 *
 * So the loop's own lateness is measured (a timer every 5 ms; how late it fires is how long a
 * ready socket waits), and while its p99 over a window is above the target AND the loop was busy
 * with this process's own work (event-loop utilisation ≥ 0.85: a loop late only because a noisy
 * neighbour took the CPU, or because of one long pause, is not overload), a growing share of new
 * requests is refused at once (503 `overloaded`, Retry-After) once that has lasted two seconds (a
 * burst, or a neighbour's moment on the CPU, is not overload), the same share in every class, so
 * writes keep their share of what is served. When the loop is on time again the share falls back
 * step by step. A refusal costs the parsing of the request and a small answer: far less than the
 * round trips of the request it replaces.
 */
export interface LoopSheddingOptions {
  /** The p99 lateness of the event loop aimed at, in ms (a write waits about this long per round trip). */
  targetMs: number;
  /** How much the refused share moves per window. */
  step?: number;
  /** Never refuse more than this share (some requests always go through and measure the service). */
  maxShare?: number;
  /** The event-loop utilisation over a window at or above which a late loop counts as overloaded. */
  busyUtilization?: number;
  /** How many late, busy windows in a row before the first refusal (a burst is not overload). */
  sustainedWindows?: number;
}

const RESOLUTION_MS = 5;

export class LoopShedder {
  /** The share of new requests refused now, 0 to maxShare. */
  share = 0;
  refused = 0;
  /** The last window's p99 lateness of the loop, in ms. */
  lastDelayP99Ms = 0;
  /** The last window's event-loop utilisation (0 to 1). */
  lastUtilization = 0;
  private elu: EventLoopUtilization = performance.eventLoopUtilization();
  private lateWindows = 0;
  private readonly delay: IntervalHistogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  private readonly step: number;
  private readonly maxShare: number;

  constructor(private readonly options: LoopSheddingOptions) {
    this.step = options.step ?? 0.05;
    this.maxShare = options.maxShare ?? 0.9;
  }

  start(): void {
    this.delay.enable();
    this.elu = performance.eventLoopUtilization();
  }

  stop(): void {
    this.delay.disable();
  }

  /** Whether to refuse this request (counted when refused). */
  refuse(): boolean {
    if (this.share === 0 || Math.random() >= this.share) return false;
    this.refused += 1;
    return true;
  }

  /**
   * End of a window: the share grows by a step while the loop has been late and busy for
   * `sustainedWindows` windows in a row (2 s by default), and falls by a step in a window that was
   * not. The histogram holds the whole interval between ticks; the lateness is what
   * exceeds the resolution.
   */
  adjust(): number {
    const p99 = this.delay.count > 0 ? Math.max(0, this.delay.percentile(99) / 1e6 - RESOLUTION_MS) : 0;
    this.delay.reset();
    const now = performance.eventLoopUtilization();
    const utilization = performance.eventLoopUtilization(now, this.elu).utilization;
    this.elu = now;
    this.lastDelayP99Ms = p99;
    this.lastUtilization = utilization;
    const overloaded = p99 > this.options.targetMs && utilization >= (this.options.busyUtilization ?? 0.85);
    this.lateWindows = overloaded ? this.lateWindows + 1 : 0;
    if (this.lateWindows >= (this.options.sustainedWindows ?? 8))
      this.share = Math.min(this.maxShare, this.share + this.step);
    else if (!overloaded) this.share = Math.max(0, this.share - this.step);
    return p99;
  }
}
