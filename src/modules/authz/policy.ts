/**
 * The one authorization decision of SPEC §3. Pure: facts in, decision out, no I/O.
 *
 * Every possible decision is built once at module load and frozen, so `decide` allocates nothing
 * and never sorts: it only picks one of a few dozen shared objects. Callers must treat decisions as
 * read-only (they are frozen, so a stray mutation throws instead of corrupting every later request).
 */
import {
  type AccessMethod,
  type Decision,
  type MembershipFacts,
  PERMISSIONS,
  type Permission,
  type ProjectFacts,
  type ResourceFacts,
  type ResourceType,
  type TeamRole,
} from './types.js';

type Rule = Decision['rule'];

const ROLES: readonly TeamRole[] = ['owner', 'admin', 'editor', 'viewer'];

function build<T extends ResourceType>(
  type: T,
  granted: readonly Permission<T>[],
  accessMethod: AccessMethod,
  rule: Rule,
  reason: string,
): Decision {
  // Filtering the canonical list (rather than trusting `granted`) fixes the order here, once.
  const canonical: readonly Permission[] = PERMISSIONS[type];
  const held = canonical.filter((p) => (granted as readonly Permission[]).includes(p));
  // The cast only drops `readonly` from the type so Decision keeps its published shape; the array
  // stays frozen at runtime.
  return Object.freeze({
    permissions: Object.freeze(held) as Permission[],
    accessMethod,
    rule,
    reason,
  });
}

function perRole(make: (role: TeamRole) => Decision): Readonly<Record<TeamRole, Decision>> {
  const table = {} as Record<TeamRole, Decision>;
  for (const role of ROLES) table[role] = make(role);
  return Object.freeze(table);
}

// One "nothing" decision per type, shared by rule 6 and by ids that name nothing: the two must be
// indistinguishable, or explain/audit output would become an existence oracle (SPEC §3).
const NONE: Readonly<Record<ResourceType, Decision>> = Object.freeze({
  generation: build('generation', [], 'none', 6, 'no rule grants access'),
  project: build('project', [], 'none', 6, 'no rule grants access'),
  team: build('team', [], 'none', 6, 'no rule grants access'),
});

const GENERATION_TEAM_GRANTS: Readonly<Record<TeamRole, readonly Permission<'generation'>[]>> = {
  viewer: ['view', 'download'],
  editor: ['view', 'download', 'edit'],
  admin: ['view', 'download', 'edit', 'delete'],
  owner: PERMISSIONS.generation,
};

const PROJECT_TEAM_GRANTS: Readonly<Record<TeamRole, readonly Permission<'project'>[]>> = {
  viewer: ['view'],
  editor: ['view', 'edit'],
  admin: ['view', 'edit', 'delete', 'manage'],
  owner: PERMISSIONS.project,
};

const TEAM_MEMBER_GRANTS: Readonly<Record<TeamRole, readonly Permission<'team'>[]>> = {
  viewer: ['view'],
  editor: ['view'],
  admin: ['view', 'manage'],
  owner: PERMISSIONS.team,
};

const GENERATION = Object.freeze({
  deleted: build('generation', [], 'none', 1, 'the generation is deleted'),
  projectDeleted: build('generation', [], 'none', 1, "the generation's project is deleted"),
  creator: build('generation', PERMISSIONS.generation, 'owner', 2, 'the subject created this generation'),
  projectOwner: build(
    'generation',
    PERMISSIONS.generation,
    'project_owner',
    3,
    "the subject owns the generation's project",
  ),
  team: perRole((role) =>
    build(
      'generation',
      GENERATION_TEAM_GRANTS[role],
      `team:${role}`,
      4,
      `the subject is an active ${role} of the project's team`,
    ),
  ),
  public: build('generation', ['view', 'download'], 'public', 5, "the generation's project is public"),
});

const PROJECT = Object.freeze({
  deleted: build('project', [], 'none', 1, 'the project is deleted'),
  owner: build('project', PERMISSIONS.project, 'owner', 2, 'the subject owns this project'),
  team: perRole((role) =>
    build(
      'project',
      PROJECT_TEAM_GRANTS[role],
      `team:${role}`,
      4,
      `the subject is an active ${role} of the project's team`,
    ),
  ),
  public: build('project', ['view'], 'public', 5, 'the project is public'),
});

const TEAM = Object.freeze({
  owner: build('team', PERMISSIONS.team, 'owner', 2, 'the subject owns this team'),
  member: perRole((role) =>
    build(
      'team',
      TEAM_MEMBER_GRANTS[role],
      `team:${role}`,
      4,
      `the subject is an active ${role} of this team`,
    ),
  ),
});

/**
 * The subject's role for rule 4 on a project-scoped resource, or null when rule 4 does not apply.
 * A membership is only trusted when the project actually has a team, so a loader bug that passes a
 * stray membership for a team-less project cannot grant anything.
 */
function projectTeamRole(project: ProjectFacts, membership: MembershipFacts | null): TeamRole | null {
  if (project.teamId === null || project.visibility === 'private') return null;
  if (!membership?.active) return null;
  return membership.role;
}

/**
 * Decides what `subjectId` may do with the resource described by `facts`. The first applicable rule
 * of SPEC §3 decides; its grants always include those of every later applicable rule, so the result
 * equals the union over all applicable rules (checked exhaustively in test/authz-policy.test.ts).
 */
export function decide(subjectId: string, facts: ResourceFacts): Decision {
  if (!facts.exists) return NONE[facts.type];

  switch (facts.type) {
    case 'generation': {
      const { generation, project } = facts;
      if (generation.deleted) return GENERATION.deleted;
      if (project?.deleted) return GENERATION.projectDeleted;
      if (generation.creatorId === subjectId) return GENERATION.creator;
      if (project === null) return NONE.generation;
      if (project.ownerId === subjectId) return GENERATION.projectOwner;
      const role = projectTeamRole(project, facts.membership);
      if (role !== null) return GENERATION.team[role];
      if (project.visibility === 'public') return GENERATION.public;
      return NONE.generation;
    }
    case 'project': {
      const { project } = facts;
      if (project.deleted) return PROJECT.deleted;
      if (project.ownerId === subjectId) return PROJECT.owner;
      const role = projectTeamRole(project, facts.membership);
      if (role !== null) return PROJECT.team[role];
      if (project.visibility === 'public') return PROJECT.public;
      return NONE.project;
    }
    case 'team': {
      if (facts.team.ownerId === subjectId) return TEAM.owner;
      const { membership } = facts;
      if (membership?.active) return TEAM.member[membership.role];
      return NONE.team;
    }
  }
}

export function can(decision: Decision, permission: Permission): boolean {
  return decision.permissions.includes(permission);
}

/** Whether the subject may know the resource exists at all (SPEC §3: otherwise answer 404). */
export function isVisible(decision: Decision): boolean {
  return can(decision, 'view');
}

const TEAM_GRANTS_BY_TYPE: Readonly<Record<ResourceType, Readonly<Record<TeamRole, readonly Permission[]>>>> =
  {
    generation: GENERATION_TEAM_GRANTS,
    project: PROJECT_TEAM_GRANTS,
    team: TEAM_MEMBER_GRANTS,
  };

const PUBLIC_GRANTS: Readonly<Record<ResourceType, readonly Permission[]>> = {
  generation: GENERATION.public.permissions,
  project: PROJECT.public.permissions,
  team: [],
};

/**
 * For lookups, which list what a subject can access in SQL: the team roles that grant
 * `permission` on `type` (rule 4), read from the same tables `decide` uses.
 */
export function rolesGranting(type: ResourceType, permission: Permission): TeamRole[] {
  return ROLES.filter((role) => TEAM_GRANTS_BY_TYPE[type][role].includes(permission));
}

/** For lookups: whether public visibility alone grants `permission` on `type` (rule 5). */
export function publicGrants(type: ResourceType, permission: Permission): boolean {
  return PUBLIC_GRANTS[type].includes(permission);
}
