import type { Recorder } from './loadtest-stats.js';
import { rssMiB } from './loadtest-system.js';

/**
 * `npm run loadtest -- --soak`: one long run at a steady load, sampled every `--sample-seconds`,
 * to see what a short run cannot: memory that grows, an event loop that slows, latency that
 * creeps up. Each sample holds the service's RSS (from /proc) and heap (its /metrics), its event
 * loop's p99 delay over the interval (prom-client resets that histogram on every scrape, and
 * nothing else scrapes the service during a load test), and the p50/p95/p99 of the requests the
 * users completed in the interval.
 *
 * The verdict: over the judged window (the last 20 minutes by default), RSS and p95 are "flat"
 * when their least-squares trend changes by at most 10 % of their mean across the window. A trend,
 * not the spread: on a shared machine single intervals jump, but a leak or a slow degradation
 * shows as a slope. The spread (min–max) is reported beside it.
 */

export interface SoakSample {
  /** Seconds since the load started, at the end of the interval. */
  atSeconds: number;
  activeUsers: number;
  /** Requests completed in the interval, per second. */
  reqPerSec: number;
  errors: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  serverRssMiB: number | null;
  serverHeapUsedMiB: number | null;
  serverLoopP99Ms: number | null;
}

export interface Trend {
  samples: number;
  mean: number;
  min: number;
  max: number;
  /** The fitted line's change from the first to the last sample of the window, as a share of the mean. */
  drift: number;
  flat: boolean;
}

export interface SoakVerdict {
  judgedFromSeconds: number;
  judgedToSeconds: number;
  tolerance: number;
  rss: Trend | null;
  p95: Trend | null;
  heap: Trend | null;
  loopP99: Trend | null;
  /** RSS and p95 both flat (the soak's target). */
  flat: boolean;
}

const round = (value: number, digits = 2) => Math.round(value * 10 ** digits) / 10 ** digits;

/** One number of the service's Prometheus text (the first series with that name), or null. */
export function metricValue(text: string, name: string): number | null {
  const match = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+|NaN)$`, 'm').exec(text);
  if (!match) return null;
  const value = Number(match[1]);
  return Number.isFinite(value) ? value : null;
}

export class SoakSampler {
  readonly samples: SoakSample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private startedAt = 0;
  private lastAt = 0;
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly origin: string,
    private readonly pid: number | undefined,
    private readonly recorder: Recorder,
    private readonly everySeconds: number,
  ) {}

  start(): void {
    this.recorder.keepWindows();
    this.startedAt = performance.now();
    this.lastAt = this.startedAt;
    this.timer = setInterval(() => {
      this.pending = this.pending.then(() => this.sample());
    }, this.everySeconds * 1000);
  }

  /** Stops sampling; the interval in progress is dropped (the users are stopping: not steady load). */
  async stop(): Promise<SoakSample[]> {
    clearInterval(this.timer);
    await this.pending;
    return this.samples;
  }

  private async sample(): Promise<void> {
    const now = performance.now();
    const window = this.recorder.takeWindow();
    const seconds = (now - this.lastAt) / 1000;
    this.lastAt = now;
    const [rss, metrics] = await Promise.all([
      this.pid ? rssMiB(this.pid) : Promise.resolve(null),
      fetch(`${this.origin}/metrics`, { signal: AbortSignal.timeout(10_000) })
        .then((response) => (response.ok ? response.text() : ''))
        .catch(() => ''),
    ]);
    const heap = metricValue(metrics, 'velro_nodejs_heap_size_used_bytes');
    const loop = metricValue(metrics, 'velro_nodejs_eventloop_lag_p99_seconds');
    const h = window?.histogram;
    const ms = (percentile: number) =>
      h && h.totalCount > 0 ? h.getValueAtPercentile(percentile) / 1000 : 0;
    this.samples.push({
      atSeconds: round((now - this.startedAt) / 1000, 1),
      activeUsers: this.recorder.activeUsers,
      reqPerSec: round((h?.totalCount ?? 0) / seconds, 1),
      errors: window?.errors ?? 0,
      p50Ms: round(ms(50)),
      p95Ms: round(ms(95)),
      p99Ms: round(ms(99)),
      serverRssMiB: rss === null ? null : round(rss, 1),
      serverHeapUsedMiB: heap === null ? null : round(heap / 2 ** 20, 1),
      serverLoopP99Ms: loop === null ? null : round(loop * 1000),
    });
  }
}

/** Least-squares trend of `values` over `times`, judged against `tolerance` (a share of the mean). */
export function trendOf(times: number[], values: number[], tolerance: number): Trend | null {
  const n = values.length;
  if (n < 3) return null;
  const meanT = times.reduce((a, b) => a + b, 0) / n;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    const dt = (times[i] as number) - meanT;
    num += dt * ((values[i] as number) - mean);
    den += dt * dt;
  }
  const slope = den === 0 ? 0 : num / den;
  const span = (times[n - 1] as number) - (times[0] as number);
  const drift = mean === 0 ? 0 : (slope * span) / mean;
  return {
    samples: n,
    mean: round(mean),
    min: round(Math.min(...values)),
    max: round(Math.max(...values)),
    drift: round(drift, 4),
    flat: Math.abs(drift) <= tolerance,
  };
}

export function judgeSoak(
  samples: readonly SoakSample[],
  durationSeconds: number,
  judgedSeconds: number,
  tolerance = 0.1,
): SoakVerdict {
  const from = Math.max(0, durationSeconds - judgedSeconds);
  const judged = samples.filter((s) => s.atSeconds > from && s.atSeconds <= durationSeconds + 1);
  const series = (pick: (s: SoakSample) => number | null) => {
    const points = judged.filter((s) => pick(s) !== null);
    return trendOf(
      points.map((s) => s.atSeconds),
      points.map((s) => pick(s) as number),
      tolerance,
    );
  };
  const rss = series((s) => s.serverRssMiB);
  const p95 = series((s) => (s.reqPerSec > 0 ? s.p95Ms : null));
  return {
    judgedFromSeconds: from,
    judgedToSeconds: durationSeconds,
    tolerance,
    rss,
    p95,
    heap: series((s) => s.serverHeapUsedMiB),
    loopP99: series((s) => s.serverLoopP99Ms),
    flat: Boolean(rss?.flat && p95?.flat),
  };
}

// ---------------------------------------------------------------------------------------------
// The chart: four panels stacked, time on x (minutes): users and req/s; p50/p95 latency; the
// service's RSS and heap; its event loop's p99 delay. The judged window is shaded on each.

const W = 1200;
const PANEL_H = 190;
const M = { top: 50, left: 80, right: 80, gap: 45, bottom: 45 };

const esc = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function niceMax(value: number): number {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10])
    if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

interface Line {
  label: string;
  colour: string;
  values: (number | null)[];
  dashed?: boolean;
}

export function soakChartSvg(
  samples: readonly SoakSample[],
  verdict: SoakVerdict,
  title: string,
  durationSeconds: number,
): string {
  const panels: { title: string; unit: string; lines: Line[] }[] = [
    {
      title: 'load',
      unit: 'req/s · users',
      lines: [
        { label: 'completed req/s', colour: '#1f77b4', values: samples.map((s) => s.reqPerSec) },
        { label: 'active users', colour: '#7f7f7f', values: samples.map((s) => s.activeUsers), dashed: true },
      ],
    },
    {
      title: 'latency of every request',
      unit: 'ms',
      lines: [
        { label: 'p95', colour: '#d62728', values: samples.map((s) => s.p95Ms) },
        { label: 'p50', colour: '#ff7f0e', values: samples.map((s) => s.p50Ms) },
      ],
    },
    {
      title: 'service memory',
      unit: 'MiB',
      lines: [
        { label: 'RSS', colour: '#2ca02c', values: samples.map((s) => s.serverRssMiB) },
        {
          label: 'heap used',
          colour: '#9467bd',
          values: samples.map((s) => s.serverHeapUsedMiB),
          dashed: true,
        },
      ],
    },
    {
      title: 'service event loop',
      unit: 'p99 delay ms',
      lines: [{ label: 'loop p99', colour: '#8c564b', values: samples.map((s) => s.serverLoopP99Ms) }],
    },
  ];
  const H = M.top + panels.length * (PANEL_H + M.gap) + M.bottom - M.gap;
  const plotW = W - M.left - M.right;
  const xMax = Math.max(durationSeconds, ...samples.map((s) => s.atSeconds));
  const x = (seconds: number) => M.left + (seconds / xMax) * plotW;
  const tickMinutes = [1, 2, 5, 10, 15, 30, 60].find((step) => xMax / 60 / step <= 12) ?? 120;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>`,
  ];
  panels.forEach((panel, index) => {
    const top = M.top + index * (PANEL_H + M.gap);
    const all = panel.lines.flatMap((l) => l.values.filter((v): v is number => v !== null));
    const yMax = niceMax(Math.max(1, ...all));
    const y = (v: number) => top + PANEL_H - (v / yMax) * PANEL_H;
    out.push(
      `<rect x="${x(verdict.judgedFromSeconds)}" y="${top}" width="${x(verdict.judgedToSeconds) - x(verdict.judgedFromSeconds)}" height="${PANEL_H}" fill="#f2f2f2"/>`,
      `<text x="${M.left}" y="${top - 8}"><tspan font-weight="bold">${esc(panel.title)}</tspan><tspan fill="#555"> (${esc(panel.unit)})</tspan></text>`,
    );
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      out.push(
        `<line x1="${M.left}" x2="${M.left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
        `<text x="${M.left - 6}" y="${y(v) + 4}" text-anchor="end">${Number(v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2))}</text>`,
      );
    }
    for (let minute = 0; minute * 60 <= xMax; minute += tickMinutes) {
      out.push(
        `<line x1="${x(minute * 60)}" x2="${x(minute * 60)}" y1="${top + PANEL_H}" y2="${top + PANEL_H + 4}" stroke="#333"/>`,
        `<text x="${x(minute * 60)}" y="${top + PANEL_H + 16}" text-anchor="middle">${minute}</text>`,
      );
    }
    out.push(
      `<rect x="${M.left}" y="${top}" width="${plotW}" height="${PANEL_H}" fill="none" stroke="#333"/>`,
    );
    panel.lines.forEach((line, li) => {
      const points = samples
        .map((s, i) => (line.values[i] === null ? null : `${x(s.atSeconds)},${y(line.values[i] as number)}`))
        .filter(Boolean);
      out.push(
        `<polyline fill="none" stroke="${line.colour}" stroke-width="2"${line.dashed ? ' stroke-dasharray="6 4"' : ''} points="${points.join(' ')}"/>`,
        `<text x="${M.left + plotW - 10}" y="${top + 16 + li * 16}" text-anchor="end" fill="${line.colour}">${esc(line.label)}</text>`,
      );
    });
  });
  out.push(
    `<text x="${M.left + plotW / 2}" y="${H - 12}" text-anchor="middle">minutes since the load started (shaded: the judged window; samples every ${samples.length > 1 ? round((samples[1]?.atSeconds ?? 0) - (samples[0]?.atSeconds ?? 0), 0) : '?'} s)</text>`,
    '</svg>',
  );
  return out.join('\n');
}

export function soakMarkdown(
  samples: readonly SoakSample[],
  verdict: SoakVerdict,
  sampleSeconds: number,
  chart: { file: string | null; skipped: string | null },
): string {
  const pctText = (v: number) => `${v >= 0 ? '+' : ''}${(v * 100).toFixed(1)} %`;
  const row = (name: string, t: Trend | null, unit: string, judged: boolean) =>
    t
      ? `| ${name} | ${t.mean} ${unit} | ${t.min}–${t.max} ${unit} | ${pctText(t.drift)} | ${judged ? (t.flat ? 'flat' : 'NOT flat') : 'shown'} |`
      : `| ${name} | – | – | – | no samples |`;
  const minutes = (s: number) => String(Number((s / 60).toFixed(1)));
  const lines = [
    '',
    '## Soak',
    '',
    `Sampled every ${sampleSeconds} s (${samples.length} samples); judged over minutes ` +
      `${minutes(verdict.judgedFromSeconds)}–${minutes(verdict.judgedToSeconds)}: a series is flat when its ` +
      `least-squares trend changes by at most ${(verdict.tolerance * 100).toFixed(0)} % of its mean across that window. ` +
      `**Verdict: ${verdict.flat ? 'RSS and p95 flat' : 'NOT flat'}.**`,
    '',
    '| series (judged window) | mean | min–max | trend across the window | |',
    '|---|---:|---:|---:|---|',
    row('service RSS', verdict.rss, 'MiB', true),
    row('p95 of every request', verdict.p95, 'ms', true),
    row('service heap used', verdict.heap, 'MiB', false),
    row('service event loop p99', verdict.loopP99, 'ms', false),
    '',
    chart.file
      ? `![soak: load, latency, memory and event loop over time](${chart.file})`
      : `Chart not rendered (${chart.skipped ?? 'unknown'}).`,
    '',
    '<details><summary>Every sample</summary>',
    '',
    '| at (s) | users | req/s | errors | p50 ms | p95 ms | p99 ms | RSS MiB | heap MiB | loop p99 ms |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...samples.map(
      (s) =>
        `| ${s.atSeconds} | ${s.activeUsers} | ${s.reqPerSec} | ${s.errors} | ${s.p50Ms} | ${s.p95Ms} | ${s.p99Ms} | ` +
        `${s.serverRssMiB ?? '–'} | ${s.serverHeapUsedMiB ?? '–'} | ${s.serverLoopP99Ms ?? '–'} |`,
    ),
    '',
    '</details>',
  ];
  return lines.join('\n');
}
