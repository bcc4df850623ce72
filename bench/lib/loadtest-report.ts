import type * as hdr from 'hdr-histogram-js';
import type { SetupSummary } from './loadtest-setup.js';
import {
  type EndpointStats,
  ERROR_OUTCOMES,
  type GenerationCounters,
  newHistogram,
  type Outcome,
  type TimelinePoint,
} from './loadtest-stats.js';
import type { CpuUsage, FdLimit, FdSetup } from './loadtest-system.js';
import type { describeMachine } from './report.js';
import { writeResultFiles } from './report.js';

export interface Latency {
  count: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
}

export interface EndpointRow extends Latency {
  endpoint: string;
  reqPerSec: number;
  outcomes: Record<Outcome, number>;
  /** (5xx + timeouts + network errors) / requests. */
  errorRate: number;
  statuses: Record<string, number>;
  cache: Record<string, number>;
}

export interface GroupRow extends Latency {
  name: string;
  endpoints: string[];
}

export interface TargetRow {
  name: string;
  source: 'seed 002' | 'SPEC §7' | 'info';
  description: string;
  measured: string;
  threshold: string;
  status: 'pass' | 'fail' | 'n/a';
  note?: string;
}

export interface ServerView {
  window: string;
  validate: unknown;
  targets: {
    name: string;
    status: string;
    value: number | null;
    p50_ms?: number;
    p95_ms?: number;
    p99_ms?: number;
    samples?: number;
  }[];
  /** Hits / (hits + misses) of L1 between the start and the end of the timed phase. */
  l1HitRatioDuringRun: number | null;
  l2HitRatioDuringRun: number | null;
  databaseLoadsDuringRun: number | null;
  l1HitRatio1m: number | null;
  requests1m: unknown;
  pools: unknown;
  queueDepth: number | null;
  firingAlerts: string[];
  health: string | null;
  eventLoopP99Ms: number | null;
  dashboard: unknown;
}

export interface LoadReport {
  date: string;
  machine: ReturnType<typeof describeMachine>;
  settings: Record<string, unknown>;
  fdLimits: { loadGenerator: FdSetup; server: FdLimit | null };
  setup: SetupSummary;
  run: {
    users: number;
    usersByScenario: Record<string, number>;
    iterationsByScenario: Record<string, number>;
    measuredSeconds: number;
    rampSeconds: number;
    totalRequests: number;
    reqPerSec: number;
    /** Between the end of the ramp and the deadline, when every user is active. */
    steadyReqPerSec: number;
    /** users × 1000 / mean think time: what the users would ask of an instant service. */
    offeredCeilingReqPerSec: number;
    outcomes: Record<Outcome, number>;
    errorRate: number;
    unexpectedRate: number;
    statuses: Record<string, number>;
    errorCodes: Record<string, number>;
    /** Bodies of a few 5xx and unexpected 4xx answers, per endpoint and status. */
    errorSamples: Record<string, string[]>;
    overall: Latency;
  };
  endpoints: EndpointRow[];
  groups: GroupRow[];
  targets: TargetRow[];
  generations: {
    created: number;
    completedObserved: number;
    failedObserved: number;
    unfinishedWhenGivenUp: number;
    insufficientCredits402: number;
    creditGrants: number;
    createsThrottled: number;
    streamsOpened: number;
    streamsEnded: number;
    streamsCapped: number;
    mediaMiB: number;
    endToEnd: Latency;
  };
  connections: {
    peakOpen: number;
    openAtDeadline: number;
    opened: number;
    closed: number;
    connectFailures: number;
    serverEstablishedPeak: number | null;
    /** Machine-wide TcpExt ListenOverflows / ListenDrops during the timed phase (kernel counters). */
    listenOverflows: number | null;
    listenDrops: number | null;
  };
  resources: {
    cpu: CpuUsage;
    loadGeneratorRssMiB: number | null;
    serverRssPeakMiB: number | null;
    loadGeneratorEventLoopP99Ms: number;
    loadGeneratorEventLoopMaxMs: number;
  };
  server: ServerView | null;
  /** What admission control refused during the run (the service's /metrics): per class budget, and by the late loop. */
  refusals?: { byClass: Record<string, number>; byLateLoop: number } | null;
  timeline: TimelinePoint[];
}

export function latencyOf(histogram: hdr.Histogram): Latency {
  const ms = (micros: number) => Math.round(micros) / 1000;
  if (histogram.totalCount === 0) return { count: 0, p50Ms: 0, p95Ms: 0, p99Ms: 0, maxMs: 0, meanMs: 0 };
  return {
    count: histogram.totalCount,
    p50Ms: ms(histogram.getValueAtPercentile(50)),
    p95Ms: ms(histogram.getValueAtPercentile(95)),
    p99Ms: ms(histogram.getValueAtPercentile(99)),
    maxMs: ms(histogram.maxValue),
    meanMs: ms(histogram.mean),
  };
}

export function endpointRows(endpoints: Iterable<EndpointStats>, seconds: number): EndpointRow[] {
  return [...endpoints]
    .map((e): EndpointRow => {
      const requests = Object.values(e.outcomes).reduce((a, b) => a + b, 0);
      const errors = ERROR_OUTCOMES.reduce((sum, o) => sum + e.outcomes[o], 0);
      return {
        endpoint: e.name,
        ...latencyOf(e.histogram),
        count: requests,
        reqPerSec: round(requests / seconds, 1),
        outcomes: { ...e.outcomes },
        errorRate: requests === 0 ? 0 : errors / requests,
        statuses: Object.fromEntries([...e.statuses].sort((a, b) => a[0] - b[0])),
        cache: Object.fromEntries(e.cache),
      };
    })
    .sort((a, b) => b.count - a.count);
}

/** The seeds' endpoint groups, as the service's tracker defines them (ENDPOINT_GROUPS). */
export const GROUPS: { name: string; match: (endpoint: string) => boolean }[] = [
  { name: 'auth', match: (e) => / \/api\/v1\/auth\//.test(e) },
  {
    name: 'auth_token_only',
    match: (e) => / \/api\/v1\/auth\//.test(e) && !/\/auth\/(login|register)$/.test(e),
  },
  { name: 'authorization', match: (e) => / \/api\/v1\/authz\//.test(e) || e.endsWith('/authorize') },
  { name: 'generation_access', match: (e) => e === 'GET /api/v1/generations/:id' },
  { name: 'media_url', match: (e) => e.endsWith('/media-urls') },
  { name: 'team_ops', match: (e) => / \/api\/v1\/teams/.test(e) },
];

export function groupRows(endpoints: Iterable<EndpointStats>): GroupRow[] {
  const all = [...endpoints];
  return GROUPS.map(({ name, match }) => {
    const members = all.filter((e) => match(e.name));
    const merged = newHistogram();
    for (const e of members) merged.add(e.histogram);
    return { name, endpoints: members.map((e) => e.name), ...latencyOf(merged) };
  });
}

export function overallLatency(endpoints: Iterable<EndpointStats>): Latency {
  const merged = newHistogram();
  for (const e of endpoints) merged.add(e.histogram);
  return latencyOf(merged);
}

export function generationSummary(g: GenerationCounters): LoadReport['generations'] {
  return {
    created: g.created,
    completedObserved: g.completed,
    failedObserved: g.failed,
    unfinishedWhenGivenUp: g.unfinished,
    insufficientCredits402: g.insufficientCredits,
    creditGrants: g.creditGrants,
    createsThrottled: g.createsThrottled,
    streamsOpened: g.streamsOpened,
    streamsEnded: g.streamsEnded,
    streamsCapped: g.streamsCapped,
    mediaMiB: round(g.mediaBytes / 2 ** 20, 1),
    endToEnd: latencyOf(g.endToEnd),
  };
}

const SEED_LATENCY_TARGETS: { group: string; description: string; maxMs: number }[] = [
  {
    group: 'auth',
    description: 'authentication p95 (every /auth/* call, argon2id sign-ins included)',
    maxMs: 50,
  },
  {
    group: 'authorization',
    description: 'authorization p95 (/authz/*, /generations/:id/authorize)',
    maxMs: 75,
  },
  { group: 'generation_access', description: 'generation access p95 (GET /generations/:id)', maxMs: 100 },
  { group: 'media_url', description: 'media URL p95 (GET /generations/:id/media-urls)', maxMs: 200 },
  { group: 'team_ops', description: 'team operations p95 (/teams*)', maxMs: 100 },
];

export function judgeTargets(
  report: Pick<LoadReport, 'groups' | 'run' | 'connections' | 'server' | 'settings'>,
): TargetRow[] {
  const rows: TargetRow[] = [];
  for (const target of SEED_LATENCY_TARGETS) {
    const group = report.groups.find((g) => g.name === target.group);
    if (!group || group.count === 0) {
      rows.push({
        name: target.group,
        source: 'seed 002',
        description: target.description,
        measured: 'no requests',
        threshold: `< ${target.maxMs} ms`,
        status: 'n/a',
        note: 'this scenario does not call these endpoints',
      });
      continue;
    }
    rows.push({
      name: target.group,
      source: 'seed 002',
      description: target.description,
      measured: `${group.p95Ms.toFixed(2)} ms (n = ${group.count.toLocaleString('en-US')})`,
      threshold: `< ${target.maxMs} ms`,
      status: group.p95Ms < target.maxMs ? 'pass' : 'fail',
    });
  }
  const tokenOnly = report.groups.find((g) => g.name === 'auth_token_only');
  if (tokenOnly && tokenOnly.count > 0) {
    rows.push({
      name: 'auth_token_only',
      source: 'info',
      description: 'authentication p95 without password hashing (/auth/me, refresh, logout)',
      measured: `${tokenOnly.p95Ms.toFixed(2)} ms (n = ${tokenOnly.count.toLocaleString('en-US')})`,
      threshold: '< 50 ms',
      status: tokenOnly.p95Ms < 50 ? 'pass' : 'fail',
    });
  }
  const { run } = report;
  rows.push({
    name: 'error_rate',
    source: 'seed 002',
    description: 'error rate (5xx, timeouts, network errors) / requests',
    measured: `${pct(run.errorRate)} (${errorsOf(run.outcomes).toLocaleString('en-US')} of ${run.totalRequests.toLocaleString('en-US')})`,
    threshold: '< 0.1 %',
    status: run.totalRequests > 0 && run.errorRate < 0.001 ? 'pass' : 'fail',
  });
  rows.push({
    name: 'unexpected_4xx',
    source: 'info',
    description: '4xx answers the scenario did not expect (bugs on either side)',
    measured: `${pct(run.unexpectedRate)} (${run.outcomes.unexpected.toLocaleString('en-US')})`,
    threshold: '< 0.1 %',
    status: run.unexpectedRate < 0.001 ? 'pass' : 'fail',
  });
  const loadAllows = run.offeredCeilingReqPerSec >= 1_000;
  rows.push({
    name: 'throughput',
    source: 'seed 002',
    description: 'throughput with every user active (steady phase)',
    measured: `${run.steadyReqPerSec.toFixed(0)} req/s`,
    threshold: '> 1,000 req/s',
    status: loadAllows ? (run.steadyReqPerSec > 1_000 ? 'pass' : 'fail') : 'n/a',
    ...(loadAllows
      ? {}
      : {
          note: `the users offer at most ~${run.offeredCeilingReqPerSec.toFixed(0)} req/s with this think time`,
        }),
  });
  const server = report.server;
  if (server?.l1HitRatioDuringRun !== null && server?.l1HitRatioDuringRun !== undefined) {
    rows.push({
      name: 'l1_hit_ratio',
      source: 'seed 002',
      description: 'L1 hit ratio during the run (server: Δhits / Δlookups)',
      measured: pct(server.l1HitRatioDuringRun),
      threshold: '> 95 %',
      status: server.l1HitRatioDuringRun > 0.95 ? 'pass' : 'fail',
    });
  }
  const users = Number(report.settings.users);
  const mixed = report.settings.scenario === 'mixed';
  const c = report.connections;
  const connectionsMet = c.peakOpen >= 10_000;
  rows.push({
    name: 'concurrent_connections',
    source: 'SPEC §7',
    description: '10,000 concurrent keep-alive connections, mixed scenario, error rate < 0.1 %',
    measured:
      `peak ${c.peakOpen.toLocaleString('en-US')} open` +
      (c.serverEstablishedPeak === null
        ? ''
        : ` (service saw ${c.serverEstablishedPeak.toLocaleString('en-US')} established)`) +
      `, errors ${pct(run.errorRate)}`,
    threshold: '≥ 10,000 and < 0.1 %',
    status: mixed && users >= 10_000 ? (connectionsMet && run.errorRate < 0.001 ? 'pass' : 'fail') : 'n/a',
    ...(mixed && users >= 10_000
      ? {}
      : { note: 'judged only with --scenario mixed --users 10000 (or more)' }),
  });
  return rows;
}

function errorsOf(outcomes: Record<Outcome, number>): number {
  return ERROR_OUTCOMES.reduce((sum, o) => sum + outcomes[o], 0);
}

export function toMarkdown(r: LoadReport): string {
  const n = (v: number) => Math.round(v).toLocaleString('en-US');
  const ms = (v: number) => v.toFixed(2);
  const s = r.settings;
  const m = r.machine;
  const lines: string[] = [];
  lines.push(`# Load test: ${s.scenario}, ${n(r.run.users)} users, ${s.durationSeconds} s — ${r.date}`);
  lines.push('');
  lines.push(
    `Machine: ${m.cpuCount} × ${m.cpuModel}, ${m.totalMemoryGiB} GiB, Node ${m.node}, ${m.os}; build ${m.build}. ` +
      'Load generator and service in separate processes on this same machine.',
  );
  lines.push(
    `Settings: ramp-up ${s.rampSeconds} s, think ${s.thinkMinMs}–${s.thinkMaxMs} ms, timeout ${s.timeoutMs} ms, ` +
      `login budget ${s.loginRate}/s, create budget ${s.createRate}/s, SSE share ${s.sseShare} (cap ${s.sseMaxMs} ms), ` +
      `worker step delay ${s.stepDelayMs} ms, seed ${s.seed}; database: ${s.database}, Redis: ${s.redis}.`,
  );
  const env = (s.serverEnv ?? {}) as Record<string, unknown>;
  lines.push(
    `Service: NODE_ENV=production, in-process worker (WORKER_ENABLED ${String(env.WORKER_ENABLED)}, concurrency ` +
      `${String(env.WORKER_CONCURRENCY)}), argon2id memory ${String(env.ARGON2_MEMORY_KIB)} KiB / passes ` +
      `${String(env.ARGON2_TIME_COST)}; login, register and generation rate limits raised to 1e9.`,
  );
  const extra = Object.entries((env.extra ?? {}) as Record<string, string>);
  if (extra.length > 0) {
    lines.push(
      `Extra service environment (--service-env): ${extra.map(([k, v]) => `${k}=${v}`).join(', ')}.`,
    );
  }
  const fd = r.fdLimits;
  lines.push(
    `File descriptors: load generator ${limitText(fd.loadGenerator.after)} (needed ${n(fd.loadGenerator.needed)}, ` +
      `${fd.loadGenerator.method}), service ${limitText(fd.server)}.`,
  );
  lines.push(
    `Users: ${Object.entries(r.run.usersByScenario)
      .map(([k, v]) => `${k} ${n(v)}`)
      .join(', ')}; one keep-alive connection each.`,
  );
  lines.push('');

  lines.push('## Targets');
  lines.push('');
  lines.push('| target | source | measured | threshold | result |');
  lines.push('|---|---|---|---|---|');
  for (const t of r.targets) {
    const verdict = t.status === 'pass' ? '**PASS**' : t.status === 'fail' ? '**FAIL**' : 'n/a';
    lines.push(
      `| ${t.description} | ${t.source} | ${t.measured} | ${t.threshold} | ${verdict}${t.note ? ` (${t.note})` : ''} |`,
    );
  }
  lines.push('');

  const run = r.run;
  lines.push('## Throughput and outcomes');
  lines.push('');
  lines.push(
    `${n(run.totalRequests)} requests in ${run.measuredSeconds.toFixed(1)} s: **${n(run.reqPerSec)} req/s** overall, ` +
      `**${n(run.steadyReqPerSec)} req/s** with every user active (offered ceiling at this think time ≈ ${n(run.offeredCeilingReqPerSec)} req/s). ` +
      `All requests: p50 ${ms(run.overall.p50Ms)} ms, p95 ${ms(run.overall.p95Ms)} ms, p99 ${ms(run.overall.p99Ms)} ms, max ${ms(run.overall.maxMs)} ms.`,
  );
  lines.push('');
  lines.push(
    `Outcomes: ok ${n(run.outcomes.ok)}, expected 4xx ${n(run.outcomes.expected)}, unexpected 4xx ${n(run.outcomes.unexpected)}, ` +
      `5xx ${n(run.outcomes.server_error)}, timeouts ${n(run.outcomes.timeout)}, network errors ${n(run.outcomes.network)}. ` +
      `Statuses: ${
        Object.entries(run.statuses)
          .map(([k, v]) => `${k}: ${n(v)}`)
          .join(', ') || 'none'
      }.` +
      (Object.keys(run.errorCodes).length > 0
        ? ` Error codes: ${Object.entries(run.errorCodes)
            .map(([k, v]) => `${k}: ${n(v)}`)
            .join(', ')}.`
        : ''),
  );
  const failures = groupSamples(run.errorSamples);
  if (failures.length > 0) {
    lines.push('');
    lines.push('Failed answers (5xx and unexpected 4xx), by status and error code:');
    lines.push('');
    for (const f of failures) {
      lines.push(
        `- ${f.status} \`${f.code}\` on ${f.endpoints.length} endpoint${f.endpoints.length === 1 ? '' : 's'} ` +
          `(${f.endpoints.slice(0, 6).join(', ')}${f.endpoints.length > 6 ? ', …' : ''}): \`${f.example.replaceAll('`', "'")}\``,
      );
    }
    lines.push('');
  }
  lines.push(
    `Iterations: ${Object.entries(run.iterationsByScenario)
      .map(([k, v]) => `${k} ${n(v)}`)
      .join(', ')}.`,
  );
  lines.push('');

  lines.push('## Per endpoint (client side, first byte sent → last byte read)');
  lines.push('');
  lines.push(
    '| endpoint | count | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | error rate | expected 4xx | unexpected 4xx | X-Cache |',
  );
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  for (const e of r.endpoints) {
    const errors = errorsOf(e.outcomes);
    const cache = Object.entries(e.cache)
      .map(([k, v]) => `${k} ${n(v)}`)
      .join(', ');
    lines.push(
      `| \`${e.endpoint}\` | ${n(e.count)} | ${e.reqPerSec.toFixed(1)} | ${ms(e.p50Ms)} | ${ms(e.p95Ms)} | ` +
        `${ms(e.p99Ms)} | ${ms(e.maxMs)} | ${n(errors)} | ${pct(e.errorRate)} | ${n(e.outcomes.expected)} | ` +
        `${n(e.outcomes.unexpected)} | ${cache || '–'} |`,
    );
  }
  lines.push('');
  lines.push('| group (seed targets) | count | p50 ms | p95 ms | p99 ms | max ms |');
  lines.push('|---|---:|---:|---:|---:|---:|');
  for (const g of r.groups) {
    lines.push(
      `| ${g.name} | ${n(g.count)} | ${ms(g.p50Ms)} | ${ms(g.p95Ms)} | ${ms(g.p99Ms)} | ${ms(g.maxMs)} |`,
    );
  }
  lines.push('');

  const g = r.generations;
  lines.push('## Generations');
  lines.push('');
  lines.push(
    `Created ${n(g.created)} (${n(g.createsThrottled)} creates skipped by the create budget, ${n(g.insufficientCredits402)} × 402, ` +
      `${n(g.creditGrants)} admin top-ups); observed completed ${n(g.completedObserved)}, failed ${n(g.failedObserved)}, ` +
      `not finished when the user moved on ${n(g.unfinishedWhenGivenUp)}. Event streams: ${n(g.streamsOpened)} opened, ` +
      `${n(g.streamsEnded)} ended by the service, ${n(g.streamsCapped)} cut at the cap. Media downloaded: ${g.mediaMiB} MiB.`,
  );
  lines.push(
    `Create → completed (as observed): p50 ${ms(g.endToEnd.p50Ms)} ms, p95 ${ms(g.endToEnd.p95Ms)} ms, ` +
      `max ${ms(g.endToEnd.maxMs)} ms (n = ${n(g.endToEnd.count)}).`,
  );
  lines.push('');

  const c = r.connections;
  const res = r.resources;
  lines.push('## Connections and resources');
  lines.push('');
  lines.push(
    `Keep-alive connections: peak ${n(c.peakOpen)} open at once (client side)` +
      (c.serverEstablishedPeak === null
        ? ''
        : `, ${n(c.serverEstablishedPeak)} established on the service port at the peak sample (ss)`) +
      `; ${n(c.opened)} opened and ${n(c.closed)} closed before the deadline (a closed one is reopened on the next ` +
      `request: errors and event streams cut at the cap), ${n(c.connectFailures)} failed to connect, ` +
      `${n(c.openAtDeadline)} open at the deadline. Kernel: ${c.listenOverflows === null ? '?' : n(c.listenOverflows)} ` +
      `listen-backlog overflows, ${c.listenDrops === null ? '?' : n(c.listenDrops)} SYNs dropped (machine-wide, timed phase).`,
  );
  lines.push(
    `CPU (percent of one core, timed phase): load generator ${res.cpu.loadGeneratorPct} %, service (Node) ${res.cpu.serverPct} %, ` +
      `PostgreSQL ${res.cpu.postgresPct} % (${res.cpu.postgresScope}), everything else on the machine ${res.cpu.otherPct} %; ` +
      `machine ${res.cpu.machinePct} % busy of ${res.cpu.cores} cores. ` +
      `Memory: load generator ${res.loadGeneratorRssMiB ?? '?'} MiB, service peak ${res.serverRssPeakMiB ?? '?'} MiB RSS. ` +
      `Load generator CPU per request ≈ ${
        run.totalRequests > 0
          ? Math.round(((res.cpu.loadGeneratorPct / 100) * run.measuredSeconds * 1e6) / run.totalRequests)
          : 0
      } µs (user + kernel time of all its threads: loopback TCP is charged to it, connects included). ` +
      `Load generator event-loop delay p99 ${ms(res.loadGeneratorEventLoopP99Ms)} ms (max ${ms(res.loadGeneratorEventLoopMaxMs)} ms): ` +
      'what the client itself adds to every latency above.',
  );
  lines.push('');

  const sv = r.server;
  lines.push('## Server-side view (/api/v1/performance/validate and /dashboard)');
  lines.push('');
  if (!sv) {
    lines.push('The service did not answer its performance endpoints.');
  } else {
    lines.push(
      `Window ${sv.window} (ends with the run; may include the last seconds of setup). Health: ${sv.health ?? '?'}; ` +
        `firing alerts: ${sv.firingAlerts.length > 0 ? sv.firingAlerts.join(', ') : 'none'}; ` +
        `service event-loop p99 ${sv.eventLoopP99Ms === null ? '?' : ms(sv.eventLoopP99Ms)} ms; ` +
        `generation queue depth at the end ${sv.queueDepth ?? '?'}.`,
    );
    lines.push(
      `Cache during the run: L1 hit ratio ${sv.l1HitRatioDuringRun === null ? 'n/a' : pct(sv.l1HitRatioDuringRun)}, ` +
        `L2 hit ratio ${sv.l2HitRatioDuringRun === null ? 'n/a (no Redis)' : pct(sv.l2HitRatioDuringRun)}, ` +
        `database fact loads ${sv.databaseLoadsDuringRun ?? '?'}; L1 hit ratio over the last minute ` +
        `${sv.l1HitRatio1m === null ? 'n/a' : pct(sv.l1HitRatio1m)}.`,
    );
    lines.push('');
    lines.push('| server target | samples | p50 ms | p95 ms | p99 ms | value | status |');
    lines.push('|---|---:|---:|---:|---:|---:|---|');
    for (const t of sv.targets) {
      lines.push(
        `| ${t.name} | ${t.samples ?? '–'} | ${num(t.p50_ms)} | ${num(t.p95_ms)} | ${num(t.p99_ms)} | ` +
          `${t.value === null ? '–' : round(t.value, 4)} | ${t.status} |`,
      );
    }
  }
  lines.push('');

  const buckets = timelineBuckets(r.timeline, Math.max(1, Math.round(Number(s.durationSeconds) / 12)));
  if (buckets.length > 0) {
    lines.push('## Timeline');
    lines.push('');
    lines.push('| seconds | req/s | errors/s | active users | load generator lag (max ms) |');
    lines.push('|---|---:|---:|---:|---:|');
    for (const b of buckets) {
      lines.push(
        `| ${b.from}–${b.to} | ${n(b.reqPerSec)} | ${n(b.errorsPerSec)} | ${n(b.activeUsers)} | ${n(b.clientLagMs)} |`,
      );
    }
    lines.push('');
  }

  const findings = diagnose(r);
  if (findings.length > 0) {
    lines.push('## What limited this run (measured)');
    lines.push('');
    for (const f of findings) lines.push(`- ${f}`);
    lines.push('');
  }

  const st = r.setup;
  lines.push('## Setup (not part of the figures above)');
  lines.push('');
  lines.push(
    `${n(st.users)} users registered through the API in ${st.registerSeconds} s (${st.registerPerSecond}/s, argon2id each); ` +
      `${n(st.teams)} teams with members, team projects and ${n(st.generations)} generations in ${st.fixtureSeconds} s; ` +
      `queue drain ${st.drainSeconds} s (depth at start ${st.queueDepthAtStart ?? '?'}); ${n(st.requests)} requests, ` +
      `${st.retries} retries; admin: ${st.admin}.`,
  );
  lines.push('');
  return lines.join('\n');
}

interface Bucket {
  from: number;
  to: number;
  reqPerSec: number;
  errorsPerSec: number;
  activeUsers: number;
  clientLagMs: number;
}

function timelineBuckets(timeline: TimelinePoint[], width: number): Bucket[] {
  const out: Bucket[] = [];
  const last = timeline.reduce((m, p) => Math.max(m, p.second), -1);
  for (let from = 0; from <= last; from += width) {
    const points = timeline.filter((p) => p.second >= from && p.second < from + width);
    const requests = points.reduce((a, p) => a + p.requests, 0);
    const errors = points.reduce((a, p) => a + p.errors, 0);
    out.push({
      from,
      to: from + width,
      reqPerSec: requests / width,
      errorsPerSec: errors / width,
      activeUsers: points.reduce((m, p) => Math.max(m, p.activeUsers), 0),
      clientLagMs: points.reduce((m, p) => Math.max(m, p.clientLagMs ?? 0), 0),
    });
  }
  return out;
}

/** Plain statements from the measurements: which resource ran out first. */
export function diagnose(r: LoadReport): string[] {
  const out: string[] = [];
  const cpu = r.resources.cpu;
  if (cpu.machinePct >= 90) {
    out.push(
      `CPU: the machine was ${cpu.machinePct} % busy (${cpu.cores} cores): service ${cpu.serverPct} %, PostgreSQL ` +
        `${cpu.postgresPct} %, load generator ${cpu.loadGeneratorPct} %, other processes ${cpu.otherPct} % ` +
        '(percent of one core). Every latency above includes waiting for a core.',
    );
  }
  if (cpu.otherPct >= 25) {
    out.push(
      `Other work on the machine used ${cpu.otherPct} % of a core during the run: the figures are disturbed by it ` +
        'and are not this service’s capacity.',
    );
  }
  if (r.resources.loadGeneratorEventLoopP99Ms >= 50) {
    out.push(
      `The load generator lagged (event-loop delay p99 ${r.resources.loadGeneratorEventLoopP99Ms} ms): ` +
        'client-side latencies include that much of its own delay.',
    );
  }
  const codes = r.run.errorCodes;
  const connectTimeouts = codes.UND_ERR_CONNECT_TIMEOUT ?? 0;
  if (connectTimeouts > 0 || r.connections.connectFailures > 0) {
    const overflows = r.connections.listenOverflows;
    out.push(
      `${connectTimeouts.toLocaleString('en-US')} connects timed out (${r.connections.connectFailures.toLocaleString('en-US')} ` +
        'connection errors)' +
        (overflows
          ? `; the kernel counted ${overflows.toLocaleString('en-US')} listen-backlog overflows: the service's accept ` +
            'queue (Node default backlog 511) was full while its event loop was busy, and SYNs were dropped and retried.'
          : ': new connections waited on a busy service.'),
    );
  }
  const headerTimeouts = codes.UND_ERR_HEADERS_TIMEOUT ?? 0;
  if (headerTimeouts > 0) {
    out.push(
      `${headerTimeouts.toLocaleString('en-US')} requests got no answer within ${String(r.settings.timeoutMs)} ms: ` +
        'queued behind others on a saturated service.',
    );
  }
  const failures = groupSamples(r.run.errorSamples);
  for (const f of failures) {
    if (f.code === 'overloaded') {
      const by = r.refusals;
      const split = by
        ? `: ${[
            ...Object.entries(by.byClass)
              .filter(([, n]) => n > 0)
              .map(([name, n]) => `${n.toLocaleString('en-US')} by the ${name} budget`),
            ...(by.byLateLoop > 0
              ? [`${by.byLateLoop.toLocaleString('en-US')} while the event loop was late`]
              : []),
          ].join(', ')}`
        : '';
      out.push(
        `Admission control refused work at once (503 overloaded${split}), on ${f.endpoints.length} endpoints; ` +
          'users honoured Retry-After.',
      );
    } else if (f.code === 'service_unavailable') {
      out.push(
        '503 service_unavailable: database statements or pool waits timed out ' +
          `(on ${f.endpoints.length} endpoints).`,
      );
    }
  }
  const g = r.generations;
  if (g.created > 0 && g.unfinishedWhenGivenUp > g.completedObserved) {
    out.push(
      `Generations: ${g.unfinishedWhenGivenUp} of ${g.created} were still queued or running when their user moved on ` +
        `(worker backlog; queue depth at the end ${r.server?.queueDepth ?? '?'}).`,
    );
  }
  return out;
}

/** `endpoint → status` samples regrouped by status and the error envelope's code. */
function groupSamples(
  samples: Record<string, string[]>,
): { status: string; code: string; endpoints: string[]; example: string }[] {
  const groups = new Map<string, { status: string; code: string; endpoints: string[]; example: string }>();
  for (const [key, bodies] of Object.entries(samples)) {
    const [endpoint = key, status = '?'] = key.split(' → ');
    const example = bodies[0] ?? '';
    let code = 'unknown';
    try {
      const parsed = JSON.parse(example) as { error?: { code?: unknown } };
      if (typeof parsed.error?.code === 'string') code = parsed.error.code;
    } catch {
      // Not the service's envelope (a proxy, a crash page): keep the raw text as the example.
    }
    const id = `${status} ${code}`;
    const group = groups.get(id) ?? { status, code, endpoints: [], example };
    group.endpoints.push(`\`${endpoint}\``);
    groups.set(id, group);
  }
  return [...groups.values()];
}

function limitText(limit: FdLimit | null): string {
  if (!limit) return 'unknown';
  const f = (v: number) => (Number.isFinite(v) ? v.toLocaleString('en-US') : 'unlimited');
  return `${f(limit.soft)} (hard ${f(limit.hard)})`;
}

const num = (v: number | undefined) => (v === undefined ? '–' : v.toFixed(2));
export const pct = (ratio: number) => `${(ratio * 100).toFixed(ratio < 0.01 ? 3 : 2)} %`;
export const round = (v: number, digits: number) => Math.round(v * 10 ** digits) / 10 ** digits;

/** `bench/results/loadtest-<scenario>-<YYYY-MM-DD>.{json,md}`, each written whole or not at all. */
export function writeLoadReport(dir: string, report: LoadReport, markdown: string): Promise<string[]> {
  const base = `loadtest-${String(report.settings.scenario)}-${report.date.slice(0, 10)}`;
  return writeResultFiles(dir, base, report, `${markdown}\n`);
}
