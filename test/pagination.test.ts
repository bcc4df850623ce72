import {
  DummyDriver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  sql,
} from 'kysely';
import { describe, expect, it } from 'vitest';
import type { DB } from '../src/platform/db/schema.js';
import {
  byTimeAndId,
  cutPage,
  encodeCursor,
  type Keyset,
  pageQuery,
  readCursor,
  serialKeyset,
  timeIdKeyset,
  timeSerialKeyset,
} from '../src/platform/http/cursor.js';
import { AppError } from '../src/platform/http/errors.js';

/**
 * The one keyset pagination every list uses (src/platform/http/cursor.ts), without a database:
 * cursors keep their encoding, a forged one is a 400 naming query.cursor, and the page query is
 * the statement the lists ran before they shared it.
 */
const db = new Kysely<DB>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (k) => new PostgresIntrospector(k),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

const AT = '2026-12-07 08:01:02.123456+00';
const ID = '0b8f7c52-4d7e-4c8e-9a51-3f0a2b6c1d9e';

function rejects<K>(keyset: Keyset<K>, cursor: string) {
  let thrown: unknown;
  try {
    readCursor(keyset, cursor);
  } catch (error) {
    thrown = error;
  }
  expect(thrown, cursor).toBeInstanceOf(AppError);
  const error = thrown as AppError;
  expect(error.statusCode).toBe(400);
  expect(error.code).toBe('validation_error');
  expect(error.details).toEqual([{ field: 'query.cursor', message: 'is not a cursor from this list' }]);
}

describe('cursors', () => {
  it('decode cursors written before the lists shared one helper (same encoding)', () => {
    // base64url of the JSON array of the sort key, exactly as issued before.
    const timeId = Buffer.from(JSON.stringify([AT, ID])).toString('base64url');
    expect(readCursor(timeIdKeyset, timeId)).toEqual({ at: AT, id: ID });
    const audit = Buffer.from(JSON.stringify([AT, 42])).toString('base64url');
    expect(readCursor(timeSerialKeyset, audit)).toEqual({ at: AT, id: 42 });
    const ledger = Buffer.from(JSON.stringify([7])).toString('base64url');
    expect(readCursor(serialKeyset, ledger)).toEqual({ id: 7 });
    expect(encodeCursor([AT, ID])).toBe(timeId);
  });

  it('answer 400 on query.cursor for anything else', () => {
    const garbage = [
      '%%%',
      'W10',
      'not a cursor',
      encodeCursor([]),
      Buffer.from('{"a":1}').toString('base64url'),
    ];
    for (const cursor of garbage) {
      rejects(timeIdKeyset, cursor);
      rejects(timeSerialKeyset, cursor);
      rejects(serialKeyset, cursor);
    }
    for (const values of [
      ['yesterday', ID],
      ['2026-02-31 00:00:00+00', ID],
      ['2026-12-07 24:00:00+00', ID],
      ['2026-12-07 10:00:00+16', ID],
      [AT, 'not-a-uuid'],
      [AT, 5],
      [AT],
      [AT, ID, ID],
    ]) {
      rejects(timeIdKeyset, encodeCursor(values));
    }
    for (const values of [
      [AT, 'x'],
      [AT, 1.5],
      [AT, 0],
      [AT, ID],
      [AT],
      [AT, 1, 2],
      ['2026-02-31 00:00:00+00', 5],
    ]) {
      rejects(timeSerialKeyset, encodeCursor(values));
    }
    for (const values of [['7'], [1.5], [0], [-3], [2 ** 53], [1, 2]]) {
      rejects(serialKeyset, encodeCursor(values));
    }
  });
});

describe('pageQuery', () => {
  it('orders newest first, keeps the rows after the cursor, fetches one more than the page', () => {
    const list = byTimeAndId('t.created_at', 't.id', (r: { cursor_at: string; id: string }) => r.id);
    const base = db
      .selectFrom('teams as t')
      .select(['t.id', sql<string>`t.created_at::text`.as('cursor_at')])
      .where('t.name', '=', 'x');
    const first = pageQuery(base, list, { limit: 20 }).compile();
    expect(first.sql).toBe(
      'select "t"."id", t.created_at::text as "cursor_at" from "teams" as "t" where "t"."name" = $1 order by "t"."created_at" desc, "t"."id" desc limit $2',
    );
    expect(first.parameters).toEqual(['x', 21]);
    const next = pageQuery(base, list, { limit: 20, cursor: encodeCursor([AT, ID]) }).compile();
    expect(next.sql).toBe(
      'select "t"."id", t.created_at::text as "cursor_at" from "teams" as "t" where "t"."name" = $1 and ("t"."created_at", "t"."id") < ($2::timestamptz, $3::uuid) order by "t"."created_at" desc, "t"."id" desc limit $4',
    );
    expect(next.parameters).toEqual(['x', AT, ID, 21]);
  });

  it('compares the ledger id as the text of a bigint', () => {
    const list = {
      keyset: serialKeyset,
      columns: ['id'],
      keyOf: (r: { id: string }) => ({ id: Number(r.id) }),
    };
    const base = db.selectFrom('credit_transactions').select(['id']);
    const next = pageQuery(base, list, { limit: 5, cursor: encodeCursor([9]) }).compile();
    expect(next.sql).toBe(
      'select "id" from "credit_transactions" where "id" < $1 order by "id" desc limit $2',
    );
    expect(next.parameters).toEqual(['9', 6]);
  });

  it('refuses a forged cursor before any statement runs', () => {
    const list = byTimeAndId('created_at', 'id', (r: { cursor_at: string; id: string }) => r.id);
    const base = db.selectFrom('service_keys').select(['id', sql<string>`created_at::text`.as('cursor_at')]);
    expect(() => pageQuery(base, list, { limit: 5, cursor: 'W10' })).toThrow(AppError);
  });
});

describe('cutPage', () => {
  const list = byTimeAndId<{ cursor_at: string; id: string }>('created_at', 'id', (r) => r.id);
  const rows = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ cursor_at: `2026-12-07 08:00:0${9 - i}+00`, id: `id-${i}` }));

  it('cuts limit + 1 rows to the page and names its last row as the next cursor', () => {
    const page = cutPage(rows(4), 3, list);
    expect(page.rows.map((r) => r.id)).toEqual(['id-0', 'id-1', 'id-2']);
    expect(JSON.parse(Buffer.from(page.next_cursor as string, 'base64url').toString())).toEqual([
      '2026-12-07 08:00:07+00',
      'id-2',
    ]);
  });

  it('has no next cursor on the last page', () => {
    expect(cutPage(rows(3), 3, list)).toEqual({ rows: rows(3), next_cursor: null });
    expect(cutPage([], 3, list)).toEqual({ rows: [], next_cursor: null });
  });
});
