import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { renderSchema, SCHEMA_FILE } from '@velro/client-codegen';
import { beforeAll, describe, expect, it } from 'vitest';
import { bearer, settle, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const run = promisify(execFile);
const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'] as const;

interface Operation {
  operationId?: string;
  summary?: string;
  tags?: string[];
  security?: Record<string, string[]>[];
  requestBody?: { content?: Record<string, { schema?: unknown }> };
  responses?: Record<string, { description?: string; content?: Record<string, { schema?: unknown }> }>;
}

interface Document {
  openapi: string;
  servers?: unknown[];
  paths: Record<string, Partial<Record<(typeof METHODS)[number], Operation>>>;
  components: { securitySchemes: Record<string, { type: string; scheme?: string }> };
}

interface LintReport {
  totals: { errors: number; warnings: number; ignored: number };
  problems: { ruleId: string; severity: string; message: string; location: { pointer: string }[] }[];
}

const fx = useTestApp();
let document: Document;

beforeAll(async () => {
  const res = await fx.app.inject({ method: 'GET', url: '/docs/json' });
  expect(res.statusCode).toBe(200);
  document = res.json();
});

function operations(): { method: string; path: string; op: Operation }[] {
  return Object.entries(document.paths).flatMap(([path, item]) =>
    METHODS.flatMap((method) => (item[method] ? [{ method, path, op: item[method] as Operation }] : [])),
  );
}

describe('bodies as the document describes them', () => {
  it('every JSON body refuses an unknown field with a 400 naming it (no silent stripping)', async () => {
    const user = await signUp(fx.app);
    const admin = await signUp(fx.app);
    await fx.t.pools.pg.write_heavy.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [admin.id]);
    await settle(fx.t);
    const withBodies = operations().filter(({ op }) => op.requestBody?.content?.['application/json']);
    expect(withBodies.length).toBeGreaterThan(15);
    const problems: string[] = [];
    for (const { method, path } of withBodies) {
      const url = path.replace(/\{[^}]+\}/g, () => randomUUID());
      const who = path.includes('/admin/') ? admin : user;
      const res = await fx.app.inject({
        method: method.toUpperCase() as 'POST',
        url,
        headers: { ...bearer(who.accessToken), 'content-type': 'application/json' },
        payload: { __unknown_field: 1 },
      });
      const fields =
        res.statusCode === 400 ? (res.json().error.details ?? []).map((d: { field: string }) => d.field) : [];
      if (!fields.includes('body.__unknown_field'))
        problems.push(`${method.toUpperCase()} ${path}: ${res.statusCode} ${res.body.slice(0, 160)}`);
    }
    expect(problems).toEqual([]);
  });

  it('lists the allowed values of an enum once, and answers a wrong method with 405 and Allow', async () => {
    const user = await signUp(fx.app);
    const res = await fx.call(user, 'POST', '/authz/check', {
      resource: { type: 'album', id: randomUUID() },
      permission: 'view',
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details).toEqual([
      { field: 'body.resource.type', message: 'must be one of generation, project, team' },
    ]);
    const wrong = await fx.app.inject({ method: 'PUT', url: `/api/v1/projects/${randomUUID()}` });
    expect(wrong.statusCode).toBe(405);
    expect(String(wrong.headers.allow).split(', ').sort()).toEqual(['DELETE', 'GET', 'HEAD', 'PATCH']);
    expect(wrong.json().error.code).toBe('method_not_allowed');
    // An unknown path is still a 404.
    expect((await fx.app.inject({ method: 'PUT', url: '/api/v1/nothing-here' })).statusCode).toBe(404);
  });

  it('refuses a top-level width on POST /generations instead of charging and ignoring it', async () => {
    const user = await signUp(fx.app);
    const res = await fx.call(user, 'POST', '/generations', {
      model_id: 'velro-sketch',
      prompt: 'a kite',
      width: 5000,
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details).toEqual([
      { field: 'body.width', message: 'must NOT have additional properties' },
    ]);
    const balance = await fx.call(user, 'GET', '/credits/balance');
    expect(balance.json().credits_balance).toBe(fx.t.config.INITIAL_CREDITS);
  });
});

describe('the served OpenAPI document', () => {
  it('passes @redocly/cli lint with the recommended rules: no errors', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'velro-openapi-'));
    try {
      const file = join(dir, 'openapi.json');
      await writeFile(file, JSON.stringify(document));
      const cli = createRequire(import.meta.url).resolve('@redocly/cli/bin/cli.js');
      // Exit status 1 means problems were found: the JSON report says which, so read it either way.
      const { stdout } = await run(
        process.execPath,
        [cli, 'lint', file, '--extends', 'recommended', '--format', 'json', '--max-problems', '1000'],
        {
          env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' },
          maxBuffer: 32 * 1024 * 1024,
        },
      ).catch((error: { stdout?: string; stderr?: string }) => {
        if (!error.stdout) throw new Error(`redocly lint did not run: ${error.stderr ?? String(error)}`);
        return { stdout: error.stdout };
      });
      const report = JSON.parse(stdout) as LintReport;
      const errors = report.problems.filter((p) => p.severity === 'error');
      expect(
        errors.map((p) => `${p.ruleId}: ${p.message} at ${p.location.map((l) => l.pointer).join(', ')}`),
      ).toEqual([]);
      expect(report.totals.errors).toBe(0);
      // What is left are warnings we keep on purpose: no license is declared, and /health, /ready
      // and /models have no 4xx answer to describe.
      for (const warning of report.problems) {
        expect(['info-license', 'operation-4xx-response']).toContain(warning.ruleId);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('gives every operation an id, a summary, tags, security, typed answers and its error answers', () => {
    const ids = new Set<string>();
    const ops = operations();
    expect(ops.length).toBeGreaterThan(50);
    for (const { method, path, op } of ops) {
      const where = `${method.toUpperCase()} ${path}`;
      expect(op.operationId, where).toMatch(/^[a-zA-Z]+$/);
      expect(ids.has(op.operationId as string), `${where}: duplicate operationId`).toBe(false);
      ids.add(op.operationId as string);
      expect(op.summary, where).toBeTruthy();
      expect(op.tags?.length, where).toBeGreaterThan(0);
      expect(op.security, `${where}: security is declared (empty for public routes)`).toBeDefined();
      const responses = Object.entries(op.responses ?? {});
      const success = responses.filter(([status]) => status.startsWith('2'));
      expect(success.length, where).toBeGreaterThan(0);
      for (const [status, response] of success) {
        if (status === '204') continue;
        expect(Object.values(response.content ?? {})[0]?.schema, `${where} ${status}`).toBeDefined();
      }
      if (op.security?.some((s) => 'bearerAuth' in s)) {
        expect(op.responses?.['401'], `${where}: 401`).toBeDefined();
      }
      if (method === 'post' || method === 'patch' || method === 'put') {
        const bodyless = ['/logout', '/logout-all', '/cancel', '/flush'].some((end) => path.endsWith(end));
        if (!bodyless) expect(op.requestBody?.content, `${where}: request body`).toBeDefined();
      }
      for (const [status, response] of responses) {
        if (!status.startsWith('4') && !status.startsWith('5')) continue;
        // Not ready answers the readiness report itself, with 503.
        if (path === '/ready' && status === '503') continue;
        expect(response.content?.['application/json']?.schema, `${where} ${status}`).toEqual({
          $ref: '#/components/schemas/ErrorEnvelope',
        });
      }
    }
    expect(document.components.securitySchemes.bearerAuth).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  it('keeps the operational pages out of it', () => {
    expect(document.paths['/metrics']).toBeUndefined();
    expect(document.paths['/dashboard']).toBeUndefined();
  });

  it('is what the committed client types were generated from (npm run generate:client)', async () => {
    const committed = await readFile(SCHEMA_FILE, 'utf8');
    const fresh = await renderSchema(document);
    if (fresh !== committed) {
      throw new Error(
        'client/schema.d.ts is out of date with the served OpenAPI document: run `npm run generate:client`',
      );
    }
  }, 60_000);
});

describe('headers, scopes and examples a caller needs', () => {
  type Parameter = { in: string; name: string; required?: boolean; schema?: { pattern?: string } };
  type Response = { headers?: Record<string, { description?: string }> };
  type Media = { example?: Record<string, unknown>; schema?: { properties?: Record<string, SchemaNode> } };
  type SchemaNode = { description?: string; enum?: string[]; items?: SchemaNode };
  const isToken = (name: string) => name.toLowerCase() === 'velro-consistency-token';
  const parametersOf = (op: Operation) => (op as { parameters?: Parameter[] }).parameters ?? [];
  const tokenParameter = (op: Operation) =>
    parametersOf(op).find((p) => p.in === 'header' && isToken(p.name));
  const returnsToken = (op: Operation) =>
    Object.entries(op.responses ?? {}).some(
      ([status, response]) =>
        status.startsWith('2') && Object.keys((response as Response).headers ?? {}).some(isToken),
    );

  it('documents Velro-Consistency-Token on every route that reads it or returns it', async () => {
    const ops = operations();
    const missing: string[] = [];
    for (const { method, path, op } of ops) {
      const authenticated = op.security?.some((s) => 'bearerAuth' in s) ?? false;
      const reads = authenticated || path === '/api/v1/media/{token}';
      const documented = tokenParameter(op);
      if (reads !== (documented !== undefined)) missing.push(`${method.toUpperCase()} ${path}`);
      if (documented) expect(documented.required).toBe(false);
    }
    expect(missing).toEqual([]);

    const returning = ops
      .filter(({ op }) => returnsToken(op))
      .map(({ method, path }) => `${method.toUpperCase()} ${path}`)
      .sort();
    expect(returning).toEqual(
      [
        'POST /api/v1/auth/logout',
        'POST /api/v1/auth/logout-all',
        'POST /api/v1/auth/password',
        'DELETE /api/v1/generations/{id}',
        'POST /api/v1/projects',
        'PATCH /api/v1/projects/{id}',
        'DELETE /api/v1/projects/{id}',
        'DELETE /api/v1/service-keys/{id}',
        'POST /api/v1/teams',
        'DELETE /api/v1/teams/{id}',
        'POST /api/v1/teams/{id}/members',
        'PATCH /api/v1/teams/{id}/members/{userId}',
        'DELETE /api/v1/teams/{id}/members/{userId}',
      ].sort(),
    );

    // What the document says is what the routes do.
    const user = await signUp(fx.app);
    const team = await fx.call(user, 'POST', '/teams', { name: 'Docs' });
    expect(team.statusCode).toBe(201);
    const token = String(team.headers['velro-consistency-token']);
    expect(token).toMatch(/^\d+$/);
    const project = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/projects',
      headers: { ...bearer(user.accessToken), 'velro-consistency-token': token },
      payload: { name: 'Docs', team_id: team.json().id, visibility: 'team' },
    });
    expect(project.statusCode).toBe(201);
    expect(Number(project.headers['velro-consistency-token'])).toBeGreaterThanOrEqual(Number(token));
    const removed = await fx.call(user, 'DELETE', `/projects/${project.json().id}`);
    expect(removed.statusCode).toBe(204);
    expect(removed.headers['velro-consistency-token']).toMatch(/^\d+$/);
  });

  it('lists every service-key scope with its meaning, in the document and in the README', async () => {
    const { SCOPES } = await import('../src/platform/http/principal.js');
    const create = document.paths['/api/v1/service-keys']?.post as Operation;
    const media = create.requestBody?.content?.['application/json'] as Media | undefined;
    const scopes = media?.schema?.properties?.scopes as SchemaNode;
    expect(scopes.items?.enum).toEqual([...SCOPES]);
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    for (const scope of SCOPES) {
      expect(scopes.description, scope).toMatch(new RegExp(`\`${scope}\`: \\S`));
      expect(readme, `README table row for ${scope}`).toMatch(new RegExp(`^\\| \`${scope}\` \\|.+\\|`, 'm'));
    }
    expect(scopes.description).toContain('media-urls');
    expect(readme).toMatch(/`media:read`[^\n]*media/);
  });

  it('gives the authorization routes examples that succeed for a plain signed-in user', async () => {
    const user = await signUp(fx.app);
    for (const path of [
      '/api/v1/authz/check',
      '/api/v1/authz/check-bulk',
      '/api/v1/authz/explain',
      '/api/v1/authz/lookup',
    ]) {
      const op = document.paths[path]?.post as Operation;
      const example = (op.requestBody?.content?.['application/json'] as Media | undefined)?.example;
      expect(example, path).toBeDefined();
      expect(JSON.stringify(example), path).not.toContain('subject');
      const res = await fx.app.inject({
        method: 'POST',
        url: path,
        headers: bearer(user.accessToken),
        payload: example as object,
      });
      expect(res.statusCode, `${path}: ${res.body}`).toBe(200);
    }
  });
});
