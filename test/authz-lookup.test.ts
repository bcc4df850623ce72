/**
 * The SQL lookup (lookup.ts) against the one pure policy (policy.ts): over random worlds stored in a
 * real PostgreSQL database, every page of "which resources of type T may S do P on" must list exactly
 * the resources for which `decide` grants P, newest first (created_at, then id), and keyset pages must
 * walk that same list with no repeats and no gaps. Facts come from the real loader and assemble()
 * (facts.ts), and are themselves checked against the world they were read from.
 */
import fc from 'fast-check';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assemble,
  createFactsLoader,
  type FactsLoader,
  type FactsRequest,
  type Lookup,
} from '../src/modules/authz/facts.js';
import { lookupResources } from '../src/modules/authz/lookup.js';
import { decide } from '../src/modules/authz/policy.js';
import {
  type MembershipFacts,
  PERMISSIONS,
  type Permission,
  type ProjectFacts,
  type ResourceFacts,
  type ResourceType,
  type TeamRole,
  type Visibility,
} from '../src/modules/authz/types.js';
import type { DB } from '../src/platform/db/schema.js';
import { useTestDatabase } from './helpers/fixture.js';

const NUM_WORLDS = 50;
const BASE = '2024-05-01 12:00:00+00';
const TYPES: readonly ResourceType[] = ['project', 'generation', 'team'];
const ROLES: readonly TeamRole[] = ['owner', 'admin', 'editor', 'viewer'];
const VISIBILITIES: readonly Visibility[] = ['private', 'team', 'public'];

// ---------------------------------------------------------------------------------------------
// Worlds
// ---------------------------------------------------------------------------------------------

/** created_at = BASE - age µs. Few distinct ages, so equal timestamps (the id tie-break) are common. */
type Age = number;

interface TeamRow {
  owner: number;
  age: Age;
}
interface MemberRow {
  team: number;
  user: number;
  role: TeamRole;
  active: boolean;
}
interface ProjectRow {
  owner: number;
  team: number | null;
  visibility: Visibility;
  deleted: boolean;
  age: Age;
}
interface GenerationRow {
  creator: number;
  project: number | null;
  deleted: boolean;
  age: Age;
}

interface World {
  userIds: string[];
  teamIds: string[];
  projectIds: string[];
  generationIds: string[];
  teams: TeamRow[];
  members: MemberRow[];
  projects: ProjectRow[];
  generations: GenerationRow[];
}

const MAX_USERS = 6;
const MAX_TEAMS = 3;
const MAX_PROJECTS = 8;
const MAX_GENERATIONS = 14;

/** true with odds trueWeight : falseWeight. */
const chance = (trueWeight: number, falseWeight: number) =>
  fc.oneof(
    { arbitrary: fc.constant(true), weight: trueWeight },
    { arbitrary: fc.constant(false), weight: falseWeight },
  );

const ageArb: fc.Arbitrary<Age> = fc
  .tuple(fc.integer({ min: 0, max: 12 }), fc.constantFrom(0, 0, 0, 1, 250_000, 999_999))
  .map(([seconds, micros]) => seconds * 1_000_000 + micros);

const membershipArb = fc.option(fc.record({ role: fc.constantFrom(...ROLES), active: chance(3, 1) }), {
  freq: 2,
});

const worldArb: fc.Arbitrary<World> = fc
  .record({
    users: fc.integer({ min: 3, max: MAX_USERS }),
    teams: fc.integer({ min: 0, max: MAX_TEAMS }),
    // Every id the world may need, distinct across tables as gen_random_uuid() ids would be.
    // Not shrunk: shrinking ids says nothing and would cost hundreds of database round trips.
    ids: fc.noShrink(
      fc.uniqueArray(fc.uuid(), {
        minLength: MAX_USERS + MAX_TEAMS + MAX_PROJECTS + MAX_GENERATIONS,
        maxLength: MAX_USERS + MAX_TEAMS + MAX_PROJECTS + MAX_GENERATIONS,
        selector: (id) => id.toLowerCase(),
      }),
    ),
  })
  .chain(({ users, teams, ids }) => {
    const user = fc.integer({ min: 0, max: users - 1 });
    const team = teams === 0 ? fc.constant(null) : fc.option(fc.integer({ min: 0, max: teams - 1 }));
    return fc
      .record({
        teams: fc.array(fc.record({ owner: user, age: ageArb }), { minLength: teams, maxLength: teams }),
        memberships: fc.array(fc.array(membershipArb, { minLength: users, maxLength: users }), {
          minLength: teams,
          maxLength: teams,
        }),
        projects: fc.array(
          fc.record({
            owner: user,
            team,
            visibility: fc.constantFrom(...VISIBILITIES),
            deleted: chance(1, 4),
            age: ageArb,
          }),
          { maxLength: MAX_PROJECTS },
        ),
        generations: fc.array(
          fc.record({
            creator: user,
            project: fc.integer(),
            inProject: chance(4, 1),
            deleted: chance(1, 4),
            age: ageArb,
          }),
          { maxLength: MAX_GENERATIONS },
        ),
      })
      .map((w): World => {
        const members: MemberRow[] = [];
        w.memberships.forEach((row, t) => {
          const owner = w.teams[t]!.owner;
          row.forEach((m, u) => {
            // teams.owner_id is always an active owner member (the teams service keeps it so).
            if (u === owner) members.push({ team: t, user: u, role: 'owner', active: true });
            else if (m !== null) members.push({ team: t, user: u, ...m });
          });
        });
        const nProjects = w.projects.length;
        let next = 0;
        const take = (n: number) => {
          const slice = ids.slice(next, next + n);
          next += n;
          return slice;
        };
        return {
          userIds: take(users),
          teamIds: take(teams),
          projectIds: take(nProjects),
          generationIds: take(w.generations.length),
          teams: w.teams,
          members,
          projects: w.projects,
          generations: w.generations.map((g) => ({
            creator: g.creator,
            project: g.inProject && nProjects > 0 ? Math.abs(g.project) % nProjects : null,
            deleted: g.deleted,
            age: g.age,
          })),
        };
      });
  });

// ---------------------------------------------------------------------------------------------
// The world as the loader should see it, and the brute force
// ---------------------------------------------------------------------------------------------

interface Resource {
  type: ResourceType;
  id: string;
  age: Age;
}

function resourcesOf(world: World): Resource[] {
  return [
    ...world.projects.map((p, i) => ({ type: 'project' as const, id: world.projectIds[i]!, age: p.age })),
    ...world.generations.map((g, i) => ({
      type: 'generation' as const,
      id: world.generationIds[i]!,
      age: g.age,
    })),
    ...world.teams.map((t, i) => ({ type: 'team' as const, id: world.teamIds[i]!, age: t.age })),
  ];
}

/** What the facts of `resource` seen by user `u` must be, written from the world alone. */
function modelFacts(world: World, u: number, resource: Resource): ResourceFacts {
  const membership = (team: number | null): MembershipFacts | null => {
    if (team === null) return null;
    const m = world.members.find((x) => x.team === team && x.user === u);
    return m ? { role: m.role, active: m.active } : null;
  };
  const project = (i: number): ProjectFacts => {
    const p = world.projects[i]!;
    return {
      id: world.projectIds[i]!,
      ownerId: world.userIds[p.owner]!,
      teamId: p.team === null ? null : world.teamIds[p.team]!,
      visibility: p.visibility,
      deleted: p.deleted,
    };
  };
  switch (resource.type) {
    case 'project': {
      const i = world.projectIds.indexOf(resource.id);
      return {
        type: 'project',
        exists: true,
        project: project(i),
        membership: membership(world.projects[i]!.team),
      };
    }
    case 'generation': {
      const i = world.generationIds.indexOf(resource.id);
      const g = world.generations[i]!;
      return {
        type: 'generation',
        exists: true,
        generation: { id: resource.id, creatorId: world.userIds[g.creator]!, deleted: g.deleted },
        project: g.project === null ? null : project(g.project),
        membership: g.project === null ? null : membership(world.projects[g.project]!.team),
      };
    }
    case 'team': {
      const i = world.teamIds.indexOf(resource.id);
      return {
        type: 'team',
        exists: true,
        team: { id: resource.id, ownerId: world.userIds[world.teams[i]!.owner]! },
        membership: membership(i),
      };
    }
  }
}

/** Newest first: smaller age first, then the larger id (uuids compare as their lower-case hex). */
function newestFirst(a: Resource, b: Resource): number {
  if (a.age !== b.age) return a.age - b.age;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Storing a world
// ---------------------------------------------------------------------------------------------

async function store(client: pg.Client, world: World): Promise<void> {
  await client.query('BEGIN');
  await client.query('TRUNCATE users, teams, team_members, projects, generations CASCADE');
  await client.query(
    `INSERT INTO users (id, email, password_hash, display_name)
     SELECT u.id, 'user' || u.n || '@example.com', 'not-a-hash', 'User ' || u.n
       FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)`,
    [world.userIds],
  );
  const at = `$1::timestamptz - x.age * interval '1 microsecond'`;
  await client.query(
    `INSERT INTO teams (id, name, owner_id, created_at)
     SELECT x.id, 'Team', x.owner, ${at} FROM unnest($2::uuid[], $3::uuid[], $4::bigint[]) AS x(id, owner, age)`,
    [BASE, world.teamIds, world.teams.map((t) => world.userIds[t.owner]), world.teams.map((t) => t.age)],
  );
  await client.query(
    `INSERT INTO team_members (team_id, user_id, role, is_active)
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::boolean[])`,
    [
      world.members.map((m) => world.teamIds[m.team]),
      world.members.map((m) => world.userIds[m.user]),
      world.members.map((m) => m.role),
      world.members.map((m) => m.active),
    ],
  );
  await client.query(
    `INSERT INTO projects (id, owner_id, team_id, name, visibility, deleted_at, created_at)
     SELECT x.id, x.owner, x.team, 'Project', x.visibility, CASE WHEN x.deleted THEN $1::timestamptz END, ${at}
       FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::boolean[], $7::bigint[])
            AS x(id, owner, team, visibility, deleted, age)`,
    [
      BASE,
      world.projectIds,
      world.projects.map((p) => world.userIds[p.owner]),
      world.projects.map((p) => (p.team === null ? null : world.teamIds[p.team])),
      world.projects.map((p) => p.visibility),
      world.projects.map((p) => p.deleted),
      world.projects.map((p) => p.age),
    ],
  );
  await client.query(
    `INSERT INTO generations (id, user_id, project_id, model_id, prompt, deleted_at, created_at)
     SELECT x.id, x.creator, x.project, 'velro-sketch', 'a lighthouse at dusk',
            CASE WHEN x.deleted THEN $1::timestamptz END, ${at}
       FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::boolean[], $6::bigint[])
            AS x(id, creator, project, deleted, age)`,
    [
      BASE,
      world.generationIds,
      world.generations.map((g) => world.userIds[g.creator]),
      world.generations.map((g) => (g.project === null ? null : world.projectIds[g.project])),
      world.generations.map((g) => g.deleted),
      world.generations.map((g) => g.age),
    ],
  );
  await client.query('COMMIT');
}

// ---------------------------------------------------------------------------------------------

const fx = useTestDatabase();
let pool: pg.Pool;
let kysely: Kysely<DB>;
let loadFacts: FactsLoader;

beforeAll(async () => {
  pool = new pg.Pool({ connectionString: fx.db.url, max: 4 });
  kysely = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
  loadFacts = createFactsLoader(pool);
});

afterAll(async () => {
  await kysely?.destroy();
});

async function allPages(
  subjectId: string,
  type: ResourceType,
  permission: Permission,
  limit: number,
): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let cursor: string | undefined;
  for (let pages = 1; ; pages++) {
    const page = await lookupResources(kysely, { subjectId, type, permission, limit, cursor });
    expect(page.ids.length).toBeLessThanOrEqual(limit);
    ids.push(...page.ids);
    if (page.next_cursor === null) return { ids, pages };
    // A cursor is only handed out when more rows follow: never a full page then an empty one.
    expect(page.ids.length).toBe(limit);
    if (pages > 50) throw new Error('pagination does not end');
    cursor = page.next_cursor;
  }
}

describe('lookupResources agrees with decide()', () => {
  it(`on every (user, type, permission) of ${NUM_WORLDS} random worlds, paged and unpaged`, async () => {
    const stats = { worlds: 0, lookups: 0, pairs: 0, granted: 0, nonEmpty: 0, tiedWorlds: 0, pagedWalks: 0 };

    await fc.assert(
      fc.asyncProperty(worldArb, async (world) => {
        await store(fx.sql, world);
        const resources = resourcesOf(world);

        // Brute force: the facts of every (user, resource) pair, in one call of the real loader.
        const requests: FactsRequest[] = [];
        const keys: { u: number; resource: Resource }[] = [];
        world.userIds.forEach((subjectId, u) => {
          for (const resource of resources) {
            requests.push({ subjectId, resource: { type: resource.type, id: resource.id } });
            keys.push({ u, resource });
          }
        });
        const loaded = await loadFacts(requests);
        // The pieces one load returned, assembled per check exactly as the engine does on a miss.
        const fromLoad: Lookup = (key) =>
          loaded.entries.has(key) ? { known: true, value: loaded.entries.get(key) } : { known: false };
        const granted = new Map<string, Set<string>>(); // `${u}:${type}:${permission}` -> resource ids
        keys.forEach(({ u, resource }, i) => {
          const request = requests[i]!;
          const built = assemble(request.subjectId, request.resource, fromLoad);
          if (!('facts' in built)) throw new Error(`one load did not answer ${built.missing}`);
          const { facts } = built;
          // The loader reads exactly the world it was given.
          expect(facts, `facts of ${resource.type} ${resource.id} for user ${u}`).toEqual(
            modelFacts(world, u, resource),
          );
          for (const permission of decide(world.userIds[u]!, facts).permissions) {
            const key = `${u}:${resource.type}:${permission}`;
            const set = granted.get(key) ?? new Set<string>();
            set.add(resource.id);
            granted.set(key, set);
          }
        });
        stats.pairs += requests.length;

        for (const type of TYPES) {
          const ofType = resources.filter((r) => r.type === type);
          if (new Set(ofType.map((r) => r.age)).size < ofType.length) stats.tiedWorlds++;
        }

        for (const [u, subjectId] of world.userIds.entries()) {
          for (const type of TYPES) {
            for (const permission of PERMISSIONS[type] as readonly Permission[]) {
              const allowed = granted.get(`${u}:${type}:${permission}`) ?? new Set<string>();
              const expected = resources
                .filter((r) => r.type === type && allowed.has(r.id))
                .sort(newestFirst)
                .map((r) => r.id);
              const what = `user ${u} ${type}/${permission}`;

              const page = await lookupResources(kysely, { subjectId, type, permission, limit: 100 });
              expect(page.ids, what).toEqual(expected);
              expect(page.next_cursor, what).toBeNull();

              const walk = await allPages(subjectId, type, permission, 2);
              expect(walk.ids, `${what}, pages of 2`).toEqual(expected);
              expect(new Set(walk.ids).size).toBe(walk.ids.length);
              expect(walk.pages).toBe(Math.max(1, Math.ceil(expected.length / 2)));

              stats.lookups += 1 + walk.pages;
              stats.granted += expected.length;
              if (expected.length > 0) stats.nonEmpty++;
              if (walk.pages > 1) stats.pagedWalks++;
            }
          }
        }
        stats.worlds++;
      }),
      { numRuns: NUM_WORLDS },
    );

    // The worlds must have exercised what this test is about, not only empty answers.
    expect(stats.nonEmpty).toBeGreaterThan(stats.worlds * 5);
    expect(stats.pagedWalks).toBeGreaterThan(stats.worlds);
    expect(stats.tiedWorlds).toBeGreaterThan(0);
    console.info(`authz lookup property: ${JSON.stringify(stats)}`);
  }, 120_000);
});
