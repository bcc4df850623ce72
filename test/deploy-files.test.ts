/**
 * The deploy files (Dockerfile, compose.yaml, Kubernetes manifests) cannot drift from the code: no
 * container engine runs here, so every file is parsed and what it sets is checked against the
 * configuration schema and the routes; and what `npm run build` produces is run as the image runs
 * it — compiled JavaScript, no TypeScript loader — in the image's folder layout.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigSchema, loadConfig, PoolEnvSchema } from '../src/config.js';
import { createTestDatabase, type TestDatabase } from './helpers/app.js';
import { childEnv, runCommand } from './helpers/live.js';
import { findBinary } from './helpers/redis-servers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const read = (path: string) => readFile(join(ROOT, path), 'utf8');

/** Read by the AWS SDK's default credential chain, not by Velro's schema. */
const SDK_VARIABLES = new Set(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']);
const SECRET_VARIABLES = [
  'JWT_SECRET',
  'MEDIA_SIGNING_SECRET',
  'OPS_TOKEN',
  'DATABASE_URL',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
];
const KNOWN = new Set([
  ...Object.keys(ConfigSchema.properties),
  ...Object.keys(PoolEnvSchema.properties),
  ...SDK_VARIABLES,
]);

/** Stands for a value that comes from a Secret or from compose's .env. */
const SECRET_PLACEHOLDER = '$' + '{secret}';

const unknownNames = (names: Iterable<string>) => [...names].filter((name) => !KNOWN.has(name));

/** What loadConfig makes of the literal values (compose's `${...}` stand in for real secrets). */
function validates(env: Record<string, string>) {
  const concrete: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (SDK_VARIABLES.has(key)) continue;
    concrete[key] = value.includes('$' + '{') ? placeholderFor(key) : value;
  }
  return loadConfig(concrete);
}

function placeholderFor(key: string): string {
  if (key === 'DATABASE_URL') return 'postgres://velro:secret@postgres:5432/velro';
  return 'x'.repeat(40);
}

interface K8sDocument {
  kind: string;
  metadata: { name: string };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
}

interface Container {
  name: string;
  image: string;
  command?: string[];
  ports?: { name: string; containerPort: number }[];
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
  envFrom?: { configMapRef?: { name: string } }[];
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
}

interface PodTemplate {
  metadata: { labels: Record<string, string> };
  spec: { terminationGracePeriodSeconds: number; containers: Container[] };
}

function specOf<T>(document: K8sDocument | undefined): T {
  if (!document?.spec) throw new Error('the manifest is missing');
  return document.spec as T;
}

async function kubernetesDocuments(): Promise<K8sDocument[]> {
  const files = (await readdir(join(ROOT, 'deploy/kubernetes'))).filter((f) => f.endsWith('.yaml'));
  const documents: K8sDocument[] = [];
  for (const file of files) {
    for (const doc of parseAllDocuments(await read(`deploy/kubernetes/${file}`))) {
      expect(doc.errors, file).toEqual([]);
      documents.push(doc.toJS() as K8sDocument);
    }
  }
  return documents;
}

describe('compose.yaml', () => {
  it('sets only configuration variables on the Velro services, with values the schema accepts', async () => {
    const compose = parse(await read('compose.yaml'), { merge: true }) as {
      services: Record<string, { build?: string; image?: string; environment?: Record<string, string> }>;
    };
    const velro = Object.entries(compose.services).filter(([, s]) => s.image === 'velro:latest');
    expect(velro.map(([name]) => name).sort()).toEqual(['api-a', 'api-b', 'worker']);
    for (const [name, service] of velro) {
      const env = service.environment ?? {};
      expect(unknownNames(Object.keys(env)), name).toEqual([]);
      const config = validates(env);
      expect(config.NODE_ENV, name).toBe('production');
      expect(config.MEDIA_STORE, `${name}: media shared through the bucket`).toBe('s3');
      // Secrets come from .env, never written in the file.
      for (const key of SECRET_VARIABLES) expect(env[key], `${name} ${key}`).toMatch(/\$\{/);
    }
    // Prometheus sends alerts to Alertmanager; the instances do not push their own as well.
    for (const [name, service] of velro) expect(service.environment?.ALERTMANAGER_URL, name).toBeUndefined();
    expect(Object.keys(compose.services)).toContain('alertmanager');
    expect(compose.services['api-a']?.environment?.WORKER_ENABLED).toBe('false');
    expect(compose.services['api-b']?.environment?.WORKER_ENABLED).toBe('false');
  });

  it('scrapes both API instances with the shipped alert rules', async () => {
    const prometheus = parse(await read('deploy/compose/prometheus.yml')) as {
      rule_files: string[];
      scrape_configs: { static_configs: { targets: string[] }[] }[];
    };
    expect(prometheus.rule_files).toEqual(['/etc/prometheus/alerts.yml']);
    const alerting = (
      prometheus as unknown as { alerting: { alertmanagers: { static_configs: { targets: string[] }[] }[] } }
    ).alerting;
    expect(alerting.alertmanagers[0]?.static_configs[0]?.targets).toEqual(['alertmanager:9093']);
    expect(prometheus.scrape_configs[0]?.static_configs[0]?.targets).toEqual(['api-a:3000', 'api-b:3000']);
  });
});

describe('compose.yaml: its Prometheus configuration', () => {
  const promtool = findBinary('promtool');
  it.runIf(promtool !== null || process.env.CI === 'true')(
    'is valid for promtool (container paths mapped to the repository)',
    async () => {
      const dir = await mkdtemp(join(tmpdir(), 'velro-compose-prom-'));
      try {
        const text = (await read('deploy/compose/prometheus.yml'))
          .replace('/etc/prometheus/alerts.yml', join(ROOT, 'deploy/prometheus/alerts.yml'))
          .replace('/etc/prometheus/ops-token', join(ROOT, 'deploy/compose/ops-token'));
        await writeFile(join(dir, 'prometheus.yml'), text);
        const { stdout } = await runCommand(
          promtool ?? 'promtool',
          ['check', 'config', join(dir, 'prometheus.yml')],
          {
            cwd: ROOT,
          },
        );
        expect(stdout).toMatch(/SUCCESS/);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});

describe('Kubernetes manifests', () => {
  it('set only configuration variables, take secrets by reference, and validate', async () => {
    const documents = await kubernetesDocuments();
    const configMap = documents.find((d) => d.kind === 'ConfigMap');
    expect(configMap?.metadata.name).toBe('velro-config');
    const deployments = documents.filter((d) => d.kind === 'Deployment');
    expect(deployments.map((d) => d.metadata.name).sort()).toEqual(['velro-api', 'velro-worker']);
    for (const deployment of deployments) {
      const pod = (deployment.spec as { template: PodTemplate }).template;
      for (const container of pod.spec.containers) {
        const env: Record<string, string> = { ...configMap?.data };
        for (const ref of container.envFrom ?? []) expect(ref.configMapRef?.name).toBe('velro-config');
        for (const entry of container.env ?? []) {
          if (SECRET_VARIABLES.includes(entry.name)) {
            expect(entry.value, `${entry.name} must come from a Secret`).toBeUndefined();
            expect(entry.valueFrom?.secretKeyRef?.name).toBe('velro-secrets');
            env[entry.name] = SECRET_PLACEHOLDER;
          } else {
            env[entry.name] = entry.value as string;
          }
        }
        expect(unknownNames(Object.keys(env)), deployment.metadata.name).toEqual([]);
        const config = validates(env);
        // The pod's grace period covers the preStop pause and the drain.
        const preStop = Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
        expect(pod.spec.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
          config.SHUTDOWN_GRACE_MS + preStop * 1000,
        );
        expect(container.command?.[0]).toBe('node');
        expect(container.command?.[1]).toMatch(/^dist\/(main|worker)\.js$/);
      }
    }
  });

  it('probe liveness on /health and readiness on /ready, and the Service, PDB and HPA reach the API pods', async () => {
    const documents = await kubernetesDocuments();
    const api = documents.find((d) => d.kind === 'Deployment' && d.metadata.name === 'velro-api');
    const pod = specOf<{ template: PodTemplate }>(api).template;
    const container = pod.spec.containers[0] as Container;
    expect(container.livenessProbe?.httpGet?.path).toBe('/health');
    expect(container.readinessProbe?.httpGet?.path).toBe('/ready');
    const port = container.ports?.find((p) => p.name === 'http');
    const configMap = documents.find((d) => d.kind === 'ConfigMap');
    expect(String(port?.containerPort)).toBe(configMap?.data?.PORT);

    const labels = pod.metadata.labels;
    const matches = (selector: Record<string, string> | undefined) =>
      Object.entries(selector ?? {}).every(([k, v]) => labels[k] === v) &&
      Object.keys(selector ?? {}).length > 0;
    const service = documents.find((d) => d.kind === 'Service');
    expect(matches(specOf<{ selector: Record<string, string> }>(service).selector)).toBe(true);
    const pdb = documents.find((d) => d.kind === 'PodDisruptionBudget');
    expect(
      matches(specOf<{ selector: { matchLabels: Record<string, string> } }>(pdb).selector.matchLabels),
    ).toBe(true);
    const hpa = documents.find((d) => d.kind === 'HorizontalPodAutoscaler');
    expect(specOf<{ scaleTargetRef: { kind: string; name: string } }>(hpa).scaleTargetRef).toMatchObject({
      kind: 'Deployment',
      name: 'velro-api',
    });
    expect(specOf<{ minReplicas: number }>(hpa).minReplicas).toBeGreaterThan(
      specOf<{ maxUnavailable: number }>(pdb).maxUnavailable,
    );
  });
});

describe('Dockerfile', () => {
  it('builds compiled JavaScript, runs it as a non-root user, and checks /health', async () => {
    const dockerfile = await read('Dockerfile');
    expect(dockerfile).toMatch(/^FROM \S+ AS build$/m);
    expect(dockerfile).toMatch(/^RUN npm run build/m);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/^CMD \["node", "dist\/main\.js"\]$/m);
    expect(dockerfile).not.toMatch(/tsx/);
    expect(dockerfile).toMatch(/HEALTHCHECK[\s\S]*\/health/);
    // The runtime stage copies what the compiled code reads at run time.
    for (const folder of ['migrations', 'web', 'dist', 'node_modules']) {
      expect(dockerfile).toMatch(new RegExp(`^COPY .*\\b${folder}\\b`, 'm'));
    }
    const envBlock = /^ENV ([\s\S]*?)\n(?!\s)/m.exec(dockerfile)?.[1] ?? '';
    const names = [...envBlock.matchAll(/([A-Z_]+)=/g)].map((m) => m[1] as string);
    expect(names.length).toBeGreaterThan(0);
    expect(unknownNames(names)).toEqual([]);
  });
});

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

describe('npm run build', () => {
  let app: string;
  let db: TestDatabase;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    // The image's layout: /app/{dist,node_modules,migrations,web,package.json}.
    app = await mkdtemp(join(tmpdir(), 'velro-image-'));
    await runCommand('npx', ['tsc', '-p', 'tsconfig.build.json', '--outDir', join(app, 'dist')], {
      cwd: ROOT,
      timeoutMs: 180_000,
    });
    for (const folder of ['node_modules', 'migrations', 'web'])
      await symlink(join(ROOT, folder), join(app, folder));
    await copyFile(join(ROOT, 'package.json'), join(app, 'package.json'));
    db = await createTestDatabase();
  }, 240_000);

  afterAll(async () => {
    for (const child of children)
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await db?.drop();
    if (app) await rm(app, { recursive: true, force: true });
  });

  function run(script: string, env: Record<string, string>) {
    const child = spawn(process.execPath, [script], {
      cwd: app,
      env: childEnv({
        NODE_ENV: 'production',
        HOST: '127.0.0.1',
        LOG_LEVEL: 'info',
        DATABASE_URL: db.url,
        DATA_DIR: join(app, 'data'),
        JWT_SECRET: 'build-test-jwt-secret-0123456789abcdef0123',
        MEDIA_SIGNING_SECRET: 'build-test-media-secret-0123456789abcdef01',
        OPS_TOKEN: 'build-test-ops-token-0123',
        ...env,
      }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return { child, output: () => output, exited };
  }

  async function until(what: string, withinMs: number, probe: () => Promise<boolean>, context: () => string) {
    const deadline = performance.now() + withinMs;
    while (!(await probe())) {
      if (performance.now() > deadline) throw new Error(`${what}: not within ${withinMs} ms\n${context()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  it('dist/main.js serves the API, docs and dashboard with no TypeScript loader, and stops on SIGTERM', async () => {
    const port = await freePort();
    const server = run('dist/main.js', { PORT: String(port), REDIS_URL: '' });
    const base = `http://127.0.0.1:${port}`;
    await until(
      'the compiled service to be ready',
      60_000,
      async () => (await fetch(`${base}/ready`).catch(() => null))?.status === 200,
      server.output,
    );
    for (const path of ['/health', '/docs/json', '/dashboard', '/api/v1/models']) {
      const res = await fetch(`${base}${path}`);
      expect(res.status, path).toBe(200);
    }
    const registered = await fetch(`${base}/api/v1/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: 'built@example.com', password: 'correct horse battery' }),
    });
    expect(registered.status).toBe(201);
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    expect(server.output()).not.toMatch(/tsx|ERR_UNKNOWN_FILE_EXTENSION/);
  });

  it('dist/worker.js starts a generation worker and stops on SIGTERM', async () => {
    const worker = run('dist/worker.js', { REDIS_URL: '' });
    await until(
      'the compiled worker to start',
      60_000,
      async () => worker.output().includes('generation worker started'),
      worker.output,
    );
    worker.child.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
  });
});
