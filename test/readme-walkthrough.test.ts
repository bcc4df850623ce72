/**
 * The README's curl walkthrough, run as written: its commands are taken from the README, run with
 * bash (`set -euo pipefail`) against a fresh server, and must end with the image on disk and the
 * explained denial. A README change that breaks a step fails here, not in a newcomer's terminal.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LiveServer, runCommand, startLiveServer } from './helpers/live.js';

/** The shell block between the walkthrough markers of a README. */
function walkthroughOf(readme: string): string {
  const block = /<!-- walkthrough:start -->\s*```(?:sh|bash)\n([\s\S]*?)```\s*<!-- walkthrough:end -->/.exec(
    readme,
  )?.[1];
  if (!block) throw new Error('the README has no ```sh block between <!-- walkthrough:start/end --> markers');
  return block;
}

let server: LiveServer;
let work: string;
let script: string;

beforeAll(async () => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
  script = walkthroughOf(readme);
  work = await mkdtemp(join(tmpdir(), 'velro-walkthrough-'));
  server = await startLiveServer();
});

afterAll(async () => {
  await server?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the README walkthrough', () => {
  it('is a shell block that reads the service address from VELRO', () => {
    expect(script).toMatch(/^VELRO=\$\{VELRO:-http:\/\/127\.0\.0\.1:3000\}$/m);
    expect(script).toContain('/api/v1/authz/explain');
  });

  it('runs from sign-up to a downloaded image and an explained denial', async () => {
    await writeFile(join(work, 'walkthrough.sh'), `set -euo pipefail\n${script}`);
    const { stdout } = await runCommand('bash', ['walkthrough.sh'], {
      cwd: work,
      env: { VELRO: server.baseUrl },
      timeoutMs: 45_000,
    });

    // Progress through the event stream, ending completed.
    const progress = stdout
      .split('\n')
      .filter((line) => line.startsWith('{"status":'))
      .map((line) => JSON.parse(line) as { status: string; progress: number });
    expect(progress.at(-1)).toEqual({ status: 'completed', progress: 100 });

    // The image, downloaded through its signed URL.
    const image = await readFile(join(work, 'lighthouse.png'));
    expect(image.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
    expect(image.length).toBeGreaterThan(100);

    // Bob may view but not delete, and explain says so.
    expect(stdout).toMatch(/^HTTP 403$/m);
    const explain = JSON.parse(await readFile(join(work, 'explain.json'), 'utf8')) as {
      allowed: boolean;
      permissions: string[];
    };
    expect(explain.allowed).toBe(false);
    expect(explain.permissions).toEqual(expect.arrayContaining(['view', 'download']));
    expect(explain.permissions).not.toContain('delete');
  }, 60_000);
});
