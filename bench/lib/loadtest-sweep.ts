import type * as hdr from 'hdr-histogram-js';
import { latencyOf, pct, round } from './loadtest-report.js';
import { type EndpointStats, ERROR_OUTCOMES, newHistogram } from './loadtest-stats.js';
import type { describeMachine } from './report.js';

/**
 * The knee of the load test (`npm run loadtest -- --sweep 500,1000,…`): per stage (a user count),
 * what was offered, what came back, and per class of endpoint how fast; the capacity point is the
 * largest stage within the seeds' error and latency targets. Everything here is pure arithmetic on
 * recorded numbers, so the rules can be tested without a service.
 */

/** The seeds' classes of endpoint, as a user experiences them. */
export const ENDPOINT_CLASSES = [
  'auth_token',
  'authorization',
  'generation_access',
  'team_ops',
  'other',
] as const;
export type EndpointClass = (typeof ENDPOINT_CLASSES)[number];

/** Seed 002's p95 targets per class (client side, ms); `other` has none. */
export const CLASS_TARGET_P95_MS: Record<EndpointClass, number | null> = {
  auth_token: 50,
  authorization: 75,
  generation_access: 100,
  team_ops: 100,
  other: null,
};

export const CLASS_LABELS: Record<EndpointClass, string> = {
  auth_token: 'auth without hashing (refresh, logout, me)',
  authorization: 'authorization (authz/*, generations/:id/authorize)',
  generation_access: 'generation access (generation reads, media)',
  team_ops: 'team operations (teams, members, project writes)',
  other: 'other (sign-ins, generation creates, project reads, admin)',
};

/** Below this error rate (5xx, timeouts, network errors over requests) a stage can be the capacity point. */
export const MAX_ERROR_RATE = 0.001;
/** A deliberate refusal should come back at once. */
export const REFUSAL_TARGET_MS = 50;

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/** `METHOD /api/v1/route/:pattern` → its class. */
export function classOf(endpoint: string): EndpointClass {
  const space = endpoint.indexOf(' ');
  const method = endpoint.slice(0, space);
  const path = endpoint.slice(space + 1).replace(/^\/api\/v\d+/, '');
  if (path.startsWith('/auth/')) {
    return /^\/auth\/(login|register|password)/.test(path) ? 'other' : 'auth_token';
  }
  if (path.startsWith('/authz/') || /^\/generations\/[^/]+\/authorize$/.test(path)) return 'authorization';
  if (method === 'GET' && (path.startsWith('/generations') || path.startsWith('/media/'))) {
    return 'generation_access';
  }
  if (path.startsWith('/teams')) return 'team_ops';
  if (path.startsWith('/projects') && WRITE_METHODS.has(method)) return 'team_ops';
  return 'other';
}

/**
 * A request that changes state: every POST/PUT/PATCH/DELETE except the authorization questions
 * (POST /authz/check is a read). Sign-outs and refreshes count: they starved first in issue 19.
 */
export function isWrite(endpoint: string): boolean {
  const method = endpoint.slice(0, endpoint.indexOf(' '));
  return WRITE_METHODS.has(method) && classOf(endpoint) !== 'authorization';
}

export interface WriteShares {
  offered: number;
  succeeded: number;
  /** Writes / all requests attempted. */
  shareOfOffered: number;
  /** Successful writes / all successful requests. */
  shareOfSuccesses: number;
  /** True when writes got a smaller share of the successes than they asked for. */
  starved: boolean;
}

/** The starvation check: writes' share of successes against their share of what was offered. */
export function writeShares(
  writesOffered: number,
  writesSucceeded: number,
  allOffered: number,
  allSucceeded: number,
): WriteShares {
  const shareOfOffered = allOffered > 0 ? writesOffered / allOffered : 0;
  const shareOfSuccesses = allSucceeded > 0 ? writesSucceeded / allSucceeded : 0;
  return {
    offered: writesOffered,
    succeeded: writesSucceeded,
    shareOfOffered,
    shareOfSuccesses,
    // Equal counts give equal floats; a share lower by a rounding error is not starvation.
    starved: writesOffered > 0 && shareOfSuccesses < shareOfOffered - 1e-12,
  };
}

export interface ClassRow {
  name: EndpointClass;
  requests: number;
  succeeded: number;
  errors: number;
  p50Ms: number;
  p95Ms: number;
  targetP95Ms: number | null;
  /** null: no target, or no requests of this class in the stage. */
  withinTarget: boolean | null;
}

export interface StageSummary {
  users: number;
  /** The window the numbers are counted over (the stage after its ramp). */
  seconds: number;
  attempted: number;
  attemptedPerSec: number;
  succeeded: number;
  /** Successful requests (2xx/3xx and the 4xx a scenario asked for) per second. */
  throughputPerSec: number;
  errors: number;
  errorRate: number;
  overloaded503: number;
  other5xx: number;
  timeouts: number;
  networkErrors: number;
  unexpected4xx: number;
  classes: ClassRow[];
  writes: WriteShares;
  /** Latency of the 503 `overloaded` answers; null when nothing was refused. */
  refusals: { count: number; fastestMs: number; p50Ms: number; p95Ms: number; maxMs: number } | null;
  /** Within the error and latency targets: a candidate for the capacity point. */
  qualifies: boolean;
  /** Why not, when it does not. */
  misses: string[];
  /** Filled by the sweep: what else was true of the stage (CPU, the load generator's own lag…). */
  notes?: Record<string, unknown>;
}

export function summarizeStage(
  users: number,
  seconds: number,
  endpoints: Iterable<EndpointStats>,
  refusals: hdr.Histogram,
): StageSummary {
  const merged = new Map<EndpointClass, { h: hdr.Histogram; requests: number; ok: number; errors: number }>(
    ENDPOINT_CLASSES.map((c) => [c, { h: newHistogram(), requests: 0, ok: 0, errors: 0 }]),
  );
  let attempted = 0;
  let succeeded = 0;
  let errors = 0;
  let overloaded = 0;
  let serverErrors = 0;
  let timeouts = 0;
  let network = 0;
  let unexpected = 0;
  let writesOffered = 0;
  let writesSucceeded = 0;
  for (const e of endpoints) {
    const requests = Object.values(e.outcomes).reduce((a, b) => a + b, 0);
    const ok = e.outcomes.ok + e.outcomes.expected;
    const bad = ERROR_OUTCOMES.reduce((sum, o) => sum + e.outcomes[o], 0);
    const row = merged.get(classOf(e.name))!;
    row.h.add(e.histogram);
    row.requests += requests;
    row.ok += ok;
    row.errors += bad;
    attempted += requests;
    succeeded += ok;
    errors += bad;
    overloaded += e.refused;
    serverErrors += e.outcomes.server_error;
    timeouts += e.outcomes.timeout;
    network += e.outcomes.network;
    unexpected += e.outcomes.unexpected;
    if (isWrite(e.name)) {
      writesOffered += requests;
      writesSucceeded += ok;
    }
  }
  const classes = ENDPOINT_CLASSES.map((name): ClassRow => {
    const row = merged.get(name)!;
    const latency = latencyOf(row.h);
    const target = CLASS_TARGET_P95_MS[name];
    return {
      name,
      requests: row.requests,
      succeeded: row.ok,
      errors: row.errors,
      p50Ms: latency.p50Ms,
      p95Ms: latency.p95Ms,
      targetP95Ms: target,
      withinTarget: target === null || row.requests === 0 ? null : latency.p95Ms < target,
    };
  });
  const errorRate = attempted > 0 ? errors / attempted : 0;
  const misses: string[] = [];
  if (attempted === 0) misses.push('no requests');
  if (errorRate >= MAX_ERROR_RATE) misses.push(`errors ${pct(errorRate)} ≥ ${pct(MAX_ERROR_RATE)}`);
  for (const c of classes) {
    if (c.withinTarget === false) misses.push(`${c.name} p95 ${c.p95Ms.toFixed(1)} ms ≥ ${c.targetP95Ms} ms`);
  }
  const refused = latencyOf(refusals);
  const window = Math.max(seconds, 1e-9);
  return {
    users,
    seconds: round(seconds, 2),
    attempted,
    attemptedPerSec: round(attempted / window, 1),
    succeeded,
    throughputPerSec: round(succeeded / window, 1),
    errors,
    errorRate,
    overloaded503: overloaded,
    other5xx: serverErrors - overloaded,
    timeouts,
    networkErrors: network,
    unexpected4xx: unexpected,
    classes,
    writes: writeShares(writesOffered, writesSucceeded, attempted, succeeded),
    refusals:
      refused.count === 0
        ? null
        : {
            count: refused.count,
            fastestMs: round(refusals.minNonZeroValue / 1000, 3),
            p50Ms: refused.p50Ms,
            p95Ms: refused.p95Ms,
            maxMs: refused.maxMs,
          },
    qualifies: misses.length === 0,
    misses,
  };
}

/** The largest stage (by users) that qualifies, or null when none does. */
export function capacityPoint(stages: readonly StageSummary[]): StageSummary | null {
  let best: StageSummary | null = null;
  for (const stage of stages) if (stage.qualifies && (!best || stage.users > best.users)) best = stage;
  return best;
}

export interface SweepReport {
  date: string;
  machine: ReturnType<typeof describeMachine>;
  settings: Record<string, unknown>;
  /** The environment the service ran with beyond the load test's own (from --service-env). */
  serviceEnv: Record<string, string>;
  setup: unknown;
  stages: StageSummary[];
  capacity: { users: number; throughputPerSec: number } | null;
  /** File names beside the report: the PNG, or the SVG when the PNG could not be rendered (and why). */
  chart: { svg: string | null; png: string | null; pngSkipped: string | null };
}

// ---------------------------------------------------------------------------------------------
// The chart: two panels side by side, users on x. Left: throughput and attempted req/s (left axis)
// and error rate (right axis). Right: p95 per class with each class's target dashed. The capacity
// point is a vertical line on both.

const CLASS_COLOURS: Record<EndpointClass, string> = {
  auth_token: '#1f77b4',
  authorization: '#2ca02c',
  generation_access: '#ff7f0e',
  team_ops: '#9467bd',
  other: '#7f7f7f',
};

const W = 1200;
const H = 560;
const PANEL = { top: 60, bottom: 70, left: 70, right: 70, gap: 40 };

function niceMax(value: number): number {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

const esc = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
/** Axis labels: whole numbers as they are, others with as few decimals as they need. */
const fmt = (v: number) => (Number.isInteger(v) ? String(v) : String(Number(v.toFixed(v >= 10 ? 1 : 3))));

export function sweepChartSvg(
  stages: readonly StageSummary[],
  capacityUsers: number | null,
  title: string,
): string {
  const panelWidth = (W - PANEL.left * 2 - PANEL.right * 2 - PANEL.gap) / 2;
  const plotHeight = H - PANEL.top - PANEL.bottom;
  const users = stages.map((s) => s.users);
  const maxUsers = niceMax(Math.max(1, ...users));
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>`,
  );

  const panel = (index: 0 | 1) => {
    const x0 = PANEL.left + index * (panelWidth + PANEL.right + PANEL.gap + PANEL.left);
    const y0 = PANEL.top;
    const x = (u: number) => x0 + (u / maxUsers) * panelWidth;
    return { x0, y0, x };
  };
  /** A y axis: linear from 0, or logarithmic over whole decades (latencies span 1 ms to seconds). */
  interface Scale {
    y: (v: number) => number;
    ticks: number[];
  }
  const linear = (max: number): Scale => ({
    y: (v) => PANEL.top + plotHeight - (v / max) * plotHeight,
    ticks: [0, 1, 2, 3, 4, 5].map((i) => (max * i) / 5),
  });
  const logarithmic = (min: number, max: number): Scale => {
    const lo = Math.log10(min);
    const hi = Math.log10(max);
    const ticks: number[] = [];
    for (let decade = min; decade < max * 1.001; decade *= 10) {
      for (const step of [1, 2, 5]) if (decade * step <= max * 1.001) ticks.push(decade * step);
    }
    return {
      y: (v) => PANEL.top + plotHeight - ((Math.log10(Math.max(v, min)) - lo) / (hi - lo)) * plotHeight,
      ticks,
    };
  };
  const axes = (p: ReturnType<typeof panel>, scale: Scale, yLabel: string, heading: string) => {
    out.push(
      `<text x="${p.x0 + panelWidth / 2}" y="${p.y0 - 14}" text-anchor="middle" font-size="14">${esc(heading)}</text>`,
    );
    out.push(
      `<rect x="${p.x0}" y="${p.y0}" width="${panelWidth}" height="${plotHeight}" fill="none" stroke="#333"/>`,
    );
    for (const v of scale.ticks) {
      const y = scale.y(v);
      out.push(`<line x1="${p.x0}" x2="${p.x0 + panelWidth}" y1="${y}" y2="${y}" stroke="#eee"/>`);
      out.push(`<text x="${p.x0 - 6}" y="${y + 4}" text-anchor="end">${fmt(v)}</text>`);
    }
    for (let i = 0; i <= 5; i++) {
      const u = (maxUsers * i) / 5;
      out.push(
        `<text x="${p.x(u)}" y="${p.y0 + plotHeight + 18}" text-anchor="middle">${Math.round(u)}</text>`,
      );
    }
    out.push(
      `<text x="${p.x0 + panelWidth / 2}" y="${p.y0 + plotHeight + 38}" text-anchor="middle">virtual users</text>`,
      `<text transform="translate(${p.x0 - 52} ${p.y0 + plotHeight / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`,
    );
    if (capacityUsers !== null) {
      const cx = p.x(capacityUsers);
      out.push(
        `<line class="capacity" x1="${cx}" x2="${cx}" y1="${p.y0}" y2="${p.y0 + plotHeight}" stroke="#d62728" stroke-width="2" stroke-dasharray="6 4"/>`,
        `<text x="${cx + 4}" y="${p.y0 + 14}" fill="#d62728">capacity ${capacityUsers}</text>`,
      );
    }
  };
  const line = (
    p: ReturnType<typeof panel>,
    points: [number, number][],
    scale: Scale,
    colour: string,
    name: string,
    dash = '',
  ) => {
    if (points.length === 0) return;
    const d = points.map(
      ([u, v], i) => `${i === 0 ? 'M' : 'L'}${p.x(u).toFixed(1)},${scale.y(v).toFixed(1)}`,
    );
    out.push(
      `<path data-series="${esc(name)}" d="${d.join(' ')}" fill="none" stroke="${colour}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`,
    );
    for (const [u, v] of points) {
      out.push(`<circle cx="${p.x(u).toFixed(1)}" cy="${scale.y(v).toFixed(1)}" r="3" fill="${colour}"/>`);
    }
  };
  const legend = (p: ReturnType<typeof panel>, entries: [string, string, string][]) => {
    entries.forEach(([name, colour, dash], i) => {
      const y = p.y0 + plotHeight + 52 + Math.floor(i / 3) * 14;
      const x = p.x0 + (i % 3) * (panelWidth / 3);
      out.push(
        `<line x1="${x}" x2="${x + 18}" y1="${y - 4}" y2="${y - 4}" stroke="${colour}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`,
        `<text x="${x + 22}" y="${y}">${esc(name)}</text>`,
      );
    });
  };

  // Left: throughput, attempted and error rate.
  const left = panel(0);
  const rpsMax = niceMax(Math.max(1, ...stages.map((s) => Math.max(s.attemptedPerSec, s.throughputPerSec))));
  const rps = linear(rpsMax);
  const errors = linear(niceMax(Math.max(0.002, ...stages.map((s) => s.errorRate)) * 100));
  axes(left, rps, 'requests per second', 'throughput and error rate');
  for (const v of errors.ticks) {
    out.push(
      `<text x="${left.x0 + panelWidth + 6}" y="${errors.y(v) + 4}" fill="#d62728">${fmt(v)} %</text>`,
    );
  }
  line(
    left,
    stages.map((s) => [s.users, s.attemptedPerSec]),
    rps,
    '#aaaaaa',
    'attempted req/s',
    '4 3',
  );
  line(
    left,
    stages.map((s) => [s.users, s.throughputPerSec]),
    rps,
    '#1f77b4',
    'successful req/s',
  );
  line(
    left,
    stages.map((s) => [s.users, s.errorRate * 100]),
    errors,
    '#d62728',
    'error rate %',
  );
  const threshold = errors.y(MAX_ERROR_RATE * 100);
  out.push(
    `<line x1="${left.x0}" x2="${left.x0 + panelWidth}" y1="${threshold}" y2="${threshold}" stroke="#d62728" stroke-opacity="0.4" stroke-dasharray="2 3"/>`,
  );
  legend(left, [
    ['successful req/s', '#1f77b4', ''],
    ['attempted req/s', '#aaaaaa', '4 3'],
    ['error rate (right, 0.1 % dotted)', '#d62728', ''],
  ]);

  // Right: p95 per class, targets dashed.
  const right = panel(1);
  const measured = stages.flatMap((s) => s.classes.filter((c) => c.requests > 0).map((c) => c.p95Ms));
  const decade = (v: number, up: boolean) =>
    10 ** (up ? Math.ceil(Math.log10(v)) : Math.floor(Math.log10(v)));
  const latency = logarithmic(
    decade(Math.max(0.1, Math.min(10, ...measured)), false),
    decade(Math.max(200, ...measured), true),
  );
  axes(right, latency, 'p95 latency (ms, log scale)', 'p95 per class (targets dashed)');
  const entries: [string, string, string][] = [];
  for (const name of ENDPOINT_CLASSES) {
    const points = stages.flatMap((s): [number, number][] => {
      const c = s.classes.find((row) => row.name === name);
      return c && c.requests > 0 ? [[s.users, c.p95Ms]] : [];
    });
    if (points.length === 0) continue;
    line(right, points, latency, CLASS_COLOURS[name], name);
    entries.push([name, CLASS_COLOURS[name], '']);
    const target = CLASS_TARGET_P95_MS[name];
    if (target !== null) {
      const y = latency.y(target);
      out.push(
        `<line data-target="${name}" x1="${right.x0}" x2="${right.x0 + panelWidth}" y1="${y}" y2="${y}" stroke="${CLASS_COLOURS[name]}" stroke-opacity="0.6" stroke-dasharray="5 4"/>`,
      );
    }
  }
  legend(right, entries);
  out.push('</svg>');
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------

const n = (v: number) => v.toLocaleString('en-US');
const ms = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));

export function sweepMarkdown(r: SweepReport, chartFile: string): string {
  const s = r.settings;
  const m = r.machine;
  const rampCounted = r.stages.length > 0 && r.stages[0]!.seconds >= Number(s.durationSeconds);
  const lines: string[] = [];
  lines.push(`# Load test sweep: ${String(s.scenario)}, ${r.stages.map((x) => x.users).join(' → ')} users`);
  lines.push('');
  lines.push(
    `${r.date}. Machine: ${m.cpuCount} × ${m.cpuModel}, ${m.totalMemoryGiB} GiB, Node ${m.node}, ${m.os}, build ${m.build}; ` +
      'load generator and service in separate processes on this same machine.',
  );
  lines.push(
    `One service process and one world (${n(Number(s.users))} registered users, teams of ${String(s.teamSize)}); ` +
      `one stage per user count, the first N users active, ${String(s.durationSeconds)} s each with a ` +
      `${String(s.rampSeconds)} s ramp ${rampCounted ? 'counted with it' : 'that is not counted (requests that started in it)'}; think ${String(s.thinkMinMs)}–${String(s.thinkMaxMs)} ms, ` +
      `timeout ${String(s.timeoutMs)} ms, seed ${String(s.seed)}; database: ${String(s.database)}, Redis: ${String(s.redis)}.`,
  );
  const env = Object.entries(r.serviceEnv);
  lines.push(
    `Service environment beyond the load test's own: ${env.length === 0 ? 'none (defaults of production)' : env.map(([k, v]) => `\`${k}=${v}\``).join(', ')}.`,
  );
  lines.push('');
  lines.push('## Capacity point');
  lines.push('');
  if (r.capacity) {
    lines.push(
      `**${n(r.capacity.users)} users** (${n(Math.round(r.capacity.throughputPerSec))} successful req/s): the largest ` +
        `stage with errors < ${pct(MAX_ERROR_RATE)} and every class within its p95 target.`,
    );
  } else {
    lines.push(
      `**No stage qualifies**: none had errors < ${pct(MAX_ERROR_RATE)} with every class within its p95 target ` +
        '(see "misses" below); the capacity point is below the smallest stage.',
    );
  }
  lines.push('');
  lines.push(`![throughput, error rate and p95 per class against users](${chartFile})`);
  lines.push('');
  lines.push('## Stages');
  lines.push('');
  lines.push(
    '| users | attempted req/s | successful req/s | error rate | 503 overloaded | other 5xx | timeouts | writes: offered → successes | fastest / p95 refusal | within targets |',
  );
  lines.push('|---:|---:|---:|---:|---:|---:|---:|---|---|---|');
  for (const st of r.stages) {
    const refusal = st.refusals ? `${ms(st.refusals.fastestMs)} / ${ms(st.refusals.p95Ms)} ms` : '–';
    const w = st.writes;
    lines.push(
      `| ${n(st.users)} | ${n(st.attemptedPerSec)} | ${n(st.throughputPerSec)} | ${pct(st.errorRate)} | ` +
        `${n(st.overloaded503)} | ${n(st.other5xx)} | ${n(st.timeouts)} | ` +
        `${pct(w.shareOfOffered)} → ${pct(w.shareOfSuccesses)}${w.starved ? ' **starved**' : ''} | ${refusal} | ` +
        `${st.qualifies ? 'yes' : `no: ${st.misses.join('; ')}`} |`,
    );
  }
  lines.push('');
  lines.push('p50 / p95 per class (ms; target is p95):');
  lines.push('');
  lines.push(
    `| users | ${ENDPOINT_CLASSES.map((c) => `${c}${CLASS_TARGET_P95_MS[c] === null ? '' : ` (< ${CLASS_TARGET_P95_MS[c]})`}`).join(' | ')} |`,
  );
  lines.push(`|---:|${ENDPOINT_CLASSES.map(() => '---:').join('|')}|`);
  for (const st of r.stages) {
    const cells = st.classes.map((c) =>
      c.requests === 0
        ? '–'
        : `${ms(c.p50Ms)} / ${c.withinTarget === false ? `**${ms(c.p95Ms)}**` : ms(c.p95Ms)}`,
    );
    lines.push(`| ${n(st.users)} | ${cells.join(' | ')} |`);
  }
  lines.push('');
  lines.push('Per stage, also: requests per class and what the machine was doing.');
  lines.push('');
  lines.push(
    `| users | ${ENDPOINT_CLASSES.join(' | ')} | ceiling req/s | service CPU | load generator lag p99 | drained | quick again after | refused by class budget / late loop |`,
  );
  lines.push(`|---:|${ENDPOINT_CLASSES.map(() => '---:').join('|')}|---:|---:|---:|---|---:|---:|`);
  for (const st of r.stages) {
    const notes = st.notes ?? {};
    lines.push(
      `| ${n(st.users)} | ${st.classes.map((c) => n(c.requests)).join(' | ')} | ${String(notes.offeredCeilingPerSec ?? '–')} | ${String(notes.serviceCpuPct ?? '–')} % | ` +
        `${String(notes.loadGeneratorLagP99Ms ?? '–')} ms | ${String(notes.drained ?? '–')} | ${typeof notes.recoveryMs === 'number' ? `${(notes.recoveryMs / 1000).toFixed(1)} s` : '–'} | ${refusalText(notes.refusals)} |`,
    );
  }
  lines.push('');
  lines.push('How to read it:');
  lines.push('');
  lines.push(
    `- Classes: ${ENDPOINT_CLASSES.map((c) => `**${c}** = ${CLASS_LABELS[c]}`).join('; ')}.`,
    '- Errors are 5xx (503 `overloaded` included), timeouts and network errors; 4xx a scenario asked for are successes.',
    '- Writes are the requests that change state (every POST/PATCH/DELETE except the authorization checks); they ' +
      'starve when their share of the successes falls below their share of what was attempted.',
    `- A refusal (503 \`overloaded\`) should come back in < ${REFUSAL_TARGET_MS} ms; its fastest and p95 are shown.`,
    '- Ceiling: what the users would ask of an instant service (users × 1000 / mean think ms); attempted req/s well below it means users were waiting on answers.',
    '- A stage whose load generator lagged (p99 of its own timer well above a few ms) measured the generator too.',
    "- Quick again after: from the stage's end (the users stop sending) until `/ready` (a database and Redis round trip) answered within 50 ms three times in a row; the aim after an overload is < 5 s.",
  );
  if (r.chart.pngSkipped)
    lines.push('', `PNG not rendered (${r.chart.pngSkipped}); the SVG beside this report is the chart.`);
  return lines.join('\n');
}

/** Chromium as the project launches it (Debian's, headless, nothing fetched from anywhere). */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Renders the SVG to a PNG with chromium (playwright-core). Resolves null when written, or the
 * reason it was skipped (no chromium here, or it failed to start).
 */
export async function renderPng(svg: string, pngPath: string): Promise<string | null> {
  const { access } = await import('node:fs/promises');
  try {
    await access(CHROMIUM_PATH);
  } catch {
    return `no chromium at ${CHROMIUM_PATH}`;
  }
  const { chromium } = await import('playwright-core');
  let browser: Awaited<ReturnType<typeof chromium.launch>> | undefined;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 60_000,
    });
    const page = await browser.newPage({ viewport: { width: W, height: H } });
    await page.setContent(`<!doctype html><html><body style="margin:0">${svg}</body></html>`);
    await page.locator('svg').first().screenshot({ path: pngPath, timeout: 60_000 });
    return null;
  } catch (error) {
    return `chromium failed: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`;
  } finally {
    await browser?.close().catch(() => {});
  }
}

function refusalText(value: unknown): string {
  const r = value as { byClassBudget?: unknown; byLateLoop?: unknown } | null | undefined;
  if (typeof r?.byClassBudget !== 'number' || typeof r.byLateLoop !== 'number') return '–';
  return `${r.byClassBudget.toLocaleString('en-US')} / ${r.byLateLoop.toLocaleString('en-US')}`;
}
