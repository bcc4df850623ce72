/**
 * The typed client as a package an integrator installs: `npm pack` in client/ builds it, the tarball
 * goes into a project of its own (nothing of this repository on its module path), a small program
 * type-checks there as a Node program and as a browser program, and the Node one runs against a
 * live server: register, team, project, generation, progress through Server-Sent Events, image.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LiveServer, runCommand, startLiveServer } from './helpers/live.js';

const repository = fileURLToPath(new URL('..', import.meta.url));
const clientDir = join(repository, 'client');
const require = createRequire(import.meta.url);
const tsc = join(dirname(require.resolve('typescript/package.json')), 'bin', 'tsc');
const nodeTypesVersion = (require('@types/node/package.json') as { version: string }).version;
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** Works wherever fetch does: compiled for Node and for a browser alike. */
const FLOW = `import { createVelroClient, type GenerationEvent, unwrap, type VelroClient } from '@velro/client';
import type { components } from '@velro/client/schema';

export type User = components['schemas']['User'];

export interface Outcome {
  userId: string;
  statuses: GenerationEvent['status'][];
  progress: number[];
  mime: string;
  width: number;
  height: number;
  declaredBytes: number;
  image: ArrayBuffer;
}

export async function run(baseUrl: string, email: string): Promise<Outcome> {
  const client = createVelroClient({ baseUrl });
  const { user }: { user: User } = unwrap(
    await client.POST('/api/v1/auth/register', { body: { email, password: 'correct horse battery' } }),
  );
  const team = unwrap(await client.POST('/api/v1/teams', { body: { name: 'Studio' } }));
  const project = unwrap(
    await client.POST('/api/v1/projects', {
      body: { name: 'Launch visuals', team_id: team.id, visibility: 'team' },
    }),
  );
  const models = unwrap(await client.GET('/api/v1/models')).items;
  const model = [...models].sort((a, b) => a.cost_credits - b.cost_credits)[0];
  if (!model) throw new Error('no models');
  const generation = unwrap(
    await client.POST('/api/v1/generations', {
      body: {
        model_id: model.id,
        prompt: 'a lighthouse at dusk, watercolour',
        project_id: project.id,
        parameters: { width: 128, height: 96, seed: 7 },
      },
    }),
  );
  const statuses: GenerationEvent['status'][] = [];
  const progress: number[] = [];
  for await (const event of client.generationEvents(generation.id)) {
    statuses.push(event.status);
    progress.push(event.progress);
  }
  const media = unwrap(
    await client.GET('/api/v1/generations/{id}/media-urls', { params: { path: { id: generation.id } } }),
  );
  const first = media.items[0];
  if (!first) throw new Error('the generation has no media');
  const response = await fetch(new URL(first.url, baseUrl));
  if (!response.ok) throw new Error(\`media answered \${response.status}\`);
  return {
    userId: user.id,
    statuses,
    progress,
    mime: response.headers.get('content-type') ?? '',
    width: first.width,
    height: first.height,
    declaredBytes: first.bytes,
    image: await response.arrayBuffer(),
  };
}

/** Never called: proves the package's types are real (each line would compile if they were \`any\`). */
export async function typesAreReal(client: VelroClient) {
  // @ts-expect-error: no such path
  void client.GET('/api/v1/no-such-path');
  // @ts-expect-error: visibility is one of private, team, public
  void client.POST('/api/v1/projects', { body: { name: 'x', visibility: 'everyone' } });
  const me = unwrap(await client.GET('/api/v1/auth/me'));
  // @ts-expect-error: a user has no password field
  void me.password;
  // @ts-expect-error: not a status a generation can have
  const status: GenerationEvent['status'] = 'done';
  return status;
}
`;

/** The Node program: run with the server's address and an email, prints what it saw as JSON. */
const NODE_MAIN = `import { run } from './flow.js';

const [baseUrl, email] = process.argv.slice(2);
if (!baseUrl || !email) throw new Error('usage: main.js <base-url> <email>');
const outcome = await run(baseUrl, email);
const image = Buffer.from(outcome.image);
process.stdout.write(
  JSON.stringify({ ...outcome, image: undefined, size: image.length, head: image.subarray(0, 8).toString('hex') }),
);
`;

/** The browser program: only type-checked (lib DOM, no Node types). */
const BROWSER_MAIN = `import { readServerSentEvents } from '@velro/client';
import { run } from './flow.js';

const button = document.querySelector<HTMLButtonElement>('#generate');
button?.addEventListener('click', async () => {
  const outcome = await run(location.origin, \`ann-\${Date.now()}@example.com\`);
  const img = document.createElement('img');
  img.src = URL.createObjectURL(new Blob([outcome.image], { type: outcome.mime }));
  img.alt = outcome.statuses.join(' → ');
  document.body.append(img);
});

export async function countEvents(response: Response): Promise<number> {
  let count = 0;
  if (response.body) for await (const _ of readServerSentEvents(response.body)) count += 1;
  return count;
}
`;

const strict = {
  strict: true,
  noUncheckedIndexedAccess: true,
  // The package's declarations are checked too, against each setting's own library.
  skipLibCheck: false,
  target: 'ES2022',
};

const NODE_TSCONFIG = {
  compilerOptions: {
    ...strict,
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    lib: ['ES2022'],
    types: ['node'],
    outDir: 'out',
  },
  files: ['flow.ts', 'main.ts'],
};

const BROWSER_TSCONFIG = {
  compilerOptions: {
    ...strict,
    module: 'ESNext',
    moduleResolution: 'Bundler',
    lib: ['ES2022', 'DOM', 'DOM.Iterable'],
    types: [],
    noEmit: true,
  },
  files: ['flow.ts', 'browser.ts'],
};

let server: LiveServer;
let work: string;
let project: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'velro-client-package-'));
  project = join(work, 'app');
  const [live] = await Promise.all([
    startLiveServer(),
    (async () => {
      // `npm pack` builds the package first (its prepack script) and writes the tarball here.
      await runCommand(npm, ['pack', '--pack-destination', work, '--no-fund', '--no-audit'], {
        cwd: clientDir,
      });
      const tarball = (await readdir(work)).find((name) => name.endsWith('.tgz'));
      if (!tarball) throw new Error('npm pack wrote no tarball');
      await mkdir(project);
      await writeFile(
        join(project, 'package.json'),
        `${JSON.stringify({ name: 'velro-client-consumer', private: true, type: 'module' }, null, 2)}\n`,
      );
      await runCommand(
        npm,
        [
          'install',
          '--prefer-offline',
          '--no-audit',
          '--no-fund',
          join(work, tarball),
          `@types/node@${nodeTypesVersion}`,
        ],
        { cwd: project },
      );
      await writeFile(join(project, 'flow.ts'), FLOW);
      await writeFile(join(project, 'main.ts'), NODE_MAIN);
      await writeFile(join(project, 'browser.ts'), BROWSER_MAIN);
      await writeFile(join(project, 'tsconfig.node.json'), JSON.stringify(NODE_TSCONFIG, null, 2));
      await writeFile(join(project, 'tsconfig.browser.json'), JSON.stringify(BROWSER_TSCONFIG, null, 2));
    })(),
  ]);
  server = live;
}, 120_000);

afterAll(async () => {
  await server?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the client package', () => {
  it('ships compiled JavaScript, declarations and its dependencies, and no TypeScript source', async () => {
    const installed = join(project, 'node_modules', '@velro', 'client');
    const manifest = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
      exports: Record<string, unknown>;
    };
    expect(manifest.dependencies).toHaveProperty('openapi-fetch');
    const files = await readdir(join(installed, 'dist'));
    expect(files).toEqual(
      expect.arrayContaining(['index.js', 'index.d.ts', 'sse.js', 'sse.d.ts', 'schema.d.ts']),
    );
    expect(files.filter((name) => name.endsWith('.ts') && !name.endsWith('.d.ts'))).toEqual([]);
    // The dependency came with it: resolvable from the consumer's project, not from this repository.
    const openapiFetch = join(project, 'node_modules', 'openapi-fetch', 'package.json');
    await expect(readFile(openapiFetch, 'utf8')).resolves.toContain('"name": "openapi-fetch"');
  });

  it('type-checks in a browser setting (DOM library, no Node types)', async () => {
    await runCommand(process.execPath, [tsc, '-p', 'tsconfig.browser.json'], { cwd: project });
  });

  it('type-checks in a Node setting and runs against a live server, down to the image bytes', async () => {
    await runCommand(process.execPath, [tsc, '-p', 'tsconfig.node.json'], { cwd: project });
    const email = `package-${randomBytes(4).toString('hex')}@example.com`;
    const { stdout } = await runCommand(process.execPath, ['out/main.js', server.baseUrl, email], {
      cwd: project,
      timeoutMs: 30_000,
    });
    const outcome = JSON.parse(stdout) as {
      userId: string;
      statuses: string[];
      progress: number[];
      mime: string;
      width: number;
      height: number;
      declaredBytes: number;
      size: number;
      head: string;
    };
    expect(outcome.userId).toMatch(/^[0-9a-f-]{36}$/);
    expect(outcome.statuses.at(-1)).toBe('completed');
    expect(outcome.progress.at(-1)).toBe(100);
    expect(outcome).toMatchObject({ mime: 'image/png', width: 128, height: 96 });
    expect(outcome.size).toBe(outcome.declaredBytes);
    // The PNG signature.
    expect(outcome.head).toBe('89504e470d0a1a0a');
  });
});
