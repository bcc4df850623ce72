import { execFileSync } from 'node:child_process';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { cpus, release, totalmem, type } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** One measured run (one round) of one case. */
export interface Sample {
  reqPerSec: number;
  responses: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  /** Connection errors, timeouts included. */
  errors: number;
  /** Responses whose status was not 200 (a 401 would make a fast route look faster). */
  non200: number;
  /** Database statements the server sent during the run, per response. */
  roundTripsPerRequest: number;
  /** Server RSS at the end of the run. */
  rssMb: number;
  /**
   * CPU time of the server process per request (µs): what a request costs the server itself,
   * whatever else the machine is doing. The database's CPU is not in it.
   */
  cpuMicrosPerRequest: number;
  /** CPU time of the PostgreSQL server's processes per request (µs); NaN on DATABASE_URL. */
  dbCpuMicrosPerRequest: number;
  /** The machine's 1-minute load average at the end of the run: how busy the neighbours were. */
  loadAverage: number;
  /** Only when some answers were not 200: status → count, and what the first ones said. */
  statuses?: Record<string, number>;
  failures?: string[];
}

export interface CaseInfo {
  name: string;
  /** What is measured, in a few words. */
  description: string;
  /** Authorization checks one request carries (100 for bulk). */
  checksPerRequest: number;
}

export interface CaseSummary extends CaseInfo {
  medianReqPerSec: number;
  minReqPerSec: number;
  maxReqPerSec: number;
  medianP50Ms: number;
  medianP95Ms: number;
  medianP99Ms: number;
  roundTripsPerRequest: number;
  rssMb: number;
  cpuMicrosPerRequest: number;
  dbCpuMicrosPerRequest: number;
  errors: number;
  non200: number;
  /** Median req/s over the `bare` case's, from the same interleaved run. */
  ratioToBare: number;
  /** Median req/s over the `rls_peer` case's. */
  ratioToRls: number;
}

export interface Target {
  name: string;
  goal: string;
  measured: string;
  /** null: not measured in this run (a case was skipped), or a calibration figure with no goal to pass. */
  pass: boolean | null;
  info?: boolean;
  /** Measured, but the effect is smaller than the run's own noise: neither a pass nor a miss. */
  unresolvable?: boolean;
}

export interface Settings {
  connections: number;
  durationSeconds: number;
  rounds: number;
  warmupSeconds: number;
  database: 'embedded' | 'DATABASE_URL';
  quick: boolean;
  /** 1-minute load average before the first and after the last measured run (2 cores: 2 = busy). */
  loadAverage: { start: number; end: number };
}

export interface Report {
  date: string;
  machine: ReturnType<typeof describeMachine>;
  settings: Settings;
  world: Record<string, number>;
  workload: Record<string, number | string>;
  cases: CaseSummary[];
  samples: Record<string, Sample[]>;
  targets: Target[];
  /** Per case: answers that disagree with Velro's cold (database) answer, over the whole request set. */
  agreement: Record<string, { checked: number; disagreements: number }>;
  sweep?: SweepReport;
  profiles?: Record<
    string,
    {
      functions: { function: string; location: string; selfMs: number; selfPercent: number }[];
      areas: { area: string; selfMs: number; selfPercent: number }[];
    }
  >;
  notes: string[];
}

export interface SweepRow {
  generations: number;
  mode: string;
  medianReqPerSec: number;
  medianP50Ms: number;
  medianP95Ms: number;
  medianP99Ms: number;
  roundTripsPerRequest: number;
  cpuMicrosPerRequest: number;
  dbCpuMicrosPerRequest: number;
  seedSeconds: number;
}

export interface SweepReport {
  rows: SweepRow[];
  samples: Record<string, Sample[]>;
}

export function describeMachine() {
  const cores = cpus();
  return {
    cpuModel: cores[0]?.model.trim() ?? 'unknown',
    cpuCount: cores.length,
    totalMemoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    os: `${type()} ${release()}`,
    build: describeBuild(),
  };
}

/** The commit measured, and whether the service's code differed from it (so a report names its build). */
function describeBuild(): string {
  const git = (args: string[]) =>
    execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  try {
    const commit = git(['rev-parse', '--short', 'HEAD']);
    const dirty = git(['status', '--porcelain', '--', 'src', 'migrations', 'package-lock.json']) !== '';
    return dirty ? `${commit} with uncommitted changes` : commit;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  if (sorted.length === 0) return Number.NaN;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nearest-rank percentile of ascending values. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** Median and spread per case: single runs vary ±30 % on this machine class, rounds tell how much. */
export function summarise(cases: CaseInfo[], samples: Record<string, Sample[]>): CaseSummary[] {
  const summaries = cases.map((info): CaseSummary => {
    const runs = samples[info.name] ?? [];
    const rates = runs.map((s) => s.reqPerSec);
    // Only the case's description goes into the report: the workload and server handle it may carry
    // stay out (the request rotation alone is megabytes).
    return {
      name: info.name,
      description: info.description,
      checksPerRequest: info.checksPerRequest,
      medianReqPerSec: median(rates),
      minReqPerSec: Math.min(...rates),
      maxReqPerSec: Math.max(...rates),
      medianP50Ms: median(runs.map((s) => s.p50Ms)),
      medianP95Ms: median(runs.map((s) => s.p95Ms)),
      medianP99Ms: median(runs.map((s) => s.p99Ms)),
      roundTripsPerRequest: median(runs.map((s) => s.roundTripsPerRequest)),
      rssMb: Math.max(...runs.map((s) => s.rssMb)),
      cpuMicrosPerRequest: median(runs.map((s) => s.cpuMicrosPerRequest)),
      dbCpuMicrosPerRequest: median(runs.map((s) => s.dbCpuMicrosPerRequest)),
      errors: runs.reduce((sum, s) => sum + s.errors, 0),
      non200: runs.reduce((sum, s) => sum + s.non200, 0),
      ratioToBare: Number.NaN,
      ratioToRls: Number.NaN,
    };
  });
  const bare = summaries.find((s) => s.name === 'bare')?.medianReqPerSec ?? Number.NaN;
  const rls = summaries.find((s) => s.name === 'rls_peer')?.medianReqPerSec ?? Number.NaN;
  for (const summary of summaries) {
    summary.ratioToBare = summary.medianReqPerSec / bare;
    summary.ratioToRls = summary.medianReqPerSec / rls;
  }
  return summaries;
}

const int = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '–');
const ms = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '–');
const ratio = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '–');

export function toMarkdown(report: Report): string {
  const { machine: m, settings: s } = report;
  const out: string[] = [
    `# Benchmark ${report.date}${s.quick ? ' (quick smoke run: too short to judge targets)' : ''}`,
    '',
    `Machine: ${m.cpuCount} × ${m.cpuModel}, ${m.totalMemoryGiB} GiB, Node ${m.node}, ${m.os}; build ${m.build}.`,
    `Settings: ${s.connections} connections, ${s.durationSeconds} s per run after ${s.warmupSeconds} s of warm-up, ` +
      `${s.rounds} interleaved round${s.rounds === 1 ? '' : 's'} (A B C … A B C …), database: ${s.database}. ` +
      'Every server in its own process (NODE_ENV=production), autocannon in the bench process. ' +
      `Machine load average ${s.loadAverage.start.toFixed(1)} before the first run, ${s.loadAverage.end.toFixed(1)} after the last ` +
      '(other work on the machine shows up as spread between rounds).',
    `World: ${Object.entries(report.world)
      .map(([k, v]) => `${int(v)} ${k}`)
      .join(', ')}.`,
    `Workload: ${Object.entries(report.workload)
      .map(([k, v]) => `${k} ${typeof v === 'number' ? (Number.isInteger(v) ? int(v) : v.toFixed(3)) : v}`)
      .join(', ')}.`,
    '',
    '| case | req/s median (min–max) | p50 ms | p95 ms | p99 ms | × bare | × rls_peer | DB round trips/req | CPU µs/req server + DB | RSS MB | errors / non-200 |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...report.cases.map(
      (c) =>
        `| ${c.name} | ${int(c.medianReqPerSec)} (${int(c.minReqPerSec)}–${int(c.maxReqPerSec)}) | ` +
        `${ms(c.medianP50Ms)} | ${ms(c.medianP95Ms)} | ${ms(c.medianP99Ms)} | ${ratio(c.ratioToBare)} | ` +
        `${ratio(c.ratioToRls)} | ${Number.isFinite(c.roundTripsPerRequest) ? c.roundTripsPerRequest.toFixed(3) : '–'} | ` +
        `${int(c.cpuMicrosPerRequest)} + ${int(c.dbCpuMicrosPerRequest)} | ` +
        `${Number.isFinite(c.rssMb) ? c.rssMb.toFixed(0) : '–'} | ${c.errors} / ${c.non200} |`,
    ),
    '',
    ...report.cases.map((c) => `- **${c.name}**: ${c.description}`),
    '',
    '## Targets (SPEC §7)',
    '',
    '| target | goal | measured | |',
    '|---|---|---|---|',
    ...report.targets.map(
      (t) =>
        `| ${t.name} | ${t.goal} | ${t.measured} | ${t.info ? 'info' : t.unresolvable ? 'not resolvable' : t.pass === null ? 'not measured' : t.pass ? 'pass' : '**FAIL**'} |`,
    ),
    '',
    '## Same answers everywhere',
    '',
    'Each case answered the whole request set once before measuring; answers compared with Velro cold (the database):',
    '',
    ...Object.entries(report.agreement).map(
      ([name, a]) =>
        `- ${name}: ${a.disagreements} disagreement${a.disagreements === 1 ? '' : 's'} in ${int(a.checked)} checks`,
    ),
    '',
  ];
  if (report.sweep) {
    out.push(
      '## Scale sweep (cold and warm checks as generations grow)',
      '',
      '| generations | mode | req/s | p50 ms | p95 ms | p99 ms | DB round trips/req | CPU µs/req server + DB | seeding s |',
      '|---:|---|---:|---:|---:|---:|---:|---:|---:|',
      ...report.sweep.rows.map(
        (r) =>
          `| ${int(r.generations)} | ${r.mode} | ${int(r.medianReqPerSec)} | ${ms(r.medianP50Ms)} | ${ms(r.medianP95Ms)} | ` +
          `${ms(r.medianP99Ms)} | ${r.roundTripsPerRequest.toFixed(3)} | ${int(r.cpuMicrosPerRequest)} + ` +
          `${int(r.dbCpuMicrosPerRequest)} | ${int(r.seedSeconds)} |`,
      ),
      '',
    );
  }
  if (report.profiles && Object.keys(report.profiles).length > 0) {
    out.push(
      '## Profiles (node --cpu-prof, self time, during the case that missed a target)',
      '',
      'On this 2-vCPU VM, native socket writes (`writev`, `writeUtf8String`) also collect the time the thread ' +
        'waited for a CPU after its write woke the load generator: read them as "per-write cost, inflated"; ' +
        'the CPU µs/req column above is the reliable cost figure.',
      '',
    );
    for (const [name, profile] of Object.entries(report.profiles)) {
      out.push(`### ${name}`, '', '| function | where | self ms | % |', '|---|---|---:|---:|');
      for (const r of profile.functions) {
        out.push(`| ${r.function.replaceAll('|', '\\|')} | ${r.location} | ${r.selfMs} | ${r.selfPercent} |`);
      }
      out.push('', 'By area:', '', '| area | self ms | % |', '|---|---:|---:|');
      for (const a of profile.areas) out.push(`| ${a.area} | ${a.selfMs} | ${a.selfPercent} |`);
      out.push('');
    }
  }
  if (report.notes.length > 0) out.push('## Notes', '', ...report.notes.map((n) => `- ${n}`), '');
  return out.join('\n');
}

/**
 * `<dir>/<base>.json` (the report) and `<dir>/<base>.md`, each written next to a `.tmp` first and
 * renamed, so an interrupted run never leaves half a result. Every bench writes through here.
 */
export async function writeResultFiles(
  dir: string,
  base: string,
  report: unknown,
  markdown: string,
): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const files: [string, string][] = [
    [join(dir, `${base}.json`), `${JSON.stringify(report, null, 2)}\n`],
    [join(dir, `${base}.md`), markdown],
  ];
  for (const [path, content] of files) {
    await writeFile(`${path}.tmp`, content);
    await rename(`${path}.tmp`, path);
  }
  return files.map(([path]) => path);
}

export function writeReport(
  dir: string,
  report: Report,
  markdown: string,
  name: (day: string) => string = (day) => day,
): Promise<string[]> {
  return writeResultFiles(dir, name(report.date.slice(0, 10)), report, markdown);
}
