import { type Static, Type } from 'typebox';

/** The answer shapes of the liveness and readiness routes (validation, the OpenAPI document and the types). */

export const Liveness = Type.Object({ status: Type.Literal('ok'), uptime_s: Type.Number() });

export const Check = Type.Object({
  ok: Type.Boolean(),
  latency_ms: Type.Number(),
  error: Type.Optional(Type.String()),
});
export type Check = Static<typeof Check>;

export const Readiness = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('not_ready')]),
  checks: Type.Record(Type.String(), Check),
});
