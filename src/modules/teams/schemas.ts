import { type Static, Type } from 'typebox';
import { Uuid } from '../../platform/http/schemas.js';

/** The request and answer shapes of the team routes (validation, the OpenAPI document and the types). */

export const Role = Type.Union([
  Type.Literal('owner'),
  Type.Literal('admin'),
  Type.Literal('editor'),
  Type.Literal('viewer'),
]);
export const Name = Type.String({ minLength: 1, maxLength: 100, pattern: '\\S' });

export const Team = Type.Object({
  id: Uuid,
  name: Type.String(),
  owner_id: Uuid,
  created_at: Type.String({ format: 'date-time' }),
  my_role: Type.Union([Role, Type.Null()]),
  my_permissions: Type.Array(Type.String()),
});
export type Team = Static<typeof Team>;

export const Member = Type.Object({
  user_id: Uuid,
  email: Type.String(),
  display_name: Type.String(),
  role: Role,
  is_active: Type.Boolean(),
  joined_at: Type.String({ format: 'date-time' }),
});
export type Member = Static<typeof Member>;

/** A team in the list of mine: my role, not the permissions it gives. */
export const MyTeam = Type.Object({
  id: Uuid,
  name: Type.String(),
  owner_id: Uuid,
  created_at: Type.String(),
  my_role: Role,
});

export const TeamNameBody = Type.Object({ name: Name }, { additionalProperties: false });

export const TeamParams = Type.Object({ id: Uuid });
export const MemberParams = Type.Object({ id: Uuid, userId: Uuid });

export const AddMemberBody = Type.Object(
  {
    email: Type.Optional(Type.String({ format: 'email', maxLength: 254 })),
    user_id: Type.Optional(Uuid),
    role: Role,
  },
  { additionalProperties: false },
);
export const UpdateMemberBody = Type.Object(
  { role: Type.Optional(Role), is_active: Type.Optional(Type.Boolean()) },
  { additionalProperties: false, minProperties: 1 },
);
