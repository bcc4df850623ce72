import { type RawBuilder, type SelectQueryBuilder, sql } from 'kysely';
import { badRequest } from './errors.js';

/**
 * Keyset pagination, the one way every list pages: newest first on a sort key, `limit + 1` rows
 * fetched (the extra row says whether there is a next page), and a cursor that is the sort key of
 * the page's last row as opaque base64url JSON. A cursor only narrows a query the caller is
 * already allowed to run, so it needs no signature; a malformed or tampered one is a 400 naming
 * `query.cursor`, never a database error.
 */

export interface PageRequest {
  limit: number;
  cursor?: string | undefined;
}

/** A list's sort key: what a cursor of it holds, and which rows come after it. */
export interface Keyset<K> {
  /** The key a cursor's values stand for, or undefined when they are not one (a forged cursor). */
  read(values: (string | number)[]): K | undefined;
  write(key: K): (string | number)[];
  /** Rows strictly after the key, newest first; `columns` are the sort columns, most significant first. */
  after(key: K, columns: readonly string[]): RawBuilder<boolean>;
}

const invalidCursor = () =>
  badRequest('cursor is not valid', [{ field: 'query.cursor', message: 'is not a cursor from this list' }]);

export function encodeCursor(values: (string | number)[]): string {
  return Buffer.from(JSON.stringify(values), 'utf8').toString('base64url');
}

/** A cursor's key, or a 400 when the cursor is not one of this keyset's. */
export function readCursor<K>(keyset: Keyset<K>, cursor: string): K {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    parsed = undefined;
  }
  const key =
    Array.isArray(parsed) && parsed.every((v) => typeof v === 'string' || typeof v === 'number')
      ? keyset.read(parsed)
      : undefined;
  if (key === undefined) throw invalidCursor();
  return key;
}

export function writeCursor<K>(keyset: Keyset<K>, key: K): string {
  return encodeCursor(keyset.write(key));
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** PostgreSQL's text form of timestamptz, microseconds included (a JS Date would drop them). */
const PG_TIMESTAMP =
  /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?([+-]\d{2}(:?\d{2})?|Z)$/;

/** A timestamp PostgreSQL will accept: a forged "2026-02-31" must be a 400, not a database error. */
function isTimestamp(value: unknown): value is string {
  const m = typeof value === 'string' ? PG_TIMESTAMP.exec(value) : null;
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  // PostgreSQL refuses zone offsets beyond 15 hours.
  if (Number(/^[+-](\d{2})/.exec(m[8] ?? '')?.[1] ?? 0) > 15) return false;
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  return (
    year >= 1 &&
    month >= 1 &&
    month <= 12 &&
    day >= 1 &&
    day <= daysInMonth &&
    hour < 24 &&
    minute < 60 &&
    second < 60
  );
}

/** A bigserial id as JSON writes it. */
function isSerial(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 1;
}

export interface TimeIdKey {
  /** The row's time exactly as PostgreSQL writes it (`created_at::text`), microseconds included. */
  at: string;
  id: string;
}

/** (time, uuid): teams, members, projects, generations, service keys. */
export const timeIdKeyset: Keyset<TimeIdKey> = {
  read: (values) => {
    const [at, id] = values;
    return values.length === 2 && isTimestamp(at) && typeof id === 'string' && UUID.test(id)
      ? { at, id }
      : undefined;
  },
  write: ({ at, id }) => [at, id],
  after: ({ at, id }, [atColumn, idColumn]) =>
    sql<boolean>`(${sql.ref(atColumn as string)}, ${sql.ref(idColumn as string)}) < (${at}::timestamptz, ${id}::uuid)`,
};

/** (time, bigserial): the audit log. */
export const timeSerialKeyset: Keyset<{ at: string; id: number }> = {
  read: (values) => {
    const [at, id] = values;
    return values.length === 2 && isTimestamp(at) && isSerial(id) ? { at, id } : undefined;
  },
  write: ({ at, id }) => [at, id],
  after: ({ at, id }, [atColumn, idColumn]) =>
    sql<boolean>`(${sql.ref(atColumn as string)}, ${sql.ref(idColumn as string)}) < (${at}::timestamptz, ${id}::bigint)`,
};

/** (bigserial) alone, for a list whose ids only grow: the credit ledger. */
export const serialKeyset: Keyset<{ id: number }> = {
  read: (values) => {
    const [id] = values;
    return values.length === 1 && isSerial(id) ? { id } : undefined;
  },
  write: ({ id }) => [id],
  after: ({ id }, [idColumn]) => sql<boolean>`${sql.ref(idColumn as string)} < ${String(id)}`,
};

/** How one list pages: its keyset, the sort columns in the query, and the key of a fetched row. */
export interface KeysetList<R, K> {
  keyset: Keyset<K>;
  columns: readonly string[];
  keyOf: (row: R) => K;
}

/**
 * The common (created_at, id) list, newest first: `at` and `id` are the column references
 * (`t.created_at`, `t.id`), and the rows select `<at>::text AS cursor_at`.
 */
export function byTimeAndId<R extends { cursor_at: string }>(
  at: string,
  id: string,
  idOf: (row: R) => string,
): KeysetList<R, TimeIdKey> {
  return { keyset: timeIdKeyset, columns: [at, id], keyOf: (row) => ({ at: row.cursor_at, id: idOf(row) }) };
}

/**
 * A list query made a page query: ordered newest first on the list's columns, the rows after the
 * cursor (a 400 for a cursor that is not one of this list's), `limit + 1` of them.
 */
export function pageQuery<DB, TB extends keyof DB, O, K>(
  query: SelectQueryBuilder<DB, TB, O>,
  list: KeysetList<O, K>,
  page: PageRequest,
): SelectQueryBuilder<DB, TB, O> {
  let paged = query;
  for (const column of list.columns) paged = paged.orderBy(sql.ref(column), 'desc');
  paged = paged.limit(page.limit + 1);
  if (page.cursor) paged = paged.where(list.keyset.after(readCursor(list.keyset, page.cursor), list.columns));
  return paged;
}

/** The page from rows fetched with `limit + 1`, and the cursor of the next one (null on the last page). */
export function cutPage<R, K>(
  rows: R[],
  limit: number,
  list: Pick<KeysetList<R, K>, 'keyset' | 'keyOf'>,
): { rows: R[]; next_cursor: string | null } {
  const page = rows.slice(0, limit);
  const last = rows.length > limit ? page[page.length - 1] : undefined;
  return { rows: page, next_cursor: last ? writeCursor(list.keyset, list.keyOf(last)) : null };
}

/** One page of a list: pageQuery, run, cutPage. */
export async function paginate<DB, TB extends keyof DB, O, K>(
  query: SelectQueryBuilder<DB, TB, O>,
  list: KeysetList<O, K>,
  page: PageRequest,
): Promise<{ rows: O[]; next_cursor: string | null }> {
  return cutPage((await pageQuery(query, list, page).execute()) as O[], page.limit, list);
}

// The (created_at, id) keyset by its parts, for the query that cannot be one Kysely select (the
// authorization lookup's union).

export function encodeTimeIdCursor(at: string, id: string): string {
  return writeCursor(timeIdKeyset, { at, id });
}

export function decodeTimeIdCursor(cursor: string): TimeIdKey {
  return readCursor(timeIdKeyset, cursor);
}
