/**
 * The vocabulary of SPEC §3. Facts are what the database says; a decision is what policy.ts
 * concludes from them. Nothing here does I/O.
 */
export type ResourceType = 'project' | 'generation' | 'team';

export const PERMISSIONS = {
  project: ['view', 'edit', 'delete', 'manage'],
  generation: ['view', 'download', 'edit', 'delete'],
  // `delete` is our addition to SPEC §3: deleting a team is for its owners, not its admins.
  team: ['view', 'manage', 'delete'],
} as const;

export type Permission<T extends ResourceType = ResourceType> = (typeof PERMISSIONS)[T][number];

export type TeamRole = 'owner' | 'admin' | 'editor' | 'viewer';
export type Visibility = 'private' | 'team' | 'public';

/** The subject's membership row in one team (absent: not a member). */
export interface MembershipFacts {
  role: TeamRole;
  active: boolean;
}

export interface ProjectFacts {
  id: string;
  ownerId: string;
  teamId: string | null;
  visibility: Visibility;
  deleted: boolean;
}

export interface GenerationFacts {
  id: string;
  creatorId: string;
  deleted: boolean;
}

export interface TeamFacts {
  id: string;
  ownerId: string;
}

/**
 * Everything a decision needs about one resource, seen from one subject. `membership` is the
 * subject's membership in the team that matters: the project's team for projects and generations,
 * the team itself for teams. `exists: false` covers ids that name nothing.
 */
export type ResourceFacts =
  | {
      type: 'generation';
      exists: true;
      generation: GenerationFacts;
      project: ProjectFacts | null;
      membership: MembershipFacts | null;
    }
  | { type: 'project'; exists: true; project: ProjectFacts; membership: MembershipFacts | null }
  | { type: 'team'; exists: true; team: TeamFacts; membership: MembershipFacts | null }
  | { type: ResourceType; exists: false };

/** `owner`, `project_owner`, `team:<role>`, `public`, or `none`. */
export type AccessMethod = 'owner' | 'project_owner' | `team:${TeamRole}` | 'public' | 'none';

export interface Decision {
  /** Permissions held, in the canonical order of PERMISSIONS[type]. */
  permissions: Permission[];
  accessMethod: AccessMethod;
  /** Which rule of SPEC §3 decided (1–6), for /authz/explain. */
  rule: 1 | 2 | 3 | 4 | 5 | 6;
  /** Plain-language why, for /authz/explain and audit events. Never contains other users' data. */
  reason: string;
}
