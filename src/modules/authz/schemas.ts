import { Type } from 'typebox';
import { PageQuery, Uuid } from '../../platform/http/schemas.js';
import { ExplainFacts } from './explain.js';
import { PERMISSIONS } from './types.js';

/** The request and answer shapes of the authorization routes (validation and the OpenAPI document). */

export const ResourceTypeSchema = Type.Union([
  Type.Literal('generation'),
  Type.Literal('project'),
  Type.Literal('team'),
]);
const ALL_PERMISSIONS = [...new Set(Object.values(PERMISSIONS).flat())];
export const PermissionSchema = Type.String({ enum: ALL_PERMISSIONS });
export const Resource = Type.Object(
  { type: ResourceTypeSchema, id: Type.String({ minLength: 1, maxLength: 128 }) },
  { additionalProperties: false },
);
export const Subject = Type.Optional(
  Type.String({
    pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$',
    description:
      'Whom to ask about (uuid); omit it to ask about yourself. Naming anyone else needs an ' +
      'administrator’s service key with the authz:check scope (403 subject_forbidden otherwise).',
  }),
);
const checkFields = { resource: Resource, permission: PermissionSchema, subject: Subject };
/**
 * The documented examples ask about the caller (no `subject`), so that "Try it out" succeeds for
 * anyone: a generated example would fill in a random subject and get 403.
 */
const EXAMPLE_CHECK = {
  resource: { type: 'project', id: '0b5a3b43-6a1f-4f4e-9a57-3c1f2f0d7e11' },
  permission: 'view',
};
export const CheckBody = Type.Object(checkFields, { additionalProperties: false });
export const CheckBodyWithExample = Type.Object(checkFields, {
  additionalProperties: false,
  examples: [EXAMPLE_CHECK],
});
export const Answer = {
  allowed: Type.Boolean(),
  permissions: Type.Array(Type.String()),
  access_method: Type.String(),
};
export const CheckAnswer = Type.Object({ ...Answer, consistency_token: Type.String() });

export const CheckBulkBody = Type.Object(
  { checks: Type.Array(CheckBody, { minItems: 1, maxItems: 1000 }) },
  {
    additionalProperties: false,
    examples: [{ checks: [EXAMPLE_CHECK, { ...EXAMPLE_CHECK, permission: 'edit' }] }],
  },
);
export const CheckBulkAnswer = Type.Object({
  results: Type.Array(Type.Object(Answer)),
  consistency_token: Type.String(),
});

export const LookupBody = Type.Object(
  {
    resource_type: ResourceTypeSchema,
    permission: PermissionSchema,
    subject: Subject,
    ...PageQuery,
  },
  {
    additionalProperties: false,
    examples: [{ resource_type: 'project', permission: 'edit', limit: 20 }],
  },
);
export const LookupAnswer = Type.Object({
  items: Type.Array(Uuid),
  next_cursor: Type.Union([Type.String(), Type.Null()]),
});

export const ExplainAnswer = Type.Object({
  ...Answer,
  permission: Type.String(),
  rule: Type.Integer({ minimum: 1, maximum: 6 }),
  reason: Type.String(),
  facts: ExplainFacts,
  consistency_token: Type.String(),
});
