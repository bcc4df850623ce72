/**
 * The authorization API of SPEC §3/§4: POST /authz/check, /check-bulk, /lookup, /explain and
 * GET /generations/:id/authorize, over HTTP on a real database; plus the round-trip budget of the
 * engine (one query per cold batch), counted on the authorization pool.
 */
import { randomUUID } from 'node:crypto';
import type { LightMyRequestResponse } from 'fastify';
import { describe, expect, it } from 'vitest';
import { createAuthzEngine } from '../src/modules/authz/engine.js';
import { createFactsLoader, type FactsRequest } from '../src/modules/authz/facts.js';
import { PERMISSIONS, type ResourceType } from '../src/modules/authz/types.js';
import { FactCache } from '../src/platform/cache/fact-cache.js';
import { errorOf, type SignedUp, settle, signUp } from './helpers/app.js';
import { type Caller, useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

const fx = useTestApp();

interface Resource {
  type: ResourceType;
  id: string;
}
interface CheckBody {
  resource: Resource;
  permission: string;
  subject?: string;
}
interface Answer {
  allowed: boolean;
  permissions: string[];
  access_method: string;
}
interface CheckAnswer extends Answer {
  consistency_token: string;
}
interface ExplainAnswer extends CheckAnswer {
  permission: string;
  rule: number;
  reason: string;
  facts: Record<string, unknown> | null;
}

const check = (who: Caller, body: CheckBody) => fx.call(who, 'POST', '/authz/check', body);
const bulk = (who: Caller, checks: CheckBody[]) => fx.call(who, 'POST', '/authz/check-bulk', { checks });
const explain = (who: Caller, body: CheckBody) => fx.call(who, 'POST', '/authz/explain', body);

async function checked(who: Caller, body: CheckBody): Promise<CheckAnswer> {
  const res = await check(who, body);
  expect(res.statusCode, res.body).toBe(200);
  return res.json<CheckAnswer>();
}

function ok<T = Record<string, string>>(res: LightMyRequestResponse, status = 200): T {
  expect(res.statusCode, res.body).toBe(status);
  return res.json<T>();
}

function succeeded(res: LightMyRequestResponse, status = 204) {
  expect(res.statusCode, res.body).toBe(status);
}

async function newTeam(owner: SignedUp, name = 'Studio'): Promise<string> {
  return ok(await fx.call(owner, 'POST', '/teams', { name }), 201).id as string;
}

async function join(owner: SignedUp, teamId: string, member: SignedUp, role: string) {
  ok(await fx.call(owner, 'POST', `/teams/${teamId}/members`, { user_id: member.id, role }), 201);
}

async function newProject(owner: SignedUp, body: Record<string, unknown>): Promise<string> {
  return ok(await fx.call(owner, 'POST', '/projects', { name: 'P', ...body }), 201).id as string;
}

async function newKey(owner: SignedUp, scopes: string[]): Promise<string> {
  return ok(await fx.call(owner, 'POST', '/service-keys', { name: 'k', scopes }), 201).key as string;
}

/**
 * Owner A with team T; viewer V in T; outsider X. P is T's team-visible project with A's generation G;
 * P2 is A's private project (in T) with generation G2.
 */
async function world() {
  const [owner, viewer, outsider] = await Promise.all([signUp(fx.app), signUp(fx.app), signUp(fx.app)]);
  const team = await newTeam(owner);
  await join(owner, team, viewer, 'viewer');
  const project = await newProject(owner, { team_id: team, visibility: 'team' });
  const privateProject = await newProject(owner, { team_id: team, visibility: 'private' });
  const generation = await insertGeneration(fx.sql, { userId: owner.id, projectId: project });
  const privateGeneration = await insertGeneration(fx.sql, { userId: owner.id, projectId: privateProject });
  return { owner, viewer, outsider, team, project, privateProject, generation, privateGeneration };
}

const res = (type: ResourceType, id: string): Resource => ({ type, id });
const answerOf = ({ allowed, permissions, access_method }: Answer): Answer => ({
  allowed,
  permissions,
  access_method,
});
const DENIED: Answer = { allowed: false, permissions: [], access_method: 'none' };
const TYPES: ResourceType[] = ['project', 'generation', 'team'];

describe('POST /authz/check', () => {
  it('answers allowed, the permissions held, the access method and a consistency token, with X-Cache', async () => {
    const w = await world();
    const viewerOnProject = await check(w.viewer, {
      resource: res('project', w.project),
      permission: 'view',
    });
    expect(viewerOnProject.statusCode).toBe(200);
    expect(viewerOnProject.json()).toEqual({
      allowed: true,
      permissions: ['view'],
      access_method: 'team:viewer',
      consistency_token: expect.stringMatching(/^\d+$/),
    });
    expect(['l1', 'l2', 'miss']).toContain(viewerOnProject.headers['x-cache']);

    const cases: [Caller, CheckBody, Answer][] = [
      [
        w.viewer,
        { resource: res('project', w.project), permission: 'edit' },
        { allowed: false, permissions: ['view'], access_method: 'team:viewer' },
      ],
      [
        w.viewer,
        { resource: res('generation', w.generation), permission: 'download' },
        { allowed: true, permissions: ['view', 'download'], access_method: 'team:viewer' },
      ],
      [
        w.owner,
        { resource: res('generation', w.generation), permission: 'delete' },
        { allowed: true, permissions: ['view', 'download', 'edit', 'delete'], access_method: 'owner' },
      ],
      [
        w.viewer,
        { resource: res('team', w.team), permission: 'manage' },
        { allowed: false, permissions: ['view'], access_method: 'team:viewer' },
      ],
      [
        w.owner,
        { resource: res('team', w.team), permission: 'delete' },
        { allowed: true, permissions: ['view', 'manage', 'delete'], access_method: 'owner' },
      ],
      [w.viewer, { resource: res('project', w.privateProject), permission: 'view' }, DENIED],
      [w.viewer, { resource: res('generation', w.privateGeneration), permission: 'view' }, DENIED],
      [w.outsider, { resource: res('project', w.project), permission: 'view' }, DENIED],
      [w.outsider, { resource: res('team', w.team), permission: 'view' }, DENIED],
    ];
    for (const [who, body, expected] of cases) {
      const answer = await checked(who, body);
      expect(answerOf(answer), JSON.stringify(body)).toEqual(expected);
      expect(answer.consistency_token).toMatch(/^\d+$/);
    }
  });

  it('answers unknown and malformed ids with allowed false and access method none, never 404 or 500', async () => {
    const user = await signUp(fx.app);
    const ids = [
      randomUUID(),
      '00000000-0000-0000-0000-000000000000',
      'not-a-uuid',
      `${randomUUID()}x`,
      "x' OR '1'='1",
      '../../etc/passwd',
      '\u0000',
      'a'.repeat(128),
    ];
    for (const type of TYPES) {
      for (const id of ids) {
        const answer = await check(user, { resource: res(type, id), permission: 'view' });
        expect(answer.statusCode, `${type} ${id}`).toBe(200);
        expect(answer.json()).toEqual({ ...DENIED, consistency_token: expect.stringMatching(/^\d+$/) });
      }
    }
    // Longer than any id can be: a validation error, still not a 404 or 500.
    const tooLong = await check(user, { resource: res('project', 'a'.repeat(129)), permission: 'view' });
    expect(tooLong.statusCode).toBe(400);
  });

  it('refuses a permission that is not one of the type with 400 and details', async () => {
    const user = await signUp(fx.app);
    const wrong: [ResourceType, string][] = [
      ['team', 'download'],
      ['team', 'edit'],
      ['generation', 'manage'],
      ['project', 'download'],
    ];
    for (const [type, permission] of wrong) {
      const answer = await check(user, { resource: res(type, randomUUID()), permission });
      expect(answer.statusCode, `${permission} on ${type}`).toBe(400);
      const error = errorOf(answer);
      expect(error.code).toBe('validation_error');
      expect(error.details).toEqual([
        { field: 'body.permission', message: `must be one of ${PERMISSIONS[type].join(', ')}` },
      ]);
    }
    const unknown = await check(user, { resource: res('project', randomUUID()), permission: 'fly' });
    expect(unknown.statusCode).toBe(400);
    expect(errorOf(unknown).details).toEqual(
      expect.arrayContaining([expect.objectContaining({ field: expect.stringContaining('permission') })]),
    );
    const inBulk = await bulk(user, [
      { resource: res('project', randomUUID()), permission: 'view' },
      { resource: res('team', randomUUID()), permission: 'download' },
    ]);
    expect(inBulk.statusCode).toBe(400);
    expect(errorOf(inBulk).details).toEqual([
      { field: 'body.checks.1.permission', message: 'must be one of view, manage, delete' },
    ]);
  });
});

describe('who may ask about whom', () => {
  const routes = (subject: string, resource: Resource) =>
    [
      ['/authz/check', { resource, permission: 'view', subject }],
      ['/authz/check-bulk', { checks: [{ resource, permission: 'view', subject }] }],
      ['/authz/lookup', { resource_type: resource.type, permission: 'view', subject }],
      ['/authz/explain', { resource, permission: 'view', subject }],
    ] as const;

  it('a user token asking about another subject gets 403 subject_forbidden on every authz route', async () => {
    const w = await world();
    for (const [url, body] of routes(w.viewer.id, res('project', w.project))) {
      const answer = await fx.call(w.outsider, 'POST', url, body);
      expect(answer.statusCode, url).toBe(403);
      expect(errorOf(answer).code).toBe('subject_forbidden');
      expect(answer.body).not.toContain(w.project);
      // Naming oneself as the subject is the same as naming nobody.
      const self = await fx.call(w.viewer, 'POST', url, body);
      expect(self.statusCode, url).toBe(200);
    }
    // One foreign subject anywhere in a bulk request refuses the whole request.
    const mixed = await bulk(w.outsider, [
      { resource: res('project', w.project), permission: 'view' },
      { resource: res('project', w.project), permission: 'view', subject: w.viewer.id },
    ]);
    expect(mixed.statusCode).toBe(403);
    expect(errorOf(mixed).code).toBe('subject_forbidden');
  });

  it('a non-administrator’s key with authz:check asks about its own user only: no oracle on others', async () => {
    const w = await world();
    const key = await newKey(w.outsider, ['authz:check']);
    for (const [url, body] of routes(w.viewer.id, res('project', w.privateProject))) {
      const answer = await fx.call(key, 'POST', url, body);
      expect(answer.statusCode, url).toBe(403);
      expect(errorOf(answer).code).toBe('subject_forbidden');
      expect(answer.body).not.toContain(w.privateProject);
    }
    // About itself, the same key works.
    expect(answerOf(await checked(key, { resource: res('project', w.project), permission: 'view' }))).toEqual(
      DENIED,
    );
  });

  it('an administrator’s service key with authz:check may ask about another subject, and gets that subject’s answer', async () => {
    const w = await world();
    const operator = await signUp(fx.app);
    await fx.sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [operator.id]);
    await settle(fx.t);
    const key = await newKey(operator, ['authz:check']);
    const about = (subject: string | undefined, permission = 'view') => ({
      resource: res('project', w.project),
      permission,
      ...(subject ? { subject } : {}),
    });
    expect(answerOf(await checked(key, about(w.viewer.id)))).toEqual({
      allowed: true,
      permissions: ['view'],
      access_method: 'team:viewer',
    });
    expect(answerOf(await checked(key, about(w.owner.id, 'manage')))).toMatchObject({
      allowed: true,
      access_method: 'owner',
    });
    // Without a subject, the key asks about its own user, who has no access.
    expect(answerOf(await checked(key, about(undefined)))).toEqual(DENIED);

    const results = ok<{ results: Answer[] }>(
      await bulk(key, [about(w.viewer.id), about(w.outsider.id), about(w.viewer.id, 'edit')]),
    ).results;
    expect(results.map((r) => r.allowed)).toEqual([true, false, false]);

    const lookup = ok<{ items: string[] }>(
      await fx.call(key, 'POST', '/authz/lookup', {
        resource_type: 'project',
        permission: 'view',
        subject: w.viewer.id,
      }),
    );
    expect(lookup.items).toContain(w.project);
    expect(lookup.items).not.toContain(w.privateProject);

    const why = ok<ExplainAnswer>(await explain(key, about(w.viewer.id)));
    expect(why).toMatchObject({ allowed: true, rule: 4, access_method: 'team:viewer' });
  });

  it('a service key without authz:check gets 403 insufficient_scope on every authz route', async () => {
    const w = await world();
    const allButAuthz = [
      'projects:read',
      'projects:write',
      'generations:read',
      'generations:write',
      'media:read',
    ];
    const key = await newKey(w.owner, [...allButAuthz, 'admin']);
    for (const [url, body] of routes(w.owner.id, res('project', w.project))) {
      const answer = await fx.call(key, 'POST', url, body);
      expect(answer.statusCode, url).toBe(403);
      expect(errorOf(answer).code).toBe('insufficient_scope');
      const { subject: _, ...aboutSelf } = body as { subject?: string };
      const self = await fx.call(key, 'POST', url, aboutSelf);
      expect(self.statusCode, url).toBe(403);
      expect(errorOf(self).code).toBe('insufficient_scope');
    }
    // GET /generations/:id/authorize needs generations:read.
    const authzOnly = await newKey(w.owner, ['authz:check']);
    const noRead = await fx.call(authzOnly, 'GET', `/generations/${w.generation}/authorize`);
    expect(noRead.statusCode).toBe(403);
    expect(errorOf(noRead).code).toBe('insufficient_scope');
    const withRead = await fx.call(key, 'GET', `/generations/${w.generation}/authorize`);
    expect(withRead.statusCode).toBe(200);
    expect(withRead.json()).toMatchObject({ can_delete: true, access_method: 'owner' });
  });
});

describe('POST /authz/check-bulk', () => {
  it('answers in order, for a mix of allowed, denied and nonexistent resources of all three types', async () => {
    const w = await world();
    const checks: [CheckBody, boolean][] = [
      [{ resource: res('project', w.project), permission: 'view' }, true],
      [{ resource: res('project', w.project), permission: 'edit' }, false],
      [{ resource: res('generation', w.generation), permission: 'download' }, true],
      [{ resource: res('generation', w.generation), permission: 'delete' }, false],
      [{ resource: res('team', w.team), permission: 'view' }, true],
      [{ resource: res('team', w.team), permission: 'manage' }, false],
      [{ resource: res('project', w.privateProject), permission: 'view' }, false],
      [{ resource: res('generation', w.privateGeneration), permission: 'view' }, false],
      [{ resource: res('project', randomUUID()), permission: 'view' }, false],
      [{ resource: res('generation', randomUUID()), permission: 'view' }, false],
      [{ resource: res('team', randomUUID()), permission: 'view' }, false],
      [{ resource: res('generation', 'not-a-uuid'), permission: 'view' }, false],
    ];
    const body = ok<{ results: Answer[]; consistency_token: string }>(
      await bulk(
        w.viewer,
        checks.map(([c]) => c),
      ),
    );
    expect(body.consistency_token).toMatch(/^\d+$/);
    expect(body.results.map((r) => r.allowed)).toEqual(checks.map(([, allowed]) => allowed));
    // Each answer is exactly the single check's answer for the same question.
    for (const [i, [c]] of checks.entries()) {
      expect(body.results[i], JSON.stringify(c)).toEqual(answerOf(await checked(w.viewer, c)));
    }
    // Reversed questions, reversed answers.
    const reversed = ok<{ results: Answer[] }>(await bulk(w.viewer, checks.map(([c]) => c).reverse()));
    expect(reversed.results).toEqual([...body.results].reverse());
  });

  it('takes 1 to 1,000 checks: 1,001 (or none) is a 400', async () => {
    const user = await signUp(fx.app);
    const one: CheckBody = { resource: res('project', randomUUID()), permission: 'view' };
    const thousand = ok<{ results: Answer[] }>(
      await bulk(
        user,
        Array.from({ length: 1000 }, () => one),
      ),
    );
    expect(thousand.results).toHaveLength(1000);
    const tooMany = await bulk(
      user,
      Array.from({ length: 1001 }, () => one),
    );
    expect(tooMany.statusCode).toBe(400);
    expect(errorOf(tooMany).code).toBe('validation_error');
    expect((await bulk(user, [])).statusCode).toBe(400);
  });

  it('decides a cold batch of 100 resources in exactly one query on the authorization pool', async () => {
    const [owner, member] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const team = await newTeam(owner);
    await join(owner, team, member, 'editor');
    const project = await newProject(owner, { team_id: team, visibility: 'team' });
    // Rows in bulk, by SQL; the model id is whatever the fixture uses.
    const template = await insertGeneration(fx.sql, { userId: owner.id, projectId: project });
    const projects = (
      await fx.sql.query<{ id: string }>(
        `INSERT INTO projects (owner_id, team_id, name, visibility)
         SELECT $1, $2, 'bulk ' || i, (ARRAY['private', 'team', 'public'])[1 + i % 3]
           FROM generate_series(1, 30) i RETURNING id`,
        [owner.id, team],
      )
    ).rows.map((r) => r.id);
    const generations = (
      await fx.sql.query<{ id: string }>(
        `INSERT INTO generations (user_id, project_id, model_id, prompt)
         SELECT $1, CASE WHEN i % 2 = 0 THEN $2::uuid END, (SELECT model_id FROM generations WHERE id = $3),
                'bulk ' || i
           FROM generate_series(1, 50) i RETURNING id`,
        [owner.id, project, template],
      )
    ).rows.map((r) => r.id);
    const teams = (
      await fx.sql.query<{ id: string }>(
        `INSERT INTO teams (owner_id, name) SELECT $1, 'bulk ' || i FROM generate_series(1, 10) i RETURNING id`,
        [owner.id],
      )
    ).rows.map((r) => r.id);
    const requests: FactsRequest[] = [
      ...projects.map((id) => ({ subjectId: member.id, resource: res('project', id) })),
      ...generations.map((id) => ({ subjectId: member.id, resource: res('generation', id) })),
      ...teams.map((id) => ({ subjectId: member.id, resource: res('team', id) })),
      ...Array.from({ length: 10 }, (_, i) => ({
        subjectId: i % 2 ? owner.id : member.id,
        resource: res(TYPES[i % 3] as ResourceType, randomUUID()),
      })),
    ];
    expect(requests).toHaveLength(100);

    // An engine of its own over the app's authorization pool, with a cache of its own: cold.
    const engine = createAuthzEngine({
      loadFacts: createFactsLoader(fx.t.pools.pg.authorization),
      cache: new FactCache({ l1MaxBytes: 4 << 20, ttlMs: () => 60_000, l2TtlSeconds: () => 60, l2: null }),
      auditDenial: () => {},
    });
    const counter = fx.t.pools.checkouts;
    const before = counter.authorization;
    const single = await engine.check(member.id, res('project', project));
    expect(counter.authorization - before).toBe(1);
    expect(single.decision.accessMethod).toBe('team:editor');

    const beforeBatch = counter.authorization;
    const results = await engine.checkMany(requests);
    expect(counter.authorization - beforeBatch).toBe(1);
    expect(results).toHaveLength(100);
    // The batch decides each resource exactly as a check of it alone would.
    for (const [i, request] of requests.entries()) {
      const alone = await engine.check(request.subjectId, request.resource);
      expect(results[i]?.decision, JSON.stringify(request)).toEqual(alone.decision);
    }
    expect(results.filter((r) => r.decision.permissions.includes('view')).length).toBeGreaterThan(40);

    // Over HTTP: a bulk request of 100 fresh resources costs the pool what a single check costs.
    const freshGenerations = (
      await fx.sql.query<{ id: string }>(
        `INSERT INTO generations (user_id, project_id, model_id, prompt)
         SELECT $1, $2, (SELECT model_id FROM generations WHERE id = $3), 'fresh ' || i
           FROM generate_series(1, 101) i RETURNING id`,
        [owner.id, project, template],
      )
    ).rows.map((r) => r.id);
    const [first, ...hundred] = freshGenerations;
    // One request first, so whatever the app keeps per session or per subject is in the same state
    // for both measured requests.
    await checked(member, { resource: res('project', project), permission: 'view' });
    const beforeOne = counter.authorization;
    await checked(member, { resource: res('generation', first as string), permission: 'view' });
    const costOfOne = counter.authorization - beforeOne;
    const beforeHundred = counter.authorization;
    const hundredAnswers = ok<{ results: Answer[] }>(
      await bulk(
        member,
        hundred.map((id) => ({ resource: res('generation', id), permission: 'download' })),
      ),
    );
    expect(hundredAnswers.results.every((r) => r.allowed)).toBe(true);
    expect(counter.authorization - beforeHundred).toBe(costOfOne);
  });
});

describe('POST /authz/lookup', () => {
  interface Page {
    items: string[];
    next_cursor: string | null;
  }

  async function lookupAll(who: Caller, type: ResourceType, permission: string, limit = 2) {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: Page = ok<Page>(
        await fx.call(who, 'POST', '/authz/lookup', {
          resource_type: type,
          permission,
          limit,
          ...(cursor ? { cursor } : {}),
        }),
      );
      expect(page.items.length).toBeLessThanOrEqual(limit);
      seen.push(...page.items);
      cursor = page.next_cursor;
      pages += 1;
      expect(pages).toBeLessThan(1000);
    } while (cursor);
    return seen;
  }

  const TABLE: Record<ResourceType, string> = {
    project: 'projects',
    generation: 'generations',
    team: 'teams',
  };

  /** The ids of `type`, newest first: the order lookup promises. */
  async function newestFirst(type: ResourceType, ids: string[]): Promise<string[]> {
    const rows = await fx.sql.query<{ id: string }>(
      `SELECT id FROM ${TABLE[type]} WHERE id = ANY($1::uuid[]) ORDER BY created_at DESC, id DESC`,
      [ids],
    );
    return rows.rows.map((r) => r.id);
  }

  /** Every id of `type` in the database on which `who` holds `permission`, by asking check-bulk. */
  async function allowedByCheck(who: SignedUp, type: ResourceType, permission: string): Promise<string[]> {
    const ids = (await fx.sql.query<{ id: string }>(`SELECT id FROM ${TABLE[type]}`)).rows.map((r) => r.id);
    const allowed: string[] = [];
    for (let i = 0; i < ids.length; i += 1000) {
      const chunk = ids.slice(i, i + 1000);
      const { results } = ok<{ results: Answer[] }>(
        await bulk(
          who,
          chunk.map((id) => ({ resource: res(type, id), permission })),
        ),
      );
      chunk.forEach((id, j) => {
        if (results[j]?.allowed) allowed.push(id);
      });
    }
    return allowed;
  }

  async function lookupWorld() {
    const [owner, viewer, other, inactive] = await Promise.all([
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
    ]);
    const team = await newTeam(owner);
    await join(owner, team, viewer, 'viewer');
    await join(owner, team, inactive, 'admin');
    ok(await fx.call(owner, 'PATCH', `/teams/${team}/members/${inactive.id}`, { is_active: false }));
    const viewersTeam = await newTeam(viewer);
    const foreignTeam = await newTeam(owner);
    const teamProject = await newProject(owner, { team_id: team, visibility: 'team' });
    const privateProject = await newProject(owner, { team_id: team, visibility: 'private' });
    const ownProject = await newProject(viewer, {});
    const deletedProject = await newProject(owner, { team_id: team, visibility: 'team' });
    const publicProject = await newProject(other, { visibility: 'public' });
    const secondTeamProject = await newProject(owner, { team_id: team, visibility: 'team' });
    const teamGenerations: string[] = [];
    for (let i = 0; i < 3; i++)
      teamGenerations.push(await insertGeneration(fx.sql, { userId: owner.id, projectId: teamProject }));
    const hiddenGenerations = [
      await insertGeneration(fx.sql, { userId: owner.id, projectId: privateProject }),
      await insertGeneration(fx.sql, { userId: owner.id, projectId: teamProject, deleted: true }),
      await insertGeneration(fx.sql, { userId: owner.id, projectId: deletedProject }),
      await insertGeneration(fx.sql, { userId: other.id }),
    ];
    const ownGeneration = await insertGeneration(fx.sql, { userId: viewer.id });
    const publicGeneration = await insertGeneration(fx.sql, { userId: other.id, projectId: publicProject });
    succeeded(await fx.call(owner, 'DELETE', `/projects/${deletedProject}`));

    const ids: Record<ResourceType, string[]> = {
      project: [teamProject, privateProject, ownProject, deletedProject, publicProject, secondTeamProject],
      generation: [...teamGenerations, ...hiddenGenerations, ownGeneration, publicGeneration],
      team: [team, viewersTeam, foreignTeam],
    };
    const viewable = {
      project: [teamProject, ownProject, publicProject, secondTeamProject],
      generation: [...teamGenerations, ownGeneration, publicGeneration],
      team: [team, viewersTeam],
    };
    const expected: Record<ResourceType, Record<string, string[]>> = {
      project: { view: viewable.project, edit: [ownProject], delete: [ownProject], manage: [ownProject] },
      generation: {
        view: viewable.generation,
        download: viewable.generation,
        edit: [ownGeneration],
        delete: [ownGeneration],
      },
      team: { view: viewable.team, manage: [viewersTeam], delete: [viewersTeam] },
    };
    return {
      owner,
      viewer,
      inactive,
      team,
      ids,
      publicOnes: { project: [publicProject], generation: [publicGeneration], team: [] } as Record<
        ResourceType,
        string[]
      >,
      expected,
      teamGenerations,
      teamProjects: [teamProject, secondTeamProject],
    };
  }

  it('returns exactly the ids the subject holds the permission on, paged without repeats, newest first', async () => {
    const w = await lookupWorld();
    for (const type of TYPES) {
      for (const permission of PERMISSIONS[type]) {
        const what = `${permission} on ${type}`;
        const seen = await lookupAll(w.viewer, type, permission);
        expect(new Set(seen).size, `${what}: repeats`).toBe(seen.length);
        expect(seen, `${what}: order`).toEqual(await newestFirst(type, seen));
        // Within this world, exactly the expected ids…
        expect(seen.filter((id) => w.ids[type].includes(id)).sort(), what).toEqual(
          [...(w.expected[type][permission] ?? [])].sort(),
        );
        // …and across the whole database, exactly what check-bulk allows (other tests' public rows too).
        expect([...seen].sort(), `${what}: agrees with check`).toEqual(
          (await allowedByCheck(w.viewer, type, permission)).sort(),
        );
      }
    }
    // One big page holds the same ids as many small ones, in the same order.
    const small = await lookupAll(w.viewer, 'generation', 'view', 1);
    expect(await lookupAll(w.viewer, 'generation', 'view', 100)).toEqual(small);
  });

  it("gives a team viewer none of the team's generations for delete", async () => {
    const w = await lookupWorld();
    const deletable = await lookupAll(w.viewer, 'generation', 'delete');
    expect(deletable.filter((id) => w.teamGenerations.includes(id))).toEqual([]);
    expect(deletable.filter((id) => w.ids.generation.includes(id))).toEqual(w.expected.generation.delete);
    // …while the team's owner gets all of them.
    const ownersDeletable = await lookupAll(w.owner, 'generation', 'delete', 100);
    expect(ownersDeletable).toEqual(expect.arrayContaining(w.teamGenerations));
  });

  it("stops listing the team's projects, generations and the team itself once the member is removed", async () => {
    const w = await lookupWorld();
    expect(await lookupAll(w.viewer, 'project', 'view')).toEqual(expect.arrayContaining(w.teamProjects));
    succeeded(await fx.call(w.owner, 'DELETE', `/teams/${w.team}/members/${w.viewer.id}`));
    const projects = await lookupAll(w.viewer, 'project', 'view');
    expect(projects.filter((id) => w.teamProjects.includes(id))).toEqual([]);
    expect(projects).toEqual(
      expect.arrayContaining((w.expected.project.view ?? []).filter((id) => !w.teamProjects.includes(id))),
    );
    const generations = await lookupAll(w.viewer, 'generation', 'view');
    expect(generations.filter((id) => w.teamGenerations.includes(id))).toEqual([]);
    expect(await lookupAll(w.viewer, 'team', 'view')).not.toContain(w.team);
  });

  it("lists nothing of the team's for a deactivated member (an admin), only what the public sees", async () => {
    const w = await lookupWorld();
    for (const type of TYPES) {
      for (const permission of PERMISSIONS[type]) {
        const seen = await lookupAll(w.inactive, type, permission, 100);
        const asPublic = permission === 'view' || permission === 'download' ? w.publicOnes[type] : [];
        expect(
          seen.filter((id) => w.ids[type].includes(id)),
          `${permission} on ${type}`,
        ).toEqual(asPublic);
      }
    }
  });

  it('refuses a permission not of the type, and a malformed cursor, with 400', async () => {
    const user = await signUp(fx.app);
    const wrong = await fx.call(user, 'POST', '/authz/lookup', {
      resource_type: 'team',
      permission: 'download',
    });
    expect(wrong.statusCode).toBe(400);
    expect(errorOf(wrong).details).toEqual([
      { field: 'body.permission', message: 'must be one of view, manage, delete' },
    ]);
    const badCursor = await fx.call(user, 'POST', '/authz/lookup', {
      resource_type: 'project',
      permission: 'view',
      cursor: 'bm90IGEgY3Vyc29y',
    });
    expect(badCursor.statusCode).toBe(400);
  });
});

describe('POST /authz/explain', () => {
  it('shows the rule, the reason and the facts for a resource the subject can view', async () => {
    const w = await world();
    const viewer = ok<ExplainAnswer>(
      await explain(w.viewer, { resource: res('project', w.project), permission: 'edit' }),
    );
    expect(viewer).toEqual({
      allowed: false,
      permissions: ['view'],
      access_method: 'team:viewer',
      permission: 'edit',
      rule: 4,
      reason: "the subject is an active viewer of the project's team",
      facts: {
        type: 'project',
        exists: true,
        project: { id: w.project, owner_id: w.owner.id, team_id: w.team, visibility: 'team', deleted: false },
        membership: { role: 'viewer', active: true },
      },
      consistency_token: expect.stringMatching(/^\d+$/),
    });
    const owner = ok<ExplainAnswer>(
      await explain(w.owner, { resource: res('generation', w.generation), permission: 'delete' }),
    );
    expect(owner).toMatchObject({
      allowed: true,
      access_method: 'owner',
      rule: 2,
      reason: 'the subject created this generation',
      facts: {
        type: 'generation',
        exists: true,
        generation: { id: w.generation, creator_id: w.owner.id, deleted: false },
        project: { id: w.project, owner_id: w.owner.id, team_id: w.team, visibility: 'team', deleted: false },
        membership: { role: 'owner', active: true },
      },
    });
  });

  it('names every field in snake_case, like the rest of the API (facts included)', async () => {
    const w = await world();
    const keysOf = (value: unknown): string[] =>
      value !== null && typeof value === 'object'
        ? Object.entries(value).flatMap(([k, v]) => [k, ...keysOf(v)])
        : [];
    const answers = [
      await explain(w.viewer, { resource: res('team', w.team), permission: 'manage' }),
      await explain(w.viewer, { resource: res('generation', w.generation), permission: 'download' }),
      await explain(w.owner, { resource: res('project', w.privateProject), permission: 'manage' }),
    ].map((r) => ok<ExplainAnswer>(r));
    expect(answers[0]?.facts).toEqual({
      type: 'team',
      exists: true,
      team: { id: w.team, owner_id: w.owner.id },
      membership: { role: 'viewer', active: true },
    });
    for (const answer of answers) {
      expect(answer.facts).not.toBeNull();
      for (const key of keysOf(answer)) expect(key).toMatch(/^[a-z0-9_]+$/);
    }
  });

  it('answers a hidden, a deleted and a nonexistent resource identically (rule 6, no facts)', async () => {
    const w = await world();
    const deletedProject = await newProject(w.owner, { team_id: w.team, visibility: 'team' });
    const deletedGeneration = await insertGeneration(fx.sql, { userId: w.owner.id, projectId: w.project });
    const otherTeam = await newTeam(w.owner, 'Elsewhere');
    succeeded(await fx.call(w.owner, 'DELETE', `/projects/${deletedProject}`));
    succeeded(await fx.call(w.owner, 'DELETE', `/generations/${deletedGeneration}`));

    const questions: [Caller, Resource][] = [
      // Not viewable
      [w.viewer, res('project', w.privateProject)],
      [w.outsider, res('project', w.project)],
      [w.viewer, res('generation', w.privateGeneration)],
      [w.outsider, res('generation', w.generation)],
      [w.viewer, res('team', otherTeam)],
      [w.outsider, res('team', w.team)],
      // Deleted (the viewer, and even the owner, could see them before)
      [w.viewer, res('project', deletedProject)],
      [w.owner, res('project', deletedProject)],
      [w.viewer, res('generation', deletedGeneration)],
      [w.owner, res('generation', deletedGeneration)],
      // Nonexistent
      [w.viewer, res('project', randomUUID())],
      [w.viewer, res('generation', randomUUID())],
      [w.viewer, res('team', randomUUID())],
      [w.viewer, res('project', 'not-a-uuid')],
    ];
    const bodies = [];
    for (const [who, resource] of questions) {
      const answer = await explain(who, { resource, permission: 'view' });
      expect(answer.statusCode).toBe(200);
      const { consistency_token, ...rest } = answer.json<ExplainAnswer>();
      expect(consistency_token).toMatch(/^\d+$/);
      expect(answer.body).not.toContain(resource.id);
      bodies.push(rest);
    }
    for (const body of bodies) {
      expect(body).toEqual({
        ...DENIED,
        permission: 'view',
        rule: 6,
        reason: 'no rule grants access',
        facts: null,
      });
    }
  });
});

describe('consistency tokens', () => {
  it('increase with every write that changes facts, and checks after it carry at least its token', async () => {
    const w = await world();
    const first = await checked(w.viewer, { resource: res('project', w.project), permission: 'view' });
    expect(first.allowed).toBe(true);
    const before = BigInt(first.consistency_token);

    const privateNow = await fx.call(w.owner, 'PATCH', `/projects/${w.project}`, { visibility: 'private' });
    expect(privateNow.statusCode).toBe(200);
    const written = BigInt(String(privateNow.headers['velro-consistency-token']));
    expect(written).toBeGreaterThan(before);

    const after = await checked(w.viewer, { resource: res('project', w.project), permission: 'view' });
    expect(after.allowed).toBe(false);
    expect(BigInt(after.consistency_token)).toBeGreaterThanOrEqual(written);

    const rejoined = await fx.call(w.owner, 'PATCH', `/projects/${w.project}`, { visibility: 'team' });
    const writtenAgain = BigInt(String(rejoined.headers['velro-consistency-token']));
    expect(writtenAgain).toBeGreaterThan(written);
    const bulkAfter = ok<{ consistency_token: string }>(
      await bulk(w.viewer, [{ resource: res('project', w.project), permission: 'view' }]),
    );
    expect(BigInt(bulkAfter.consistency_token)).toBeGreaterThanOrEqual(writtenAgain);
  });
});

describe('GET /generations/:id/authorize', () => {
  it("answers the seed's GenerationPermissions per access method, with X-Cache", async () => {
    const w = await world();
    const owner = await fx.call(w.owner, 'GET', `/generations/${w.generation}/authorize`);
    expect(owner.statusCode).toBe(200);
    expect(owner.json()).toEqual({
      generation_id: w.generation,
      user_id: w.owner.id,
      can_view: true,
      can_download: true,
      can_edit: true,
      can_delete: true,
      access_method: 'owner',
    });
    expect(['l1', 'l2', 'miss']).toContain(owner.headers['x-cache']);
    const viewer = await fx.call(w.viewer, 'GET', `/generations/${w.generation}/authorize`);
    expect(viewer.json()).toEqual({
      generation_id: w.generation,
      user_id: w.viewer.id,
      can_view: true,
      can_download: true,
      can_edit: false,
      can_delete: false,
      access_method: 'team:viewer',
    });
  });

  it('answers 404 alike for a generation the caller cannot view, a missing one and a malformed id', async () => {
    const w = await world();
    const errors = [];
    for (const id of [w.generation, w.privateGeneration, randomUUID(), 'not-a-uuid']) {
      const who = id === w.privateGeneration ? w.viewer : w.outsider;
      const answer = await fx.call(who, 'GET', `/generations/${id}/authorize`);
      expect(answer.statusCode, id).toBe(404);
      expect(answer.body).not.toContain(id);
      errors.push(errorOf(answer).code);
    }
    expect(new Set(errors)).toEqual(new Set(['not_found']));
  });
});
