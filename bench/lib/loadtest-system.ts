import { execFile, spawn, spawnSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface FdLimit {
  soft: number;
  hard: number;
}

/** `Max open files` of a process, from /proc (Node cannot call getrlimit itself). */
export async function fdLimitOf(pid: number | 'self'): Promise<FdLimit | null> {
  try {
    const text = await readFile(`/proc/${pid}/limits`, 'utf8');
    const match = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
    if (!match) return null;
    const parse = (v: string | undefined) => (v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
    return { soft: parse(match[1]), hard: parse(match[2]) };
  } catch {
    return null;
  }
}

/** Raises a running process's limit in place with util-linux `prlimit` (root, or up to the hard limit). */
export async function prlimit(pid: number, limit: number): Promise<boolean> {
  try {
    await run('prlimit', [`--pid=${pid}`, `--nofile=${limit}:${limit}`]);
    return true;
  } catch {
    try {
      // Not root: the soft limit can still go up to the hard one.
      const current = await fdLimitOf(pid);
      if (!current || !Number.isFinite(current.hard)) return false;
      await run('prlimit', [`--pid=${pid}`, `--nofile=${current.hard}:${current.hard}`]);
      return current.hard >= limit;
    } catch {
      return false;
    }
  }
}

const REEXEC_MARK = 'VELRO_LOADTEST_FD_REEXEC';

export interface FdSetup {
  needed: number;
  before: FdLimit | null;
  after: FdLimit | null;
  /** How the limit was raised: already enough, prlimit on ourselves, or a re-exec under `ulimit -n`. */
  method: 'sufficient' | 'prlimit' | 'reexec' | 'failed';
}

/**
 * 10,000 virtual users need 10,000 sockets here and as many in the service (which inherits our
 * limit). Node cannot call setrlimit, so: `prlimit --pid` on ourselves when it exists, otherwise
 * re-exec through `sh -c 'ulimit -n …; exec node …'`, in which case this never returns in the parent,
 * whose parent only waits: the child does the work and its exit code becomes ours.
 */
export async function ensureFdLimit(needed: number, target = 65_535): Promise<FdSetup> {
  const before = await fdLimitOf('self');
  const want = Math.max(needed, target);
  if (before && before.soft >= needed) {
    const method = process.env[REEXEC_MARK] ? 'reexec' : 'sufficient';
    return { needed, before, after: before, method };
  }
  if (await prlimit(process.pid, want)) {
    const after = await fdLimitOf('self');
    if (after && after.soft >= needed) return { needed, before, after, method: 'prlimit' };
  }
  if (process.env[REEXEC_MARK]) {
    // Already re-executed once and still short: carry on and say so in the report.
    return { needed, before, after: before, method: 'failed' };
  }
  const script = `ulimit -n ${want} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
  const args = ['-c', script, 'sh', process.execPath, ...process.execArgv, ...process.argv.slice(1)];
  const child = spawn('sh', args, { stdio: 'inherit', env: { ...process.env, [REEXEC_MARK]: '1' } });
  // The child runs the whole test; Ctrl-C reaches it directly (same process group), so we ignore it.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => {});
  const code = await new Promise<number>((resolve) => {
    child.on('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 128 : 1)));
  });
  process.exit(code);
}

/** CPU time (user + system, in clock ticks) of one process, or null when it is gone. */
async function cpuTicks(pid: number | 'self'): Promise<number | null> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces; fields after its closing parenthesis are fixed.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return null;
  }
}

interface ProcInfo {
  pid: number;
  ppid: number;
  comm: string;
  /** utime + stime, plus cutime + cstime: the CPU of children it has reaped (ended backends). */
  ticks: number;
}

async function processes(): Promise<ProcInfo[]> {
  const entries = await readdir('/proc').catch(() => [] as string[]);
  const infos = await Promise.all(
    entries
      .filter((e) => /^\d+$/.test(e))
      .map(async (pid): Promise<ProcInfo | null> => {
        try {
          const text = await readFile(`/proc/${pid}/stat`, 'utf8');
          const close = text.lastIndexOf(')');
          const comm = text.slice(text.indexOf('(') + 1, close);
          const fields = text.slice(close + 2).split(' ');
          return {
            pid: Number(pid),
            ppid: Number(fields[1]),
            comm,
            ticks: Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]),
          };
        } catch {
          return null; // ended while we looked
        }
      }),
  );
  return infos.filter((i): i is ProcInfo => i !== null);
}

/**
 * CPU ticks of the service's descendants (the embedded PostgreSQL and its backends); with an
 * external database (no descendants), of every `postgres` process on the machine.
 */
async function postgresTicks(serverPid: number | undefined): Promise<{ ticks: number; scope: PgScope }> {
  const all = await processes();
  if (serverPid) {
    const children = new Map<number, ProcInfo[]>();
    for (const p of all) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p]);
    let sum = 0;
    let found = 0;
    const stack = [...(children.get(serverPid) ?? [])];
    while (stack.length > 0) {
      const p = stack.pop()!;
      sum += p.ticks;
      found += 1;
      stack.push(...(children.get(p.pid) ?? []));
    }
    if (found > 0) return { ticks: sum, scope: 'service descendants' };
  }
  const sum = all.filter((p) => p.comm === 'postgres').reduce((a, p) => a + p.ticks, 0);
  return { ticks: sum, scope: 'all postgres processes' };
}

export type PgScope = 'service descendants' | 'all postgres processes';

async function machineTicks(): Promise<{ busy: number; total: number }> {
  const text = await readFile('/proc/stat', 'utf8');
  const values = (text.split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  const total = values.reduce((a, b) => a + b, 0);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  return { busy: total - idle, total };
}

export interface CpuSnapshot {
  at: number;
  self: number;
  server: number;
  postgres: number;
  postgresScope: PgScope;
  machineBusy: number;
  machineTotal: number;
}

export async function cpuSnapshot(serverPid: number | undefined): Promise<CpuSnapshot> {
  const [self, server, postgres, machine] = await Promise.all([
    cpuTicks('self'),
    serverPid ? cpuTicks(serverPid) : Promise.resolve(null),
    postgresTicks(serverPid),
    machineTicks(),
  ]);
  return {
    at: performance.now(),
    self: self ?? 0,
    server: server ?? 0,
    postgres: postgres.ticks,
    postgresScope: postgres.scope,
    machineBusy: machine.busy,
    machineTotal: machine.total,
  };
}

/** Clock ticks per second (USER_HZ); 100 on every Linux this runs on, asked once to be sure. */
let ticksPerSecond: number | null = null;
function clockTicks(): number {
  if (ticksPerSecond === null) {
    const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const value = Number(out.stdout?.trim());
    ticksPerSecond = Number.isFinite(value) && value > 0 ? value : 100;
  }
  return ticksPerSecond;
}

export interface CpuUsage {
  /** Percent of one core, averaged over the interval. */
  loadGeneratorPct: number;
  serverPct: number;
  postgresPct: number;
  postgresScope: PgScope;
  /** Percent of one core used by everything else on the machine (other work disturbs the figures). */
  otherPct: number;
  /** Percent of the whole machine (all cores) busy. */
  machinePct: number;
  cores: number;
}

export function cpuBetween(a: CpuSnapshot, b: CpuSnapshot, cores: number): CpuUsage {
  const seconds = (b.at - a.at) / 1000;
  const pct = (ticks: number) => Math.round(((ticks / clockTicks()) * 1000) / seconds) / 10;
  const total = b.machineTotal - a.machineTotal;
  const machinePct = total > 0 ? Math.round(((b.machineBusy - a.machineBusy) / total) * 1000) / 10 : 0;
  const loadGeneratorPct = pct(b.self - a.self);
  const serverPct = pct(b.server - a.server);
  const postgresPct = pct(b.postgres - a.postgres);
  return {
    loadGeneratorPct,
    serverPct,
    postgresPct,
    postgresScope: b.postgresScope,
    otherPct: Math.max(
      0,
      Math.round((machinePct * cores - loadGeneratorPct - serverPct - postgresPct) * 10) / 10,
    ),
    machinePct,
    cores,
  };
}

/** Resident memory of a process in MiB. */
export async function rssMiB(pid: number | 'self'): Promise<number | null> {
  try {
    const text = await readFile(`/proc/${pid}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+) kB/m.exec(text);
    return match ? Math.round(Number(match[1]) / 1024) : null;
  } catch {
    return null;
  }
}

/** Established TCP connections whose local port is `port`: the service's view of our users. */
export async function establishedTo(port: number): Promise<number | null> {
  try {
    const { stdout } = await run('ss', ['-Htn', 'state', 'established', `( sport = :${port} )`], {
      maxBuffer: 64 * 1024 * 1024,
    });
    return stdout.split('\n').filter((line) => line.trim().length > 0).length;
  } catch {
    return null;
  }
}

/**
 * The kernel's count of connections refused because a listen backlog was full (TcpExt
 * ListenOverflows / ListenDrops, machine-wide): the cause of connect timeouts during a ramp-up.
 */
export async function listenOverflows(): Promise<{ overflows: number; drops: number } | null> {
  try {
    const lines = (await readFile('/proc/net/netstat', 'utf8')).split('\n');
    const header = lines.findIndex((l) => l.startsWith('TcpExt:'));
    const keys = (lines[header] ?? '').trim().split(/\s+/);
    const values = (lines[header + 1] ?? '').trim().split(/\s+/);
    const value = (key: string) => Number(values[keys.indexOf(key)] ?? Number.NaN);
    const overflows = value('ListenOverflows');
    const drops = value('ListenDrops');
    return Number.isFinite(overflows) && Number.isFinite(drops) ? { overflows, drops } : null;
  } catch {
    return null;
  }
}
