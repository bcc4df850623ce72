import { type Static, Type } from 'typebox';
import { Uuid } from '../../platform/http/schemas.js';

/** The request and answer shapes of the project routes (validation, the OpenAPI document and the types). */

export const Visibility = Type.Union([Type.Literal('private'), Type.Literal('team'), Type.Literal('public')]);
export const Name = Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' });
export const Description = Type.String({ maxLength: 5000 });

export const Project = Type.Object({
  id: Uuid,
  owner_id: Uuid,
  team_id: Type.Union([Uuid, Type.Null()]),
  name: Type.String(),
  description: Type.String(),
  visibility: Visibility,
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  permissions: Type.Array(Type.String(), { description: 'What you may do with this project' }),
  access_method: Type.String({ description: 'Why: owner, team:<role> or public' }),
});
export type Project = Static<typeof Project>;

export const CreateProjectBody = Type.Object(
  {
    name: Name,
    description: Type.Optional(Description),
    visibility: Type.Optional(Visibility),
    team_id: Type.Optional(Type.Union([Uuid, Type.Null()])),
  },
  { additionalProperties: false },
);
export const UpdateProjectBody = Type.Object(
  {
    name: Type.Optional(Name),
    description: Type.Optional(Description),
    visibility: Type.Optional(Visibility),
    team_id: Type.Optional(Type.Union([Uuid, Type.Null()])),
  },
  { additionalProperties: false, minProperties: 1 },
);
