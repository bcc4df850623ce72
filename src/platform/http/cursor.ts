import { type RawBuilder, sql } from 'kysely';
import { badRequest } from './errors.js';

/**
 * Keyset cursors: the sort key of the last row, as opaque base64url JSON. A cursor only narrows a
 * query the caller is already allowed to run, so it needs no signature; a malformed one is a 400.
 */
export function encodeCursor(values: (string | number)[]): string {
  return Buffer.from(JSON.stringify(values), 'utf8').toString('base64url');
}

export function decodeCursor(cursor: string, arity: number): (string | number)[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    parsed = undefined;
  }
  if (
    !Array.isArray(parsed) ||
    parsed.length !== arity ||
    !parsed.every((v) => typeof v === 'string' || typeof v === 'number')
  ) {
    throw badRequest('cursor is not valid', [
      { field: 'query.cursor', message: 'is not a cursor from this list' },
    ]);
  }
  return parsed;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** PostgreSQL's text form of timestamptz, microseconds included (a JS Date would drop them). */
const PG_TIMESTAMP = /^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([+-]\d{2}(:?\d{2})?|Z)$/;

/** The common (created_at, id) keyset, newest first; `at` is the exact `created_at::text`. */
export function encodeTimeIdCursor(at: string, id: string): string {
  return encodeCursor([at, id]);
}

export function decodeTimeIdCursor(cursor: string): { at: string; id: string } {
  const [at, id] = decodeCursor(cursor, 2);
  if (typeof at !== 'string' || !PG_TIMESTAMP.test(at) || typeof id !== 'string' || !UUID.test(id)) {
    throw badRequest('cursor is not valid', [
      { field: 'query.cursor', message: 'is not a cursor from this list' },
    ]);
  }
  return { at, id };
}

/**
 * The keyset condition for a (created_at, id) ordering, newest first: rows strictly after the
 * cursor's row. `createdAt` and `id` are column references (`t.created_at`, `t.id`).
 */
export function afterCursor(
  cursor: string | undefined,
  createdAt: string,
  id: string,
): RawBuilder<boolean> | null {
  if (!cursor) return null;
  const after = decodeTimeIdCursor(cursor);
  return sql<boolean>`(${sql.ref(createdAt)}, ${sql.ref(id)}) < (${after.at}::timestamptz, ${after.id}::uuid)`;
}

/**
 * A page from rows fetched with `limit + 1` (the extra row says whether there is a next page) and
 * selected with `created_at::text AS cursor_at`.
 */
export function pageOf<R extends { cursor_at: string }>(
  rows: R[],
  limit: number,
  idOf: (row: R) => string,
): { rows: R[]; next_cursor: string | null } {
  const page = rows.slice(0, limit);
  const last = rows.length > limit ? page[page.length - 1] : undefined;
  return { rows: page, next_cursor: last ? encodeTimeIdCursor(last.cursor_at, idOf(last)) : null };
}
