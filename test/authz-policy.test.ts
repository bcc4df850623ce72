import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { can, decide, isVisible } from '../src/modules/authz/policy.js';
import {
  type AccessMethod,
  type Decision,
  type GenerationFacts,
  type MembershipFacts,
  PERMISSIONS,
  type ProjectFacts,
  type ResourceFacts,
  type ResourceType,
  type TeamFacts,
  type TeamRole,
  type Visibility,
} from '../src/modules/authz/types.js';

// ---------------------------------------------------------------------------------------------
// Reference implementation, written from SPEC §3 alone. It deliberately shares nothing with
// policy.ts: it evaluates every rule, asks every rule about every permission and takes the union,
// where policy.ts stops at the first matching rule.
// ---------------------------------------------------------------------------------------------

const SPEC_PERMISSIONS: Record<ResourceType, readonly string[]> = {
  project: ['view', 'edit', 'delete', 'manage'],
  generation: ['view', 'download', 'edit', 'delete'],
  // SPEC lists view and manage; deleting a whole team is added, for team owners only.
  team: ['view', 'manage', 'delete'],
};

const ROLES: readonly TeamRole[] = ['owner', 'admin', 'editor', 'viewer'];
const VISIBILITIES: readonly Visibility[] = ['private', 'team', 'public'];
const RANK: Record<TeamRole, number> = { viewer: 1, editor: 2, admin: 3, owner: 4 };

interface RefRule {
  rule: 2 | 3 | 4 | 5;
  applies: boolean;
  method: AccessMethod;
  grants: (permission: string) => boolean;
}

interface RefDecision {
  permissions: string[];
  accessMethod: AccessMethod;
  rule: Decision['rule'];
  /** Whether the first applicable rule alone grants everything the union grants. */
  firstRuleIsSuperset: boolean;
}

const everything = () => true;

/** Rule 4's precondition: P has a team, is team- or public-visible, and S is an active member. */
function activeTeamRole(project: ProjectFacts | null, membership: MembershipFacts | null): TeamRole | null {
  if (project === null || project.teamId === null) return null;
  if (project.visibility !== 'team' && project.visibility !== 'public') return null;
  if (membership === null || membership.active !== true) return null;
  return membership.role;
}

function generationRules(
  subject: string,
  facts: Extract<ResourceFacts, { type: 'generation'; exists: true }>,
) {
  const { generation: g, project: p } = facts;
  const role = activeTeamRole(p, facts.membership);
  const rules: RefRule[] = [
    { rule: 2, applies: g.creatorId === subject, method: 'owner', grants: everything },
    { rule: 3, applies: p !== null && p.ownerId === subject, method: 'project_owner', grants: everything },
    {
      rule: 4,
      applies: role !== null,
      method: `team:${role ?? 'viewer'}`,
      grants: (perm) => {
        if (role === null) return false;
        if (role === 'owner') return true;
        if (perm === 'view' || perm === 'download') return true;
        if (perm === 'edit') return RANK[role] >= RANK.editor;
        if (perm === 'delete') return RANK[role] >= RANK.admin;
        return false;
      },
    },
    {
      rule: 5,
      applies: p !== null && p.visibility === 'public',
      method: 'public',
      grants: (perm) => perm === 'view' || perm === 'download',
    },
  ];
  const vetoed = g.deleted || p?.deleted === true;
  return { vetoed, rules };
}

function projectRules(subject: string, facts: Extract<ResourceFacts, { type: 'project'; exists: true }>) {
  const p = facts.project;
  const role = activeTeamRole(p, facts.membership);
  const rules: RefRule[] = [
    { rule: 2, applies: p.ownerId === subject, method: 'owner', grants: everything },
    {
      rule: 4,
      applies: role !== null,
      method: `team:${role ?? 'viewer'}`,
      grants: (perm) => {
        if (role === null) return false;
        if (role === 'owner') return true;
        if (perm === 'view') return true;
        if (perm === 'edit') return RANK[role] >= RANK.editor;
        // SPEC: manage (change team/visibility) is for the owner or team owner/admin only.
        if (perm === 'delete' || perm === 'manage') return RANK[role] >= RANK.admin;
        return false;
      },
    },
    { rule: 5, applies: p.visibility === 'public', method: 'public', grants: (perm) => perm === 'view' },
  ];
  return { vetoed: p.deleted, rules };
}

function teamRules(subject: string, facts: Extract<ResourceFacts, { type: 'team'; exists: true }>) {
  const m = facts.membership;
  const role = m !== null && m.active === true ? m.role : null;
  const rules: RefRule[] = [
    { rule: 2, applies: facts.team.ownerId === subject, method: 'owner', grants: everything },
    {
      rule: 4,
      applies: role !== null,
      method: `team:${role ?? 'viewer'}`,
      grants: (perm) => {
        if (role === null) return false;
        if (perm === 'view') return true;
        if (perm === 'manage') return RANK[role] >= RANK.admin;
        return role === 'owner';
      },
    },
  ];
  return { vetoed: false, rules };
}

function reference(subject: string, facts: ResourceFacts): RefDecision {
  const nothing = (rule: 1 | 6): RefDecision => ({
    permissions: [],
    accessMethod: 'none',
    rule,
    firstRuleIsSuperset: true,
  });
  if (!facts.exists) return nothing(6);
  const { vetoed, rules } =
    facts.type === 'generation'
      ? generationRules(subject, facts)
      : facts.type === 'project'
        ? projectRules(subject, facts)
        : teamRules(subject, facts);
  if (vetoed) return nothing(1);

  const applicable = rules.filter((r) => r.applies);
  const first = applicable[0];
  if (first === undefined) return nothing(6);

  const permissions: string[] = [];
  for (const perm of SPEC_PERMISSIONS[facts.type]) {
    let granted = false;
    for (const r of applicable) if (r.grants(perm)) granted = true;
    if (granted) permissions.push(perm);
  }
  return {
    permissions,
    accessMethod: first.method,
    rule: first.rule,
    firstRuleIsSuperset: permissions.every((perm) => first.grants(perm)),
  };
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the property and exhaustive tests.
// ---------------------------------------------------------------------------------------------

function wellFormed(type: ResourceType, decision: Decision): boolean {
  const canonical: readonly string[] = PERMISSIONS[type];
  let previous = -1;
  for (const perm of decision.permissions) {
    const index = canonical.indexOf(perm);
    if (index <= previous) return false;
    previous = index;
  }
  return (decision.accessMethod === 'none') === (decision.permissions.length === 0);
}

function agreesWithReference(subject: string, facts: ResourceFacts, decision: Decision): boolean {
  const ref = reference(subject, facts);
  return (
    ref.firstRuleIsSuperset &&
    ref.accessMethod === decision.accessMethod &&
    ref.rule === decision.rule &&
    ref.permissions.length === decision.permissions.length &&
    ref.permissions.every((perm, i) => decision.permissions[i] === perm)
  );
}

/** Cheap boolean checks on the hot loop; `expect` only runs to explain a failure. */
function check(subject: string, facts: ResourceFacts, decision: Decision, forbiddenInReason: string[]): void {
  if (
    agreesWithReference(subject, facts, decision) &&
    wellFormed(facts.type, decision) &&
    decision.reason.length > 0 &&
    forbiddenInReason.every((id) => !decision.reason.includes(id))
  ) {
    return;
  }
  const ref = reference(subject, facts);
  const context = JSON.stringify({ subject, facts });
  expect(ref.firstRuleIsSuperset, `first rule is not a superset: ${context}`).toBe(true);
  expect(
    { permissions: decision.permissions, accessMethod: decision.accessMethod, rule: decision.rule },
    context,
  ).toEqual({ permissions: ref.permissions, accessMethod: ref.accessMethod, rule: ref.rule });
  expect(wellFormed(facts.type, decision), `not canonical: ${context}`).toBe(true);
  for (const id of forbiddenInReason) expect(decision.reason).not.toContain(id);
  expect(decision.reason).not.toBe('');
}

// ---------------------------------------------------------------------------------------------
// (a) Random worlds, loaded the way the database loader builds facts.
// ---------------------------------------------------------------------------------------------

interface World {
  users: string[];
  teams: { id: string; ownerId: string; members: Map<string, MembershipFacts> }[];
  projects: ProjectFacts[];
  generations: (GenerationFacts & { projectId: string | null })[];
}

const membershipArb = fc.record({ role: fc.constantFrom(...ROLES), active: fc.boolean() });
// Mostly live rows, so the interesting rules (2–5) are exercised far more than the veto.
const deletedArb = fc.oneof(
  { arbitrary: fc.constant(false), weight: 3 },
  { arbitrary: fc.constant(true), weight: 1 },
);

// Indices are drawn unbounded and reduced modulo the real counts, which keeps the arbitrary flat
// (no chain) and so lets fast-check shrink failures well.
const worldArb = fc
  .record({
    userCount: fc.integer({ min: 3, max: 6 }),
    teams: fc.array(
      fc.record({
        owner: fc.nat(),
        members: fc.array(fc.option(membershipArb, { nil: null }), { minLength: 6, maxLength: 6 }),
      }),
      { maxLength: 3 },
    ),
    projects: fc.array(
      fc.record({
        owner: fc.nat(),
        team: fc.option(fc.nat(), { nil: null }),
        visibility: fc.constantFrom(...VISIBILITIES),
        deleted: deletedArb,
      }),
      { maxLength: 4 },
    ),
    generations: fc.array(
      fc.record({ creator: fc.nat(), project: fc.option(fc.nat(), { nil: null }), deleted: deletedArb }),
      { maxLength: 5 },
    ),
  })
  .map((raw): World => {
    const users = Array.from({ length: raw.userCount }, (_, i) => `user_${i}`);
    const user = (i: number) => users[i % users.length]!;
    const teams = raw.teams.map((t, i) => {
      const members = new Map<string, MembershipFacts>();
      users.forEach((u, k) => {
        const m = t.members[k];
        if (m) members.set(u, m);
      });
      return { id: `team_${i}`, ownerId: user(t.owner), members };
    });
    const projects = raw.projects.map(
      (p, i): ProjectFacts => ({
        id: `project_${i}`,
        ownerId: user(p.owner),
        teamId: p.team === null || teams.length === 0 ? null : teams[p.team % teams.length]!.id,
        visibility: p.visibility,
        deleted: p.deleted,
      }),
    );
    const generations = raw.generations.map((g, i) => ({
      id: `generation_${i}`,
      creatorId: user(g.creator),
      projectId:
        g.project === null || projects.length === 0 ? null : projects[g.project % projects.length]!.id,
      deleted: g.deleted,
    }));
    return { users, teams, projects, generations };
  });

/** What the database loader does: one row per table, plus the subject's row in the team that matters. */
function load(world: World, subject: string, type: ResourceType, id: string): ResourceFacts {
  const membershipIn = (teamId: string | null): MembershipFacts | null => {
    if (teamId === null) return null;
    const m = world.teams.find((t) => t.id === teamId)?.members.get(subject);
    return m ? { role: m.role, active: m.active } : null;
  };
  if (type === 'team') {
    const team = world.teams.find((t) => t.id === id);
    if (!team) return { type, exists: false };
    const facts: TeamFacts = { id: team.id, ownerId: team.ownerId };
    return { type, exists: true, team: facts, membership: membershipIn(team.id) };
  }
  if (type === 'project') {
    const project = world.projects.find((p) => p.id === id);
    if (!project) return { type, exists: false };
    return { type, exists: true, project: { ...project }, membership: membershipIn(project.teamId) };
  }
  const row = world.generations.find((g) => g.id === id);
  if (!row) return { type, exists: false };
  const project =
    row.projectId === null ? null : (world.projects.find((p) => p.id === row.projectId) ?? null);
  return {
    type,
    exists: true,
    generation: { id: row.id, creatorId: row.creatorId, deleted: row.deleted },
    project: project && { ...project },
    membership: membershipIn(project?.teamId ?? null),
  };
}

const PROPERTY_RUNS = 10_000;

describe('decide agrees with the SPEC §3 reference', () => {
  it(`on every (subject, resource) pair of ${PROPERTY_RUNS} random worlds`, () => {
    const seen = new Set<string>();
    fc.assert(
      fc.property(worldArb, (world) => {
        const ids = [
          ...world.teams.map((t) => t.id),
          ...world.projects.map((p) => p.id),
          ...world.generations.map((g) => g.id),
          'missing_0',
        ];
        const types: ResourceType[] = ['generation', 'project', 'team'];
        const everyId = [...world.users, ...ids];
        for (const subject of world.users) {
          for (const type of types) {
            // Every id under every type: ids of the wrong kind name nothing, like unknown ids.
            for (const id of ids) {
              const facts = load(world, subject, type, id);
              const decision = decide(subject, facts);
              check(subject, facts, decision, everyId);
              seen.add(`rule:${decision.rule}`);
              seen.add(decision.accessMethod);
            }
          }
        }
      }),
      { numRuns: PROPERTY_RUNS },
    );
    // Guards the generator: a world distribution that never reached some rule would prove nothing.
    for (const rule of [1, 2, 3, 4, 5, 6])
      expect(seen, `rule ${rule} never reached`).toContain(`rule:${rule}`);
    for (const method of ['owner', 'project_owner', 'public', 'none', ...ROLES.map((r) => `team:${r}`)]) {
      expect(seen, `${method} never reached`).toContain(method);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Exhaustive: the facts space, up to renaming ids, is small enough to enumerate completely.
// ---------------------------------------------------------------------------------------------

const S = 'subject-id';
const OTHER = 'other-id';

function allMemberships(): (MembershipFacts | null)[] {
  return [null, ...ROLES.flatMap((role) => [true, false].map((active) => ({ role, active })))];
}

function allProjects(): ProjectFacts[] {
  const out: ProjectFacts[] = [];
  for (const deleted of [false, true])
    for (const ownerId of [S, OTHER])
      for (const teamId of [null, 'team-id'])
        for (const visibility of VISIBILITIES)
          out.push({ id: 'project-id', ownerId, teamId, visibility, deleted });
  return out;
}

function allFacts(): ResourceFacts[] {
  const out: ResourceFacts[] = [];
  for (const type of ['generation', 'project', 'team'] as const) out.push({ type, exists: false });
  // Memberships are combined even with team-less projects, which a correct loader never produces:
  // the policy must ignore them rather than grant anything.
  for (const membership of allMemberships()) {
    for (const ownerId of [S, OTHER]) {
      out.push({ type: 'team', exists: true, team: { id: 'team-id', ownerId }, membership });
    }
    for (const project of allProjects()) out.push({ type: 'project', exists: true, project, membership });
    for (const deleted of [false, true])
      for (const creatorId of [S, OTHER])
        for (const project of [null, ...allProjects()])
          out.push({
            type: 'generation',
            exists: true,
            generation: { id: 'generation-id', creatorId, deleted },
            project,
            membership,
          });
  }
  return out;
}

describe('decide over the whole facts space', () => {
  const everyFacts = allFacts();

  it('matches the reference, and the first applicable rule always grants the union', () => {
    expect(everyFacts.length).toBeGreaterThan(1_000);
    for (const facts of everyFacts)
      check(S, facts, decide(S, facts), [S, OTHER, 'team-id', 'project-id', 'generation-id']);
  });

  it('(c) returns only permissions of PERMISSIONS[type], in canonical order, frozen', () => {
    expect(PERMISSIONS).toEqual(SPEC_PERMISSIONS);
    for (const facts of everyFacts) {
      const decision = decide(S, facts);
      expect(wellFormed(facts.type, decision)).toBe(true);
      expect(Object.isFrozen(decision)).toBe(true);
      expect(Object.isFrozen(decision.permissions)).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// (b) Examples, one story per rule.
// ---------------------------------------------------------------------------------------------

const ALICE = 'alice-uuid';
const BOB = 'bob-uuid';
const CAROL = 'carol-uuid';

const project = (over: Partial<ProjectFacts> = {}): ProjectFacts => ({
  id: 'p-uuid',
  ownerId: ALICE,
  teamId: 't-uuid',
  visibility: 'team',
  deleted: false,
  ...over,
});
const member = (role: TeamRole, active = true): MembershipFacts => ({ role, active });
const genFacts = (
  over: Partial<GenerationFacts>,
  p: ProjectFacts | null,
  membership: MembershipFacts | null = null,
): ResourceFacts => ({
  type: 'generation',
  exists: true,
  generation: { id: 'g-uuid', creatorId: ALICE, deleted: false, ...over },
  project: p,
  membership,
});
const projFacts = (p: ProjectFacts, membership: MembershipFacts | null = null): ResourceFacts => ({
  type: 'project',
  exists: true,
  project: p,
  membership,
});
const teamFacts = (ownerId: string, membership: MembershipFacts | null = null): ResourceFacts => ({
  type: 'team',
  exists: true,
  team: { id: 't-uuid', ownerId },
  membership,
});
const summary = (d: Decision) => ({ permissions: d.permissions, accessMethod: d.accessMethod, rule: d.rule });

describe('rule 1: deleted resources are invisible to everyone', () => {
  it('a deleted generation is hidden even from its creator', () => {
    const d = decide(ALICE, genFacts({ deleted: true }, null));
    expect(summary(d)).toEqual({ permissions: [], accessMethod: 'none', rule: 1 });
    expect(d.reason).toBe('the generation is deleted');
  });

  it('the owner of a deleted project gets nothing on it or on its generations', () => {
    const p = project({ deleted: true, visibility: 'public' });
    expect(summary(decide(ALICE, projFacts(p, member('owner'))))).toEqual({
      permissions: [],
      accessMethod: 'none',
      rule: 1,
    });
    expect(summary(decide(ALICE, genFacts({ creatorId: BOB }, p)))).toEqual({
      permissions: [],
      accessMethod: 'none',
      rule: 1,
    });
    expect(decide(BOB, genFacts({ creatorId: BOB }, p)).permissions).toEqual([]);
  });
});

describe('rule 2: creators and owners hold everything', () => {
  it('the creator of a generation in someone else’s private project', () => {
    const d = decide(BOB, genFacts({ creatorId: BOB }, project({ visibility: 'private' })));
    expect(summary(d)).toEqual({ permissions: [...PERMISSIONS.generation], accessMethod: 'owner', rule: 2 });
    expect(d.reason).toBe('the subject created this generation');
  });

  it('the creator of a generation outside any project', () => {
    expect(decide(ALICE, genFacts({}, null)).accessMethod).toBe('owner');
  });

  it('the owner of a project, even a private one without a team', () => {
    const d = decide(ALICE, projFacts(project({ teamId: null, visibility: 'private' })));
    expect(summary(d)).toEqual({ permissions: [...PERMISSIONS.project], accessMethod: 'owner', rule: 2 });
  });

  it('the owner of a team, even with an inactive membership row', () => {
    const d = decide(ALICE, teamFacts(ALICE, member('viewer', false)));
    expect(summary(d)).toEqual({ permissions: ['view', 'manage', 'delete'], accessMethod: 'owner', rule: 2 });
  });
});

describe('rule 3: project owners hold everything on the project’s generations', () => {
  it('owner of the project, not creator of the generation', () => {
    const d = decide(ALICE, genFacts({ creatorId: BOB }, project({ visibility: 'private' })));
    expect(summary(d)).toEqual({
      permissions: [...PERMISSIONS.generation],
      accessMethod: 'project_owner',
      rule: 3,
    });
  });

  it('wins the accessMethod over the subject’s own team membership', () => {
    const d = decide(ALICE, genFacts({ creatorId: BOB }, project(), member('viewer')));
    expect(d.accessMethod).toBe('project_owner');
  });
});

describe('rule 4: active team members of team/public projects', () => {
  const bobsGeneration = (p: ProjectFacts, m: MembershipFacts | null) =>
    decide(CAROL, genFacts({ creatorId: BOB }, p, m));

  it('a team admin may delete a generation, a team viewer may not', () => {
    const admin = bobsGeneration(project(), member('admin'));
    expect(summary(admin)).toEqual({
      permissions: ['view', 'download', 'edit', 'delete'],
      accessMethod: 'team:admin',
      rule: 4,
    });
    expect(can(admin, 'delete')).toBe(true);

    const viewer = bobsGeneration(project(), member('viewer'));
    expect(summary(viewer)).toEqual({
      permissions: ['view', 'download'],
      accessMethod: 'team:viewer',
      rule: 4,
    });
    expect(can(viewer, 'delete')).toBe(false);
    expect(can(viewer, 'edit')).toBe(false);
  });

  it('a team editor may edit but not delete', () => {
    expect(bobsGeneration(project(), member('editor')).permissions).toEqual(['view', 'download', 'edit']);
  });

  it('the team’s owner (membership role owner) holds everything on a team-visibility project', () => {
    const d = decide(BOB, projFacts(project(), member('owner')));
    expect(summary(d)).toEqual({
      permissions: [...PERMISSIONS.project],
      accessMethod: 'team:owner',
      rule: 4,
    });
    expect(bobsGeneration(project(), member('owner')).permissions).toEqual([...PERMISSIONS.generation]);
  });

  it('project manage is for team owners and admins only', () => {
    expect(decide(BOB, projFacts(project(), member('admin'))).permissions).toEqual([
      'view',
      'edit',
      'delete',
      'manage',
    ]);
    expect(decide(BOB, projFacts(project(), member('editor'))).permissions).toEqual(['view', 'edit']);
    expect(decide(BOB, projFacts(project(), member('viewer'))).permissions).toEqual(['view']);
  });

  it('a removed (inactive) member is denied', () => {
    for (const role of ROLES) {
      expect(summary(decide(BOB, projFacts(project(), member(role, false))))).toEqual({
        permissions: [],
        accessMethod: 'none',
        rule: 6,
      });
      expect(isVisible(bobsGeneration(project(), member(role, false)))).toBe(false);
    }
  });

  it('an inactive member of a public project is just the public', () => {
    const d = decide(BOB, projFacts(project({ visibility: 'public' }), member('admin', false)));
    expect(summary(d)).toEqual({ permissions: ['view'], accessMethod: 'public', rule: 5 });
  });

  it('a private project hides from team members, whatever their role', () => {
    for (const role of ROLES) {
      const p = project({ visibility: 'private' });
      expect(isVisible(decide(BOB, projFacts(p, member(role))))).toBe(false);
      expect(bobsGeneration(p, member(role)).permissions).toEqual([]);
    }
  });

  it('a membership passed for a project without a team grants nothing', () => {
    const p = project({ teamId: null, visibility: 'team' });
    expect(decide(BOB, projFacts(p, member('owner'))).permissions).toEqual([]);
    expect(decide(BOB, genFacts({ creatorId: ALICE }, null, member('owner'))).permissions).toEqual([]);
  });

  it('team members: owners and admins manage, editors and viewers only view', () => {
    expect(summary(decide(BOB, teamFacts(ALICE, member('admin'))))).toEqual({
      permissions: ['view', 'manage'],
      accessMethod: 'team:admin',
      rule: 4,
    });
    expect(decide(BOB, teamFacts(ALICE, member('owner'))).permissions).toEqual(['view', 'manage', 'delete']);
    expect(decide(BOB, teamFacts(ALICE, member('editor'))).permissions).toEqual(['view']);
    expect(summary(decide(BOB, teamFacts(ALICE, member('viewer'))))).toEqual({
      permissions: ['view'],
      accessMethod: 'team:viewer',
      rule: 4,
    });
    expect(decide(BOB, teamFacts(ALICE, member('admin', false))).permissions).toEqual([]);
  });
});

describe('rule 5: public projects', () => {
  it('grants strangers view and download on generations, view on the project', () => {
    const p = project({ visibility: 'public', teamId: null });
    const g = decide(BOB, genFacts({}, p));
    expect(summary(g)).toEqual({ permissions: ['view', 'download'], accessMethod: 'public', rule: 5 });
    expect(g.reason).toBe("the generation's project is public");
    expect(summary(decide(BOB, projFacts(p)))).toEqual({
      permissions: ['view'],
      accessMethod: 'public',
      rule: 5,
    });
  });

  it('team members of a public project keep their role', () => {
    const d = decide(BOB, genFacts({}, project({ visibility: 'public' }), member('editor')));
    expect(d.accessMethod).toBe('team:editor');
    expect(d.permissions).toEqual(['view', 'download', 'edit']);
  });
});

describe('rule 6: otherwise nothing', () => {
  it('a stranger to a team-visibility project and to a project-less generation', () => {
    expect(summary(decide(BOB, projFacts(project())))).toEqual({
      permissions: [],
      accessMethod: 'none',
      rule: 6,
    });
    expect(decide(BOB, genFacts({}, null)).reason).toBe('no rule grants access');
    expect(isVisible(decide(BOB, teamFacts(ALICE)))).toBe(false);
  });

  it('an id that names nothing looks exactly like a resource the subject may not see', () => {
    for (const type of ['generation', 'project', 'team'] as const) {
      const missing = decide(BOB, { type, exists: false });
      expect(summary(missing)).toEqual({ permissions: [], accessMethod: 'none', rule: 6 });
      const hidden =
        type === 'generation'
          ? decide(BOB, genFacts({}, project()))
          : type === 'project'
            ? decide(BOB, projFacts(project()))
            : decide(BOB, teamFacts(ALICE));
      expect(missing).toEqual(hidden);
    }
  });
});
