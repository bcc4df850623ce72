import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLoadOptions } from '../bench/lib/loadtest-options.js';
import {
  judgeSoak,
  metricValue,
  type SoakSample,
  SoakSampler,
  soakChartSvg,
  soakMarkdown,
  trendOf,
} from '../bench/lib/loadtest-soak.js';
import { Recorder } from '../bench/lib/loadtest-stats.js';

/**
 * The load test's soak (`npm run loadtest -- --soak`) without the service under load: its options,
 * the per-interval windows of the recorder, the sampler against a real HTTP server answering
 * /metrics, the flatness verdict (a trend, not the noise) and the chart.
 */

const sample = (atSeconds: number, rss: number, p95: number): SoakSample => ({
  atSeconds,
  activeUsers: 100,
  reqPerSec: 50,
  errors: 0,
  p50Ms: p95 / 4,
  p95Ms: p95,
  p99Ms: p95 * 2,
  serverRssMiB: rss,
  serverHeapUsedMiB: rss / 3,
  serverLoopP99Ms: 12,
});

/** Deterministic noise in [-1, 1]. */
const noise = (i: number) => Math.sin(i * 12.9898) * 0.999;

describe('soak options', () => {
  it('defaults to 30 minutes with a 5-minute ramp, samples every 30 s and judges the last 20 minutes', () => {
    expect(parseLoadOptions(['--soak', '--users', '400'])).toMatchObject({
      users: 400,
      durationSeconds: 1_800,
      rampSeconds: 300,
      soak: { sampleSeconds: 30, judgeSeconds: 1_200 },
    });
    expect(
      parseLoadOptions(['--soak', '--duration', '600', '--sample-seconds', '10', '--judge-minutes', '5']),
    ).toMatchObject({
      durationSeconds: 600,
      rampSeconds: 100,
      soak: { sampleSeconds: 10, judgeSeconds: 300 },
    });
    expect(parseLoadOptions([]).soak).toBeNull();
  });

  it('refuses a soak with a sweep, and soak settings without a soak', () => {
    expect(() => parseLoadOptions(['--soak', '--sweep', '10,20'])).toThrow(/exclude/);
    expect(() => parseLoadOptions(['--sample-seconds', '10'])).toThrow(/belong to --soak/);
  });
});

describe('the recorder’s windows', () => {
  it('keeps nothing unless asked; then each window holds what completed since the last one', () => {
    const recorder = new Recorder();
    recorder.start(performance.now());
    recorder.record('GET /a', 'ok', 200, 5, null);
    expect(recorder.takeWindow()).toBeNull();
    recorder.keepWindows();
    recorder.record('GET /a', 'ok', 200, 10, null);
    recorder.record('GET /a', 'server_error', 503, 20, null);
    recorder.record('GET /a', 'timeout', 0, null, null, performance.now());
    const first = recorder.takeWindow();
    expect(first?.histogram.totalCount).toBe(2);
    expect(first?.errors).toBe(2);
    recorder.record('GET /a', 'ok', 200, 30, null);
    const second = recorder.takeWindow();
    expect(second?.histogram.totalCount).toBe(1);
    expect(second?.errors).toBe(0);
    // The run's own totals are not affected by the windows.
    expect(recorder.total).toBe(5);
  });
});

describe('the sampler', () => {
  let server: Server;
  let origin: string;
  let scrapes = 0;
  beforeAll(async () => {
    server = createServer((request, response) => {
      if (request.url !== '/metrics') {
        response.writeHead(404).end();
        return;
      }
      scrapes += 1;
      response
        .writeHead(200, { 'content-type': 'text/plain' })
        .end(
          [
            '# HELP velro_nodejs_heap_size_used_bytes Process heap size used from Node.js in bytes.',
            '# TYPE velro_nodejs_heap_size_used_bytes gauge',
            `velro_nodejs_heap_size_used_bytes ${64 * 2 ** 20}`,
            'velro_nodejs_eventloop_lag_p99_seconds 0.0125',
          ].join('\n'),
        );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('takes the service’s RSS, heap and loop delay and the interval’s latencies, every interval', async () => {
    const recorder = new Recorder();
    recorder.start(performance.now());
    const sampler = new SoakSampler(origin, process.pid, recorder, 0.2);
    /** Until the sampler has taken `n` samples (its timer fires every 200 ms). */
    const samplesReach = (n: number) =>
      new Promise<void>((resolve) => {
        const poll = setInterval(() => {
          if (sampler.samples.length < n) return;
          clearInterval(poll);
          resolve();
        }, 20);
      });
    sampler.start();
    for (let i = 1; i <= 100; i++) recorder.record('GET /a', 'ok', 200, i, null);
    await samplesReach(1);
    for (let i = 0; i < 10; i++) recorder.record('GET /a', 'server_error', 503, 1_000, null);
    await samplesReach(2);
    const samples = await sampler.stop();
    const [first, second] = samples as [SoakSample, SoakSample];
    expect(scrapes).toBeGreaterThanOrEqual(2);
    expect(first.p50Ms).toBeCloseTo(50, 0);
    expect(first.p95Ms).toBeCloseTo(95, 0);
    expect(first.errors).toBe(0);
    expect(first.serverHeapUsedMiB).toBe(64);
    expect(first.serverLoopP99Ms).toBe(12.5);
    expect(first.serverRssMiB).toBeGreaterThan(10);
    expect(second.errors).toBe(10);
    expect(second.p95Ms).toBeCloseTo(1_000, -1);
    expect(second.atSeconds).toBeGreaterThan(first.atSeconds);
  });

  it('reads one series of Prometheus text, with or without labels, and nothing from a missing one', () => {
    const text = 'a_total{kind="x"} 3\nvelro_x 1.5e-3\nvelro_y NaN\n';
    expect(metricValue(text, 'velro_x')).toBe(0.0015);
    expect(metricValue(text, 'a_total')).toBe(3);
    expect(metricValue(text, 'velro_y')).toBeNull();
    expect(metricValue(text, 'velro_z')).toBeNull();
  });
});

describe('the verdict', () => {
  const times = Array.from({ length: 41 }, (_, i) => 600 + i * 30);

  it('calls a noisy series without a trend flat, and a slow 20 % growth not flat', () => {
    const steady = trendOf(
      times,
      times.map((_, i) => 100 + 25 * noise(i)),
      0.1,
    );
    expect(steady?.flat).toBe(true);
    expect(steady?.max).toBeGreaterThan(120);
    const leaking = trendOf(
      times,
      times.map((_, i) => 100 + i * 0.5),
      0.1,
    );
    expect(leaking?.flat).toBe(false);
    expect(leaking?.drift).toBeCloseTo(20 / 110, 2);
    expect(trendOf([1, 2], [1, 2], 0.1)).toBeNull();
  });

  it('judges only the last window: the ramp and anything after the deadline are left out', () => {
    const samples = [
      // The ramp: memory and latency climbing as users arrive.
      ...Array.from({ length: 20 }, (_, i) => sample(i * 30, 100 + i * 10, 10 + i * 5)),
      ...times.map((t, i) => sample(t, 300 + 5 * noise(i), 100 + 8 * noise(i + 7))),
      // The drain after the deadline: nothing steady about it.
      sample(1_830, 900, 5_000),
    ];
    const verdict = judgeSoak(samples, 1_800, 1_200);
    expect(verdict.judgedFromSeconds).toBe(600);
    expect(verdict.rss?.samples).toBe(40);
    expect(verdict.rss?.max).toBeLessThan(310);
    expect(verdict.flat).toBe(true);
    const creeping = judgeSoak(
      samples.map((s) =>
        s.atSeconds > 600 ? { ...s, p95Ms: s.p95Ms * (1 + (s.atSeconds - 600) / 4_000) } : s,
      ),
      1_800,
      1_200,
    );
    expect(creeping.p95?.flat).toBe(false);
    expect(creeping.rss?.flat).toBe(true);
    expect(creeping.flat).toBe(false);
  });

  it('draws four panels over time with the judged window shaded, and the report names the verdict', () => {
    const samples = times.map((t, i) => sample(t, 300 + i / 2, 100));
    const verdict = judgeSoak(samples, 1_800, 1_200);
    const svg = soakChartSvg(samples, verdict, 'soak <test>', 1_800);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('soak &lt;test&gt;');
    expect(svg.match(/<polyline /g)).toHaveLength(7);
    for (const title of ['load', 'latency of every request', 'service memory', 'service event loop'])
      expect(svg).toContain(title);
    const markdown = soakMarkdown(samples, verdict, 30, { file: 'soak.png', skipped: null });
    expect(markdown).toContain('judged over minutes 10–30');
    expect(markdown).toContain('![soak');
    expect(markdown).toMatch(/\| service RSS \| [\d.]+ MiB \| [\d.]+–[\d.]+ MiB \| \+[\d.]+ % \| flat \|/);
  });
});
