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
 * HDR histograms over sliding windows (1 min, 5 min, 1 h), each a ring of time slots: recording
 * touches one slot per window (three integer increments and a comparison), reading merges the
 * slots still inside the window. Memory per instance ≈ 23 histograms × ~10 KB.
 */
export class WindowedHistogram {
  private readonly rings: Record<Window, Slot[]>;
  private readonly merged = newHistogram();

  constructor() {
    this.rings = {} as Record<Window, Slot[]>;
    for (const w of WINDOWS) {
      this.rings[w] = Array.from({ length: LAYOUT[w].slots }, () => ({
        start: -1,
        histogram: newHistogram(),
        errors: 0,
      }));
    }
  }

  record(micros: number, isError: boolean, now: number): void {
    const value = micros < 1 ? 1 : micros > 120_000_000 ? 120_000_000 : micros;
    for (const w of WINDOWS) {
      const { widthMs, slots } = LAYOUT[w];
      const start = now - (now % widthMs);
      const slot = (this.rings[w] as Slot[])[Math.floor(now / widthMs) % slots] as Slot;
      if (slot.start !== start) {
        slot.start = start;
        slot.histogram.reset();
        slot.errors = 0;
      }
      slot.histogram.recordValue(value);
      if (isError) slot.errors += 1;
    }
  }

  stats(window: Window, now: number): WindowStats {
    const { widthMs, slots } = LAYOUT[window];
    const oldest = now - widthMs * slots;
    const merged = this.merged;
    merged.reset();
    let errors = 0;
    for (const slot of this.rings[window]) {
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
