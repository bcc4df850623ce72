import type { RouteOptions } from 'fastify';

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * For the OpenAPI document: `returns` — a write that answers `Velro-Consistency-Token`;
     * `reads` — a public route that still honours it (every authenticated route does anyway).
     */
    consistencyToken?: 'returns' | 'reads';
  }
}

/** As the document spells it; HTTP header names are case-insensitive. */
const NAME = 'Velro-Consistency-Token';

const REQUEST_HEADER = {
  type: 'string',
  pattern: '^\\d{1,15}$',
  description:
    'A consistency token returned by an earlier write (any instance): the answer is computed from ' +
    'facts at least that fresh, so the write (a removed member, a revoked key, a deleted project…) is ' +
    'already in effect. Optional; a value that is not 1–15 digits is ignored.',
};

const RESPONSE_HEADER = {
  type: 'string',
  pattern: '^\\d{1,15}$',
  description:
    'The revision this write committed at. Send it back as the Velro-Consistency-Token request header ' +
    'on later requests, to any instance, to be answered from facts that include this write.',
};

export type Schema = Record<string, unknown>;
/** What the swagger `transform` is given of a route (its schema, its URL and its policy). */
export type TransformInput = { schema: unknown; url: string; route: Pick<RouteOptions, 'config'> };

/**
 * The swagger `transform`: documents the consistency token on every route that reads it (each
 * authenticated route: credentials and facts are checked at least that fresh; and the routes that
 * say `consistencyToken: 'reads'`) and on every write that returns it. Only the document changes:
 * the routes' own schemas, which validate and serialise, are left alone (no cost per request).
 */
export function documentConsistencyToken({ schema, url, route }: TransformInput): {
  schema: Schema;
  url: string;
} {
  if (!schema || typeof schema !== 'object') return { schema: schema as Schema, url };
  const config = (route.config ?? {}) as { public?: boolean; ops?: boolean; consistencyToken?: string };
  const reads = (!config.public && !config.ops) || config.consistencyToken !== undefined;
  const returns = config.consistencyToken === 'returns';
  if (!reads && !returns) return { schema: schema as Schema, url };
  const out: Schema = { ...(schema as Schema) };
  if (reads) {
    const headers = (out.headers ?? { type: 'object', properties: {} }) as Schema;
    out.headers = {
      ...headers,
      properties: { ...((headers.properties as Schema | undefined) ?? {}), [NAME]: REQUEST_HEADER },
    };
  }
  if (returns && out.response && typeof out.response === 'object') {
    const responses: Schema = {};
    for (const [status, response] of Object.entries(out.response as Schema)) {
      responses[status] = /^2\d\d$/.test(status) ? withHeader(response as Schema) : response;
    }
    out.response = responses;
  }
  return { schema: out, url };
}

function withHeader(response: Schema): Schema {
  // A named schema is referenced rather than copied, so that its name stays unique.
  const body = typeof response.$id === 'string' ? { $ref: response.$id } : response;
  return {
    ...body,
    headers: { ...((response.headers as Schema | undefined) ?? {}), [NAME]: RESPONSE_HEADER },
  };
}
