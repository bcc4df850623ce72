import { Type } from 'typebox';
import type { ResourceFacts } from './types.js';

/**
 * The facts `/authz/explain` shows, in the API's snake_case. Internally facts are camelCase
 * TypeScript objects; the answer is a copy with the API's names, so a new internal field never
 * leaks by accident (the response schema would drop it anyway).
 */
const Visibility = Type.Union([Type.Literal('private'), Type.Literal('team'), Type.Literal('public')]);
const Role = Type.Union([
  Type.Literal('owner'),
  Type.Literal('admin'),
  Type.Literal('editor'),
  Type.Literal('viewer'),
]);

const ProjectFacts = Type.Object(
  {
    id: Type.String(),
    owner_id: Type.String(),
    team_id: Type.Union([Type.String(), Type.Null()]),
    visibility: Visibility,
    deleted: Type.Boolean(),
  },
  { additionalProperties: false },
);
const MembershipFacts = Type.Union(
  [
    Type.Object(
      { role: Role, active: Type.Boolean({ description: 'An inactive member holds no team rights' }) },
      { additionalProperties: false },
    ),
    Type.Null(),
  ],
  { description: "The subject's membership in the team that matters (null: not a member)" },
);

export const ExplainFacts = Type.Union(
  [
    Type.Object(
      {
        type: Type.Literal('generation'),
        exists: Type.Literal(true),
        generation: Type.Object(
          { id: Type.String(), creator_id: Type.String(), deleted: Type.Boolean() },
          { additionalProperties: false },
        ),
        project: Type.Union([ProjectFacts, Type.Null()]),
        membership: MembershipFacts,
      },
      { additionalProperties: false },
    ),
    Type.Object(
      {
        type: Type.Literal('project'),
        exists: Type.Literal(true),
        project: ProjectFacts,
        membership: MembershipFacts,
      },
      { additionalProperties: false },
    ),
    Type.Object(
      {
        type: Type.Literal('team'),
        exists: Type.Literal(true),
        team: Type.Object({ id: Type.String(), owner_id: Type.String() }, { additionalProperties: false }),
        membership: MembershipFacts,
      },
      { additionalProperties: false },
    ),
    Type.Null(),
  ],
  {
    description:
      'The facts the rule was applied to; shown only when the subject can view the resource (no existence oracle)',
  },
);

type ProjectOut = {
  id: string;
  owner_id: string;
  team_id: string | null;
  visibility: 'private' | 'team' | 'public';
  deleted: boolean;
};

function projectOut(p: {
  id: string;
  ownerId: string;
  teamId: string | null;
  visibility: ProjectOut['visibility'];
  deleted: boolean;
}): ProjectOut {
  return { id: p.id, owner_id: p.ownerId, team_id: p.teamId, visibility: p.visibility, deleted: p.deleted };
}

/** The facts as the API names them; null for a resource that does not exist. */
export function explainFacts(facts: ResourceFacts) {
  if (!facts.exists) return null;
  const membership = facts.membership
    ? { role: facts.membership.role, active: facts.membership.active }
    : null;
  switch (facts.type) {
    case 'generation':
      return {
        type: facts.type,
        exists: true as const,
        generation: {
          id: facts.generation.id,
          creator_id: facts.generation.creatorId,
          deleted: facts.generation.deleted,
        },
        project: facts.project ? projectOut(facts.project) : null,
        membership,
      };
    case 'project':
      return { type: facts.type, exists: true as const, project: projectOut(facts.project), membership };
    case 'team':
      return {
        type: facts.type,
        exists: true as const,
        team: { id: facts.team.id, owner_id: facts.team.ownerId },
        membership,
      };
  }
}
