import { Type } from 'typebox';

/** The request and answer shapes of the batch route (validation and the OpenAPI document). */

export const MAX_REQUESTS = 20;

export const SubRequest = Type.Object(
  {
    method: Type.Literal('GET', { description: 'Only GET: a batch reads, it never writes' }),
    url: Type.String({ minLength: 1, maxLength: 2048, pattern: '^/api/v1/' }),
  },
  { additionalProperties: false },
);

export const BatchBody = Type.Object(
  { requests: Type.Array(SubRequest, { minItems: 1, maxItems: MAX_REQUESTS }) },
  { additionalProperties: false },
);

export const BatchAnswer = Type.Object({
  responses: Type.Array(
    Type.Object({
      status: Type.Integer(),
      headers: Type.Record(Type.String(), Type.String()),
      body: Type.Unknown(),
    }),
  ),
});
