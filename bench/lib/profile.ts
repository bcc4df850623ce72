import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';

/** One row of a profile's self-time table. */
export interface HotFunction {
  function: string;
  /** file:line, relative to the repository (node_modules kept, to tell whose code it is). */
  location: string;
  selfMs: number;
  selfPercent: number;
}

interface CpuProfile {
  startTime: number;
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples: number[];
  timeDeltas: number[];
}

/**
 * The functions with the most self time in the `.cpuprofile` files `node --cpu-prof` wrote into
 * `dir` (one per process), summed by function and location, over the samples taken in `window`
 * (CLOCK_MONOTONIC µs, as process.hrtime). `(idle)` is left out: it is waiting, not work.
 */
export async function topSelfTime(
  dir: string,
  root: string,
  window: { fromMicros: number; toMicros: number } = { fromMicros: 0, toMicros: Number.POSITIVE_INFINITY },
  limit = 15,
): Promise<{ functions: HotFunction[]; areas: HotArea[] }> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile'));
  const byKey = new Map<string, { fn: string; location: string; micros: number }>();
  let total = 0;
  for (const file of files) {
    const profile = JSON.parse(await readFile(join(dir, file), 'utf8')) as CpuProfile;
    const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
    let at = profile.startTime;
    profile.samples.forEach((id, i) => {
      const node = nodes.get(id);
      const delta = profile.timeDeltas[i] ?? 0;
      at += delta;
      if (at < window.fromMicros || at > window.toMicros) return;
      if (!node || node.callFrame.functionName === '(idle)') return;
      const { functionName, url, lineNumber } = node.callFrame;
      const path = url.startsWith('file://') ? relative(root, new URL(url).pathname) : url;
      const location = path ? `${path}:${lineNumber + 1}` : '';
      const fn = functionName || '(anonymous)';
      const key = `${fn}\u0000${location}`;
      const entry = byKey.get(key) ?? { fn, location, micros: 0 };
      entry.micros += delta;
      byKey.set(key, entry);
      total += delta;
    });
  }
  const share = (micros: number) => ({
    selfMs: Math.round(micros / 100) / 10,
    selfPercent: total === 0 ? 0 : Math.round((micros / total) * 1000) / 10,
  });
  const byArea = new Map<string, number>();
  for (const e of byKey.values()) {
    const area = areaOf(e.fn, e.location);
    byArea.set(area, (byArea.get(area) ?? 0) + e.micros);
  }
  return {
    functions: [...byKey.values()]
      .sort((a, b) => b.micros - a.micros)
      .slice(0, limit)
      .map((e) => ({ function: e.fn, location: e.location, ...share(e.micros) })),
    areas: [...byArea.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([area, micros]) => ({ area, ...share(micros) })),
  };
}

/** Self time summed by where the code lives: a package, a source file, Node's internals, or native. */
export interface HotArea {
  area: string;
  selfMs: number;
  selfPercent: number;
}

function areaOf(fn: string, location: string): string {
  if (!location) return fn.startsWith('(') ? fn : `native ${fn}`;
  const path = location.replace(/:\d+$/, '');
  const inModules = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(path);
  if (inModules) return inModules[1] as string;
  if (path.startsWith('node:')) return 'node internals';
  return path;
}
