/**
 * Broken Object Level Authorization, walked over the app's own route table.
 *
 * The routes come from the served OpenAPI document, so a route added later is covered without
 * touching this file. Every `/api/v1` route whose path names an object (`{id}`) is sent by an
 * outsider, a team viewer and the owner, each in a fresh world, and the answers are held to SPEC §3:
 * invisible means 404 exactly like a missing object, visible-but-not-allowed means 403, and a denied
 * write changes nothing. A route whose resource kind, path parameter or request body this file does
 * not know fails the walk instead of slipping by.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { LightMyRequestResponse } from 'fastify';
import { beforeAll, describe, expect, it } from 'vitest';
import { SCOPES } from '../src/platform/http/principal.js';
import { bearer, type SignedUp, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

const fx = useTestApp();

const API = '/api/v1';
const METHODS = ['get', 'post', 'put', 'patch', 'delete'] as const;
type Method = Uppercase<(typeof METHODS)[number]>;
type Kind = 'team' | 'project' | 'generation' | 'service_key';

/** The first path segment after /api/v1 says what kind of object `{id}` names. */
const KIND_BY_PREFIX: Record<string, Kind> = {
  teams: 'team',
  projects: 'project',
  generations: 'generation',
  'service-keys': 'service_key',
};

/** The routes with an object id that exist today: the walker must find at least these. */
const ROUTES_TODAY = [
  'DELETE /api/v1/service-keys/{id}',
  'GET /api/v1/teams/{id}',
  'PATCH /api/v1/teams/{id}',
  'DELETE /api/v1/teams/{id}',
  'GET /api/v1/teams/{id}/members',
  'POST /api/v1/teams/{id}/members',
  'PATCH /api/v1/teams/{id}/members/{userId}',
  'DELETE /api/v1/teams/{id}/members/{userId}',
  'GET /api/v1/projects/{id}',
  'PATCH /api/v1/projects/{id}',
  'DELETE /api/v1/projects/{id}',
  'GET /api/v1/generations/{id}',
  'DELETE /api/v1/generations/{id}',
  'GET /api/v1/generations/{id}/authorize',
];

/** The parts of a JSON schema the walker reads. */
interface JsonSchema {
  required?: string[];
  properties?: Record<string, JsonSchema>;
}

interface OpenApiOperation {
  operationId?: string;
  parameters?: { in: string; name: string; schema?: JsonSchema }[];
  requestBody?: { content?: Record<string, { schema?: JsonSchema }> };
}

interface OpenApiDocument {
  paths: Record<string, Partial<Record<(typeof METHODS)[number], OpenApiOperation>>>;
}

interface Route {
  method: Method;
  path: string;
  operationId: string;
  kind: Kind | null;
  params: string[];
  body: JsonSchema | null;
  query: Record<string, JsonSchema>;
}

const label = (r: Pick<Route, 'method' | 'path'>) => `${r.method} ${r.path}`;

/** Every operation under /api/v1, from the served OpenAPI document. */
async function apiRoutes(): Promise<Route[]> {
  const res = await fx.app.inject({ method: 'GET', url: '/docs/json' });
  expect(res.statusCode).toBe(200);
  const doc = res.json<OpenApiDocument>();
  const routes: Route[] = [];
  for (const [path, operations] of Object.entries(doc.paths)) {
    if (!path.startsWith(`${API}/`)) continue;
    for (const method of METHODS) {
      const op = operations[method];
      if (!op) continue;
      const prefix = path.slice(API.length + 1).split('/')[0] ?? '';
      routes.push({
        method: method.toUpperCase() as Method,
        path,
        operationId: op.operationId ?? `(no operationId: ${method} ${path})`,
        kind: KIND_BY_PREFIX[prefix] ?? null,
        params: [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1] as string),
        body: op.requestBody?.content?.['application/json']?.schema ?? null,
        query: Object.fromEntries(
          (op.parameters ?? []).filter((p) => p.in === 'query').map((p) => [p.name, p.schema ?? {}]),
        ),
      });
    }
  }
  return routes;
}

// ---------------------------------------------------------------------------------------------
// The world: owner A with team T (A owner), viewer V and editor M in T, outsider X with no relation;
// project P in T with visibility 'team', generation G (by A) in P, service key K of A. Every name,
// prompt and description carries a random tag so a leak of it can be searched for in answers.
// ---------------------------------------------------------------------------------------------

interface World {
  owner: SignedUp;
  viewer: SignedUp;
  /** An editor of T: the `{userId}` of member routes, so nobody acts on themselves. */
  member: SignedUp;
  outsider: SignedUp;
  /** A service key of the outsider holding every scope: the other way to be the outsider. */
  outsiderKey: string;
  team: { id: string; name: string };
  project: { id: string; name: string; description: string };
  generation: { id: string; prompt: string };
  key: { id: string; name: string; prefix: string };
}

function created(res: LightMyRequestResponse, status = 201) {
  expect(res.statusCode, res.body).toBe(status);
  return res.json<Record<string, string>>();
}

async function buildWorld(): Promise<World> {
  const tag = randomBytes(6).toString('hex');
  const [owner, viewer, member, outsider] = await Promise.all([
    signUp(fx.app),
    signUp(fx.app),
    signUp(fx.app),
    signUp(fx.app),
  ]);
  const team = created(await fx.call(owner, 'POST', '/teams', { name: `team-${tag}` }));
  created(await fx.call(owner, 'POST', `/teams/${team.id}/members`, { email: viewer.email, role: 'viewer' }));
  created(await fx.call(owner, 'POST', `/teams/${team.id}/members`, { email: member.email, role: 'editor' }));
  const project = created(
    await fx.call(owner, 'POST', '/projects', {
      name: `project-${tag}`,
      description: `description-${tag}`,
      team_id: team.id,
      visibility: 'team',
    }),
  );
  const prompt = `prompt-${tag}`;
  const generationId = await insertGeneration(fx.sql, { userId: owner.id, projectId: project.id, prompt });
  const key = created(
    await fx.call(owner, 'POST', '/service-keys', { name: `key-${tag}`, scopes: ['projects:read'] }),
  );
  const outsiderKey = created(
    await fx.call(outsider, 'POST', '/service-keys', { name: 'everything', scopes: [...SCOPES] }),
  ).key as string;
  return {
    owner,
    viewer,
    member,
    outsider,
    outsiderKey,
    team: { id: team.id as string, name: team.name as string },
    project: {
      id: project.id as string,
      name: project.name as string,
      description: project.description as string,
    },
    generation: { id: generationId, prompt },
    key: { id: key.id as string, name: key.name as string, prefix: key.prefix as string },
  };
}

/** Everything about the world an outsider must never learn from an answer. */
function secretsOf(w: World): string[] {
  return [
    w.owner.id,
    w.owner.email,
    w.viewer.id,
    w.viewer.email,
    w.member.id,
    w.member.email,
    w.team.id,
    w.team.name,
    w.project.id,
    w.project.name,
    w.project.description,
    w.generation.id,
    w.generation.prompt,
    w.key.id,
    w.key.name,
    w.key.prefix,
  ];
}

function idOf(w: World, kind: Kind): string {
  switch (kind) {
    case 'team':
      return w.team.id;
    case 'project':
      return w.project.id;
    case 'generation':
      return w.generation.id;
    case 'service_key':
      return w.key.id;
  }
}

/** What each path parameter names in the world. A parameter not listed here fails the walk. */
const PARAM_VALUES: Record<string, (w: World, kind: Kind) => string> = {
  id: (w, kind) => idOf(w, kind),
  userId: (w) => w.member.id,
};

/**
 * A plausible valid body per operation, one or more variants (each variant is its own case). Every
 * route with a request body must have an entry: the walk fails on a route it cannot send.
 */
const BODY_RECIPES: Record<string, (w: World) => Record<string, unknown>[]> = {
  updateTeam: () => [{ name: 'Renamed team' }],
  addTeamMember: (w) => [
    { user_id: w.outsider.id, role: 'viewer' },
    { email: w.outsider.email, role: 'admin' },
  ],
  updateTeamMember: () => [{ role: 'viewer' }, { is_active: false }],
  favoriteGeneration: () => [{ favorite: true }],
  updateProject: () => [
    { name: 'Renamed project' },
    { visibility: 'public' },
    { team_id: null, visibility: 'private' },
  ],
};

interface Case {
  route: Route;
  kind: Kind;
  body: ((w: World) => Record<string, unknown>) | null;
  name: string;
}

function urlFor(route: Route, kind: Kind, w: World, overrides: Record<string, string> = {}): string {
  return route.path.replace(/\{(\w+)\}/g, (_, param: string) => {
    const value = overrides[param] ?? PARAM_VALUES[param]?.(w, kind);
    if (value === undefined) throw new Error(`no value for {${param}} in ${label(route)}`);
    return value;
  });
}

/** An answer, read whole, or up to its first event when it is a stream (Server-Sent Events). */
interface Reply {
  statusCode: number;
  headers: Record<string, unknown>;
  body: string;
}

/**
 * Sends one request and reads the answer without ever hanging the walk: a stream is cut after its
 * first event, and an answer that takes longer than a few seconds is a failure of its own.
 */
async function hit(who: SignedUp | string, method: Method, url: string, payload?: object): Promise<Reply> {
  const abort = new AbortController();
  const res = await fx.app.inject({
    method,
    url: url.startsWith(API) ? url : `${API}${url}`,
    headers: bearer(typeof who === 'string' ? who : who.accessToken),
    ...(payload ? { payload } : {}),
    payloadAsStream: true,
    signal: abort.signal,
  });
  const streaming = String(res.headers['content-type'] ?? '').startsWith('text/event-stream');
  const chunks: Buffer[] = [];
  const outcome = await new Promise<'ended' | 'cut' | 'timeout'>((resolve) => {
    const stream = res.stream();
    const timer = setTimeout(() => resolve('timeout'), streaming ? 1_000 : 5_000);
    const finish = (how: 'ended' | 'cut') => {
      clearTimeout(timer);
      resolve(how);
    };
    stream.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (streaming && Buffer.concat(chunks).includes('\n\n')) finish('cut');
    });
    stream.on('end', () => finish('ended'));
    stream.on('error', () => finish('cut'));
  });
  if (outcome !== 'ended') abort.abort();
  if (outcome === 'timeout' && !streaming) throw new Error(`${method} ${url} did not answer within 5 s`);
  return { statusCode: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') };
}

const send = (who: SignedUp | string, c: Case, w: World, overrides: Record<string, string> = {}) =>
  hit(who, c.route.method, urlFor(c.route, c.kind, w, overrides), c.body?.(w));

/** The error envelope of SPEC §4 without its request id (which must match X-Request-Id). */
function envelope(reply: Reply): { code: string; message: string; details?: unknown } | string {
  let parsed: { error?: { code?: unknown; message?: unknown; request_id?: unknown; details?: unknown } };
  try {
    parsed = JSON.parse(reply.body);
  } catch {
    return `not JSON: ${reply.body.slice(0, 200)}`;
  }
  const error = parsed.error;
  if (!error || typeof error.code !== 'string' || typeof error.message !== 'string')
    return `not an error envelope: ${reply.body.slice(0, 200)}`;
  if (error.request_id !== reply.headers['x-request-id']) return 'request_id differs from X-Request-Id';
  return {
    code: error.code,
    message: error.message,
    ...(error.details !== undefined ? { details: error.details } : {}),
  };
}

/**
 * The rows of the world, for "a denied write changed nothing". `last_used_at` of the key is left
 * out: it is bookkeeping, not state a caller controls.
 */
async function snapshot(w: World): Promise<unknown> {
  const result = await fx.sql.query(
    `SELECT json_build_object(
       'team', (SELECT row_to_json(x) FROM teams x WHERE id = $1),
       'members', (SELECT json_agg(x ORDER BY user_id) FROM team_members x WHERE team_id = $1),
       'projects', (SELECT json_agg(x ORDER BY id) FROM projects x WHERE id = $2 OR team_id = $1),
       'generations', (SELECT json_agg(x ORDER BY id) FROM generations x WHERE id = $3 OR project_id = $2),
       'key', (SELECT json_build_object('revoked_at', revoked_at, 'scopes', scopes, 'name', name)
                 FROM service_keys WHERE id = $4),
       'credits', (SELECT json_agg(json_build_object('id', id, 'credits', credits_balance) ORDER BY id)
                     FROM users WHERE id = ANY($5::uuid[]))
     ) AS s`,
    [
      w.team.id,
      w.project.id,
      w.generation.id,
      w.key.id,
      [w.owner.id, w.viewer.id, w.member.id, w.outsider.id],
    ],
  );
  return result.rows[0].s;
}

function leaks(res: Reply | LightMyRequestResponse, w: World): string[] {
  const text = `${res.body}\n${JSON.stringify(res.headers)}`;
  return secretsOf(w).filter((s) => text.includes(s));
}

/** For checking recipes' shapes before a real world exists (ids are never sent). */
const nobody: SignedUp = {
  id: randomUUID(),
  email: 'x@example.com',
  password: '',
  accessToken: '',
  refreshToken: '',
};
const placeholderWorld: World = {
  owner: nobody,
  viewer: nobody,
  member: nobody,
  outsider: nobody,
  outsiderKey: '',
  team: { id: randomUUID(), name: '' },
  project: { id: randomUUID(), name: '', description: '' },
  generation: { id: randomUUID(), prompt: '' },
  key: { id: randomUUID(), name: '', prefix: '' },
};

let routes: Route[] = [];
let resourceRoutes: Route[] = [];
const cases: Case[] = [];
const walkProblems: string[] = [];

beforeAll(async () => {
  routes = await apiRoutes();
  resourceRoutes = routes.filter((r) => r.params.includes('id'));
  for (const route of resourceRoutes) {
    if (route.kind === null) {
      walkProblems.push(`${label(route)}: no resource kind for this path prefix (add it to KIND_BY_PREFIX)`);
      continue;
    }
    for (const param of route.params) {
      if (!PARAM_VALUES[param]) walkProblems.push(`${label(route)}: unknown path parameter {${param}}`);
    }
    const kind = route.kind;
    if (route.body === null) {
      cases.push({ route, kind, body: null, name: label(route) });
      continue;
    }
    const recipe = BODY_RECIPES[route.operationId];
    if (!recipe) {
      walkProblems.push(`${label(route)} (${route.operationId}): has a request body but no recipe`);
      continue;
    }
    const variants = recipe(placeholderWorld);
    variants.forEach((variant, i) => {
      const missing = (route.body?.required ?? []).filter((p) => !(p in variant));
      if (missing.length > 0)
        walkProblems.push(`${route.operationId} recipe ${i} lacks required ${missing.join(', ')}`);
      cases.push({
        route,
        kind,
        body: (w) => recipe(w)[i] as Record<string, unknown>,
        name: `${label(route)} ${JSON.stringify(variant)}`,
      });
    });
  }
});

const isRead = (c: Case) => c.route.method === 'GET';
const isShared = (kind: Kind) => kind !== 'service_key';

describe('the route walker', () => {
  it('finds every object route of the API, each with a resource kind, its parameters and a body recipe', () => {
    expect(walkProblems).toEqual([]);
    const covered = [...new Set(cases.map((c) => label(c.route)))];
    expect(covered).toEqual(expect.arrayContaining(ROUTES_TODAY));
    expect(covered.length).toBeGreaterThanOrEqual(ROUTES_TODAY.length);
    // Every route with an `{id}` became at least one case: none was skipped.
    expect(covered.sort()).toEqual(resourceRoutes.map(label).sort());
  });
});

describe('BOLA on every object route', () => {
  it('an outsider gets 404, indistinguishable from a missing object, learns nothing and changes nothing', async () => {
    expect(cases.length).toBeGreaterThanOrEqual(ROUTES_TODAY.length);
    const failures: string[] = [];
    for (const c of cases) {
      const w = await buildWorld();
      const before = await snapshot(w);

      const res = await send(w.outsider, c, w);
      if (res.statusCode !== 404) {
        failures.push(`${c.name}: outsider got ${res.statusCode} ${res.body}`);
        continue;
      }
      const leaked = leaks(res, w);
      if (leaked.length > 0) failures.push(`${c.name}: outsider's 404 contains ${leaked.join(', ')}`);

      // The same request naming an object that does not exist: the answers must be the same.
      const ghost = await send(w.owner, c, w, { id: randomUUID() });
      const denied = envelope(res);
      const missing = envelope(ghost);
      if (typeof denied === 'string') failures.push(`${c.name}: outsider's 404: ${denied}`);
      if (ghost.statusCode !== 404 || JSON.stringify(denied) !== JSON.stringify(missing))
        failures.push(
          `${c.name}: outsider ${res.body} differs from missing ${ghost.statusCode} ${ghost.body}`,
        );

      // The outsider's all-scope service key: the same 404, or a refusal that does not depend on the
      // object at all (routes for signed-in sessions only).
      const viaKey = await send(w.outsiderKey, c, w);
      const keyError = envelope(viaKey);
      const sessionOnly =
        viaKey.statusCode === 403 && typeof keyError !== 'string' && keyError.code === 'session_required';
      if (!sessionOnly && (viaKey.statusCode !== 404 || JSON.stringify(keyError) !== JSON.stringify(missing)))
        failures.push(`${c.name}: outsider's service key got ${viaKey.statusCode} ${viaKey.body}`);
      if (leaks(viaKey, w).length > 0)
        failures.push(`${c.name}: outsider's service key answer contains ${leaks(viaKey, w).join(', ')}`);

      if (JSON.stringify(await snapshot(w)) !== JSON.stringify(before))
        failures.push(`${c.name}: the outsider's denied requests changed the world`);

      // Control: the owner's identical request succeeds, so the 404 above was authorization's.
      const own = await send(w.owner, c, w);
      if (own.statusCode < 200 || own.statusCode > 299)
        failures.push(`${c.name}: owner control got ${own.statusCode} ${own.body}`);
    }
    expect(failures).toEqual([]);
  });

  it('a team viewer reads the shared project, generation and team (200) and is refused every write (403)', async () => {
    const failures: string[] = [];
    for (const c of cases) {
      const w = await buildWorld();
      const before = await snapshot(w);
      const expected = !isShared(c.kind) ? 404 : isRead(c) ? 200 : 403;
      const res = await send(w.viewer, c, w);
      if (res.statusCode !== expected) {
        failures.push(`${c.name}: viewer got ${res.statusCode}, expected ${expected}: ${res.body}`);
        continue;
      }
      if (expected !== 200) {
        const error = envelope(res);
        const code = typeof error === 'string' ? error : error.code;
        if (code !== (expected === 403 ? 'forbidden' : 'not_found'))
          failures.push(`${c.name}: viewer's ${expected} has code ${code}`);
        if (JSON.stringify(await snapshot(w)) !== JSON.stringify(before))
          failures.push(`${c.name}: the viewer's denied request changed the world`);
      }
    }
    expect(failures).toEqual([]);
  });
});

describe('revocation is immediate on every readable route', () => {
  interface Revocation {
    name: string;
    /** The kinds of object the viewer loses; reads of the others must keep working. */
    hides: Kind[];
    apply(w: World): Promise<LightMyRequestResponse>;
    status: number;
  }
  const REVOCATIONS: Revocation[] = [
    {
      name: 'removing the viewer from the team',
      hides: ['team', 'project', 'generation'],
      apply: (w) => fx.call(w.owner, 'DELETE', `/teams/${w.team.id}/members/${w.viewer.id}`),
      status: 204,
    },
    {
      name: 'deactivating the viewer',
      hides: ['team', 'project', 'generation'],
      apply: (w) =>
        fx.call(w.owner, 'PATCH', `/teams/${w.team.id}/members/${w.viewer.id}`, { is_active: false }),
      status: 200,
    },
    {
      name: 'making the project private',
      hides: ['project', 'generation'],
      apply: (w) => fx.call(w.owner, 'PATCH', `/projects/${w.project.id}`, { visibility: 'private' }),
      status: 200,
    },
    {
      name: 'deleting the project',
      hides: ['project', 'generation'],
      apply: (w) => fx.call(w.owner, 'DELETE', `/projects/${w.project.id}`),
      status: 204,
    },
  ];

  for (const revocation of REVOCATIONS) {
    it(`after ${revocation.name}, the viewer's very next request is denied`, async () => {
      const readable = cases.filter((c) => isRead(c) && isShared(c.kind));
      // GET team, team members, project, generation, generation authorize at least.
      expect(readable.length).toBeGreaterThanOrEqual(5);
      const failures: string[] = [];
      for (const c of readable) {
        const w = await buildWorld();
        const warm = await send(w.viewer, c, w);
        if (warm.statusCode !== 200) {
          failures.push(`${c.name}: viewer could not read before the change (${warm.statusCode})`);
          continue;
        }
        const change = await revocation.apply(w);
        expect(change.statusCode, change.body).toBe(revocation.status);
        const next = await send(w.viewer, c, w);
        const expected = revocation.hides.includes(c.kind) ? 404 : 200;
        if (next.statusCode !== expected)
          failures.push(`${c.name}: viewer's next request got ${next.statusCode}, expected ${expected}`);
        else if (expected === 404 && leaks(next, w).some((s) => s !== w.viewer.id && s !== w.viewer.email))
          failures.push(`${c.name}: the 404 after revocation leaks ${leaks(next, w).join(', ')}`);
      }
      expect(failures).toEqual([]);
    });
  }

  it('a deleted project and its generation are gone for their owner too', async () => {
    const w = await buildWorld();
    expect((await fx.call(w.owner, 'DELETE', `/projects/${w.project.id}`)).statusCode).toBe(204);
    const failures: string[] = [];
    for (const c of cases.filter((x) => isRead(x) && (x.kind === 'project' || x.kind === 'generation'))) {
      const res = await send(w.owner, c, w);
      if (res.statusCode !== 404) failures.push(`${c.name}: owner got ${res.statusCode}`);
    }
    expect(failures).toEqual([]);
  });
});

describe('objects named in a body or a query string', () => {
  interface Reference {
    /** What the viewer may do with the named object: 200 where reading it is enough, else 403. */
    viewer: 200 | 403;
    send: (who: SignedUp, w: World) => Promise<Reply>;
  }
  /**
   * Every `…_id` property of a request body or query string names an object; each must be listed here
   * with how to exercise it, or as not naming an access-controlled object. A new one fails the walk.
   */
  const REFERENCES: Record<string, Reference | 'not access-controlled'> = {
    // Adding a member by user id is the same as by email: the team's `manage` is what is checked.
    'addTeamMember.user_id': 'not access-controlled',
    // Administrators only (role admin), whoever the user is.
    'grantCredits.user_id': 'not access-controlled',
    // Models are a public catalogue (GET /models needs no credential).
    'createGeneration.model_id': 'not access-controlled',
    // The audit log is for administrators only (role admin, 403 otherwise: test/audit-api.test.ts),
    // who see every event: a filter on a resource's id is not a way into it.
    'listAuditEvents.resource_id': 'not access-controlled',
    'createProject.team_id': {
      viewer: 403,
      send: (who, w) =>
        hit(who, 'POST', '/projects', { name: 'into the team', team_id: w.team.id, visibility: 'team' }),
    },
    'updateProject.team_id': {
      viewer: 403,
      send: async (who, w) => {
        const own = created(await fx.call(who, 'POST', '/projects', { name: 'mine' }));
        return hit(who, 'PATCH', `/projects/${own.id}`, { team_id: w.team.id, visibility: 'team' });
      },
    },
    'createGeneration.project_id': {
      viewer: 403,
      send: async (who, w) => {
        const models = (await fx.call(who, 'GET', '/models')).json<{ items?: { id: string }[] }>();
        const model = models.items?.[0]?.id ?? 'no model';
        return hit(who, 'POST', '/generations', {
          model_id: model,
          prompt: 'into P',
          project_id: w.project.id,
        });
      },
    },
    'listGenerations.project_id': {
      viewer: 200,
      send: (who, w) => hit(who, 'GET', `/generations?project_id=${w.project.id}`),
    },
  };

  // By name, not by schema: however an id is validated, `…_id` says it names something.
  const idNames = (fields: Record<string, JsonSchema>) =>
    Object.keys(fields).filter((n) => n.endsWith('_id'));

  it('every object id in a body or a query string is known here', () => {
    const found = routes.flatMap((r) =>
      [...idNames(r.body?.properties ?? {}), ...idNames(r.query)].map((p) => `${r.operationId}.${p}`),
    );
    expect(found.length).toBeGreaterThanOrEqual(3);
    expect(found.filter((f) => !(f in REFERENCES))).toEqual([]);
  });

  it('an outsider gets 404 and a viewer only what the team role allows, and denied calls change nothing', async () => {
    const failures: string[] = [];
    const present = new Set(
      routes.flatMap((r) =>
        [...idNames(r.body?.properties ?? {}), ...idNames(r.query)].map((p) => `${r.operationId}.${p}`),
      ),
    );
    let exercised = 0;
    for (const [name, ref] of Object.entries(REFERENCES)) {
      if (ref === 'not access-controlled' || !present.has(name)) continue;
      exercised += 1;
      const w = await buildWorld();
      const before = await snapshot(w);
      const x = await ref.send(w.outsider, w);
      if (x.statusCode !== 404) failures.push(`${name}: outsider got ${x.statusCode} ${x.body}`);
      else if (leaks(x, w).length > 0)
        failures.push(`${name}: outsider's 404 leaks ${leaks(x, w).join(', ')}`);
      const v = await ref.send(w.viewer, w);
      if (v.statusCode !== ref.viewer) failures.push(`${name}: viewer got ${v.statusCode} ${v.body}`);
      if (JSON.stringify(await snapshot(w)) !== JSON.stringify(before))
        failures.push(`${name}: a denied request changed the world`);
      const own = await ref.send(w.owner, w);
      if (own.statusCode < 200 || own.statusCode > 299)
        failures.push(`${name}: owner control got ${own.statusCode} ${own.body}`);
    }
    expect(exercised).toBeGreaterThanOrEqual(2);
    expect(failures).toEqual([]);
  });
});
