import {
  type Compilable,
  type CompiledQuery,
  createQueryId,
  type Kysely,
  NoResultError,
  type QueryNode,
  type QueryResult,
} from 'kysely';

/**
 * Fixed-shape queries compiled ONCE. Kysely builds and compiles a query on every call (6 to 14 µs
 * for the queries of a request path, a few percent of the service's CPU under load); a prepared
 * query is built once with marker values in place of its parameters, compiled by the first Kysely
 * instance that runs it, and from then on only puts the call's values where the markers were. It
 * runs on whatever instance or transaction is passed, with the SQL text Kysely would have sent.
 *
 *   const byId = prepared((db: Kysely<DB>, p: { id: string }) =>
 *     db.selectFrom('users').select(['id', 'email']).where('id', '=', p.id));
 *   const user = await byId.executeTakeFirst(readDb, { id });
 *
 * The builder must use each param exactly as given, where a value goes: not transformed
 * (`p.name.trim()`), not inside a larger value (a JSON object, an array, a string), not in a test
 * that picks the shape (`p.x ? … : …`), not through `sql.raw` / `sql.lit`. The first compile
 * refuses the cases it can see: a param found in no parameter position, a marker inside a larger
 * value or in the SQL text, a Date constant (it would be frozen at its first value). Every other
 * value in the builder is a constant, kept as it was at the first compile. A param must not be
 * undefined at a call (Kysely drops undefined columns, which changes the shape): pass null.
 *
 * NOT for queries whose shape varies with the input: optional filters or SET columns, IN lists,
 * pagination cursors, optional clauses. Those stay ordinary Kysely. All executing instances are
 * assumed to share one dialect and no plugins (as the service's pools do).
 */

/** A marker is `\0velro-param:<name>\0`; the core alone is searched for (JSON escapes the NULs). */
const CORE = 'velro-param:';
const MARK = `\u0000${CORE}`;
const marker = (name: string) => `${MARK}${name}\u0000`;

interface Compiled {
  sql: string;
  query: CompiledQuery['query'];
  /** Per parameter position: the param's name, or undefined for a constant. */
  names: (string | undefined)[];
  constants: unknown[];
}

export interface PreparedQuery<D, P, O> {
  /** The rows (for a statement with RETURNING, or a SELECT). */
  execute(db: Kysely<D>, params: P): Promise<O[]>;
  executeTakeFirst(db: Kysely<D>, params: P): Promise<O | undefined>;
  /** Throws Kysely's NoResultError without a row, as the builder's own method does. */
  executeTakeFirstOrThrow(db: Kysely<D>, params: P): Promise<O>;
  /** The driver's result (rows and numAffectedRows): for statements without RETURNING. */
  run(db: Kysely<D>, params: P): Promise<QueryResult<O>>;
  /** The compiled SQL text (compiling on `db` first if needed): for tests and checks. */
  sql(db: Kysely<D>): string;
}

const holdsMarker = (value: unknown): boolean =>
  typeof value === 'string'
    ? value.toLowerCase().includes(CORE)
    : Array.isArray(value)
      ? value.some(holdsMarker)
      : value !== null && typeof value === 'object' && !ArrayBuffer.isView(value) && !(value instanceof Date)
        ? Object.values(value).some(holdsMarker)
        : false;

function compile<D, P, O>(db: Kysely<D>, build: (db: Kysely<D>, params: P) => Compilable<O>): Compiled {
  const used = new Set<string>();
  const params = new Proxy({} as Record<string, string>, {
    get(_, key) {
      if (typeof key !== 'string') return undefined;
      used.add(key);
      return marker(key);
    },
  }) as unknown as P;
  const compiled = build(db, params).compile();
  const fail = (why: string): never => {
    throw new Error(
      `prepared query: ${why}\n  in: ${compiled.sql.replaceAll(MARK, ':').replaceAll('\u0000', '')}`,
    );
  };
  if (compiled.sql.toLowerCase().includes(CORE))
    fail('a param is spliced into the SQL text (sql.raw / sql.lit?)');
  const names: (string | undefined)[] = [];
  const constants: unknown[] = [];
  const found = new Set<string>();
  compiled.parameters.forEach((value, i) => {
    const name =
      typeof value === 'string' && value.startsWith(MARK) ? value.slice(MARK.length, -1) : undefined;
    if (name !== undefined && used.has(name) && value === marker(name)) {
      names[i] = name;
      found.add(name);
    } else if (holdsMarker(value)) {
      fail(`parameter $${i + 1} holds a param inside a larger or transformed value`);
    } else if (value instanceof Date) {
      fail(`parameter $${i + 1} is a Date constant, fixed at the first compile: make it a param`);
    } else {
      names[i] = undefined;
      constants[i] = value;
    }
  });
  for (const name of used) if (!found.has(name)) fail(`param "${name}" is not where a value goes`);
  return { sql: compiled.sql, query: compiled.query, names, constants };
}

export function prepared<D, P extends object, O>(
  build: (db: Kysely<D>, params: P) => Compilable<O>,
): PreparedQuery<D, P, O> {
  let cached: Compiled | undefined;
  const compiledFor = (db: Kysely<D>) => {
    cached ??= compile(db, build);
    return cached;
  };
  const run = (db: Kysely<D>, params: P): Promise<QueryResult<O>> => {
    const { sql, query, names, constants } = compiledFor(db);
    const values = params as Record<string, unknown>;
    const parameters = new Array<unknown>(names.length);
    for (let i = 0; i < names.length; i++) {
      const name = names[i];
      const value = name === undefined ? constants[i] : values[name];
      if (value === undefined && name !== undefined) {
        throw new Error(`prepared query: param "${name}" is undefined (pass null for NULL)`);
      }
      parameters[i] = value;
    }
    return db.executeQuery<O>({ sql, query, parameters, queryId: createQueryId() });
  };
  return {
    run,
    execute: async (db, params) => (await run(db, params)).rows,
    executeTakeFirst: async (db, params) => (await run(db, params)).rows[0],
    async executeTakeFirstOrThrow(db, params) {
      const { rows } = await run(db, params);
      if (rows.length === 0) throw new NoResultError(compiledFor(db).query as QueryNode);
      return rows[0] as O;
    },
    sql: (db) => compiledFor(db).sql,
  };
}
