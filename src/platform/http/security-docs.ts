import type { Schema, TransformInput } from './consistency-docs.js';

type Requirement = Record<string, string[]>[];

/** No credentials at all. */
const NONE: Requirement = [];
/** Open, or `Authorization: Bearer <OPS_TOKEN>` when the operator has set one. */
const OPS: Requirement = [{}, { opsToken: [] }];
/** An access token or a service key (`vk_…`): both travel as a bearer token. */
const BEARER: Requirement = [{ bearerAuth: [] }];

/**
 * Who may call a route, as its policy (`config.public`, `config.ops`, otherwise authenticated) says.
 * The policy is what the server enforces, so the document says it from there rather than from a
 * `security` written next to each route's schema.
 */
export function securityOf(config: { public?: boolean; ops?: boolean } | undefined): Requirement {
  if (config?.public) return NONE;
  if (config?.ops) return OPS;
  return BEARER;
}

/**
 * The swagger `transform` step that writes each route's `security` from its policy. Only the
 * document changes; the route's own schema is left alone.
 */
export function documentSecurity({ schema, url, route }: TransformInput): { schema: Schema; url: string } {
  if (!schema || typeof schema !== 'object') return { schema: schema as Schema, url };
  const config = (route.config ?? {}) as { public?: boolean; ops?: boolean };
  return { schema: { ...(schema as Schema), security: securityOf(config) }, url };
}
