import { Type } from 'typebox';

/** The request and answer shapes of the operator routes (validation and the OpenAPI document). */

/** Per layer and for the bus and the fleet: its fields follow the cache's own counters. */
export const CacheStats = Type.Record(Type.String(), Type.Unknown());

export const WarmBody = Type.Optional(
  Type.Object(
    {
      limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000 })),
      refresh_views: Type.Optional(Type.Boolean()),
    },
    { additionalProperties: false },
  ),
);
export const WarmReport = Type.Object({
  subjects: Type.Integer(),
  generations: Type.Integer(),
  ms: Type.Number(),
  views_refreshed: Type.Boolean(),
});

export const Flushed = Type.Object({ flushed_at_revision: Type.Integer() });

export const FlagsBody = Type.Object(
  { cache_enabled: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);

export const Flags = Type.Object({
  cache_enabled: Type.Boolean({
    description:
      'Kill switch, for the whole fleet: off answers every check from the database on every instance, ' +
      'including ones started later. An instance configured with CACHE_ENABLED=false stays off either way.',
  }),
});

export const RuleView = Type.Object(
  {
    name: Type.String(),
    metric: Type.String({ description: 'what is judged, as the in-process tracker names it' }),
    comparison: Type.Union([Type.Literal('gt'), Type.Literal('lt')]),
    window: Type.String(),
    threshold: Type.Number(),
    for_seconds: Type.Integer({ description: 'how long the breach must last before the alert fires' }),
    min_samples: Type.Integer({ description: 'below this many samples in the window, no judgement' }),
    severity: Type.Union([Type.Literal('info'), Type.Literal('warning'), Type.Literal('critical')]),
    enabled: Type.Boolean(),
    summary: Type.Union([Type.String(), Type.Null()]),
    overridden: Type.Boolean({ description: 'an administrator changed this rule (see `defaults`)' }),
    defaults: Type.Object({
      threshold: Type.Number(),
      for_seconds: Type.Integer(),
      min_samples: Type.Integer(),
      severity: Type.String(),
    }),
    updated_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    updated_by: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  },
  { additionalProperties: false },
);
export const RuleList = Type.Object({ items: Type.Array(RuleView) }, { additionalProperties: false });
export const RuleChangeBody = Type.Object(
  {
    rules: Type.Array(
      Type.Object(
        {
          name: Type.String({ minLength: 1, maxLength: 100 }),
          threshold: Type.Optional(Type.Number({ minimum: 0 })),
          for_seconds: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400 })),
          min_samples: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000 })),
          severity: Type.Optional(
            Type.Union([Type.Literal('info'), Type.Literal('warning'), Type.Literal('critical')]),
          ),
          enabled: Type.Optional(Type.Boolean()),
          reset: Type.Optional(Type.Boolean({ description: "true: back to the code's values" })),
        },
        { additionalProperties: false },
      ),
      { minItems: 1, maxItems: 100 },
    ),
  },
  { additionalProperties: false },
);
