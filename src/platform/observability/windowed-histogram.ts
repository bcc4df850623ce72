import * as hdr from 'hdr-histogram-js';

export type Window = '1m' | '5m' | '1h';

export interface WindowStats {
  count: number;
  errors: number;
  /** Requests per second over the window. */
  throughput: number;
  error_rate: number;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  max_ms: number;
}

interface Slot {
  start: number;
  histogram: hdr.Histogram;
  errors: number;
}

/** Slot width and count per window: 6 × 10 s, 5 × 1 min, 12 × 5 min. */
const LAYOUT: Record<Window, { widthMs: number; slots: number }> = {
  '1m': { widthMs: 10_000, slots: 6 },
  '5m': { widthMs: 60_000, slots: 5 },
  '1h': { widthMs: 300_000, slots: 12 },
};
const WINDOWS = Object.keys(LAYOUT) as Window[];
const FINE_MS = LAYOUT['1m'].widthMs;
/** The windows fed by folding finished 10-second slots. */
const FOLDED: Window[] = ['5m', '1h'];

/** Latencies in microseconds, 1 µs to 2 min, 2 significant digits (1 % error), 32-bit counts. */
const newHistogram = () =>
  hdr.build({
    bitBucketSize: 32,
    autoResize: false,
    lowestDiscernibleValue: 1,
    highestTrackableValue: 120_000_000,
    numberOfSignificantValueDigits: 2,
  });

/**
 * HDR histograms over sliding windows (1 min, 5 min, 1 h), each a ring of time slots. A request is
 * recorded once, into the current 10-second slot (one HDR increment); when that slot is done it is
 * folded into its 1-minute and 5-minute slots, once per 10 s instead of once per request. Reading
 * merges the slots still inside the window, plus the current 10-second slot for the two longer
 * windows (it is folded only when done, so nothing is counted twice). Memory per instance
 * ≈ 23 histograms × ~10 KB.
 */
export class WindowedHistogram {
  private readonly rings: Record<Window, Slot[]>;
  private readonly merged = newHistogram();
  /** The 10-second slot being filled; not yet folded into the longer windows. */
  private current: Slot;

  constructor() {
    this.rings = {} as Record<Window, Slot[]>;
    for (const w of WINDOWS) {
      this.rings[w] = Array.from({ length: LAYOUT[w].slots }, () => ({
        start: -1,
        histogram: newHistogram(),
        errors: 0,
      }));
    }
    this.current = this.rings['1m'][0] as Slot;
  }

  record(micros: number, isError: boolean, now: number): void {
    const value = micros < 1 ? 1 : micros > 120_000_000 ? 120_000_000 : micros;
    let slot = this.current;
    if (slot.start !== now - (now % FINE_MS)) slot = this.advance(now);
    slot.histogram.recordValue(value);
    if (isError) slot.errors += 1;
  }

  /** Folds the finished 10-second slot into the longer windows and starts the one for `now`. */
  private advance(now: number): Slot {
    const done = this.current;
    if (done.start >= 0) {
      for (const w of FOLDED) {
        const { widthMs, slots } = LAYOUT[w];
        const parent = (this.rings[w] as Slot[])[Math.floor(done.start / widthMs) % slots] as Slot;
        const start = done.start - (done.start % widthMs);
        if (parent.start !== start) {
          parent.start = start;
          parent.histogram.reset();
          parent.errors = 0;
        }
        parent.histogram.add(done.histogram);
        parent.errors += done.errors;
      }
    }
    const slot = this.rings['1m'][Math.floor(now / FINE_MS) % LAYOUT['1m'].slots] as Slot;
    slot.start = now - (now % FINE_MS);
    slot.histogram.reset();
    slot.errors = 0;
    this.current = slot;
    return slot;
  }

  stats(window: Window, now: number): WindowStats {
    const { widthMs, slots } = LAYOUT[window];
    const oldest = now - widthMs * slots;
    const merged = this.merged;
    merged.reset();
    let errors = 0;
    const slotsRead = window === '1m' ? this.rings[window] : [...this.rings[window], this.current];
    for (const slot of slotsRead) {
      if (slot.start <= oldest || slot.start < 0) continue;
      merged.add(slot.histogram);
      errors += slot.errors;
    }
    const count = merged.totalCount;
    const ms = (v: number) => Math.round(v) / 1000;
    return {
      count,
      errors,
      throughput: count / ((widthMs * slots) / 1000),
      error_rate: count === 0 ? 0 : errors / count,
      p50_ms: count === 0 ? 0 : ms(merged.getValueAtPercentile(50)),
      p95_ms: count === 0 ? 0 : ms(merged.getValueAtPercentile(95)),
      p99_ms: count === 0 ? 0 : ms(merged.getValueAtPercentile(99)),
      max_ms: count === 0 ? 0 : ms(merged.maxValue),
    };
  }
}
