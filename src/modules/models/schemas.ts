import { type Static, Type } from 'typebox';

/** The answer shapes of the model catalogue route (validation, the OpenAPI document and the types). */

export const ModelView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  kind: Type.String({ enum: ['image', 'video'] }),
  description: Type.String(),
  cost_credits: Type.Integer(),
  limits: Type.Object({
    min_width: Type.Integer(),
    max_width: Type.Integer(),
    min_height: Type.Integer(),
    max_height: Type.Integer(),
    max_steps: Type.Integer(),
  }),
  defaults: Type.Object({ width: Type.Integer(), height: Type.Integer(), steps: Type.Integer() }),
  supports_reference_image: Type.Boolean(),
});
export type ModelView = Static<typeof ModelView>;

export const ModelList = Type.Object({ items: Type.Array(ModelView) });
