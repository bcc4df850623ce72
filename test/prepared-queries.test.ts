import { Kysely, NoResultError, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { prepared } from '../src/platform/db/prepared.js';
import type { DB } from '../src/platform/db/schema.js';
import { useTestDatabase } from './helpers/fixture.js';

const fixture = useTestDatabase();
let db: Kysely<DB>;

beforeAll(async () => {
  db = new Kysely<DB>({
    dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: fixture.db.url, max: 3 }) }),
  });
  await db
    .insertInto('users')
    .values(
      ['ada', 'bob', 'cy'].map((n) => ({
        email: `${n}@prepared.test`,
        password_hash: `hash-${n}`,
        display_name: n,
      })),
    )
    .execute();
  await db.updateTable('users').set({ role: 'admin' }).where('email', '=', 'bob@prepared.test').execute();
});

afterAll(async () => {
  await db?.destroy();
});

const emails = ['ada@prepared.test', 'bob@prepared.test', 'cy@prepared.test', 'nobody@prepared.test'];

describe('prepared queries', () => {
  it('a SELECT with a join returns what the same ordinary query returns, with the same SQL', async () => {
    const ordinary = (email: string, role: 'user' | 'admin') =>
      db
        .selectFrom('users as u')
        .leftJoin('sessions as s', 's.user_id', 'u.id')
        .select(['u.id', 'u.email', 'u.display_name', 'u.role', 'u.created_at', 's.id as session_id'])
        .where('u.email', '=', email)
        .where('u.role', '=', role)
        .where('u.is_active', '=', true);
    const build = vi.fn((d: Kysely<DB>, p: { email: string; role: 'user' | 'admin' }) =>
      d
        .selectFrom('users as u')
        .leftJoin('sessions as s', 's.user_id', 'u.id')
        .select(['u.id', 'u.email', 'u.display_name', 'u.role', 'u.created_at', 's.id as session_id'])
        .where('u.email', '=', p.email)
        .where('u.role', '=', p.role)
        .where('u.is_active', '=', true),
    );
    const query = prepared(build);
    for (const email of emails) {
      for (const role of ['user', 'admin'] as const) {
        expect(await query.execute(db, { email, role })).toEqual(await ordinary(email, role).execute());
        expect(await query.executeTakeFirst(db, { email, role })).toEqual(
          await ordinary(email, role).executeTakeFirst(),
        );
      }
    }
    expect(query.sql(db)).toBe(ordinary('x', 'user').compile().sql);
    // Built and compiled once, whatever the number of calls.
    expect(build).toHaveBeenCalledTimes(1);
    await expect(
      query.executeTakeFirstOrThrow(db, { email: 'nobody@prepared.test', role: 'user' }),
    ).rejects.toBeInstanceOf(NoResultError);
  });

  it('an INSERT … RETURNING and an UPDATE … RETURNING return what the ordinary ones return', async () => {
    const insert = prepared((d: Kysely<DB>, p: { email: string; name: string }) =>
      d
        .insertInto('users')
        .values({ email: p.email, password_hash: 'x', display_name: p.name })
        .onConflict((oc) => oc.column('email').doNothing())
        .returning(['email', 'display_name', 'role', 'credits_balance', 'is_active']),
    );
    const ordinaryInsert = (email: string, name: string) =>
      db
        .insertInto('users')
        .values({ email, password_hash: 'x', display_name: name })
        .onConflict((oc) => oc.column('email').doNothing())
        .returning(['email', 'display_name', 'role', 'credits_balance', 'is_active']);
    for (const n of [1, 2, 3]) {
      const a = await insert.executeTakeFirst(db, { email: `p${n}@prepared.test`, name: `P ${n}` });
      const b = await ordinaryInsert(`o${n}@prepared.test`, `P ${n}`).executeTakeFirst();
      expect(a).toEqual({ ...b, email: `p${n}@prepared.test` });
      // A conflict: no row, from both.
      expect(await insert.executeTakeFirst(db, { email: `p${n}@prepared.test`, name: 'again' })).toBe(
        await ordinaryInsert(`o${n}@prepared.test`, 'again').executeTakeFirst(),
      );
    }
    expect(insert.sql(db)).toBe(ordinaryInsert('x', 'y').compile().sql);

    const update = prepared((d: Kysely<DB>, p: { email: string; name: string }) =>
      d
        .updateTable('users')
        .set({ display_name: p.name, updated_at: sql`now()` })
        .where('email', '=', p.email)
        .returning(['email', 'display_name', 'role']),
    );
    const ordinaryUpdate = (email: string, name: string) =>
      db
        .updateTable('users')
        .set({ display_name: name, updated_at: sql`now()` })
        .where('email', '=', email)
        .returning(['email', 'display_name', 'role']);
    for (const email of emails) {
      const a = await update.execute(db, { email, name: `${email} (prepared)` });
      const b = await ordinaryUpdate(email, `${email} (prepared)`).execute();
      expect(a).toEqual(b);
    }
    expect(update.sql(db)).toBe(ordinaryUpdate('x', 'y').compile().sql);
    const { numAffectedRows } = await update.run(db, { email: 'ada@prepared.test', name: 'Ada' });
    expect(numAffectedRows).toBe(1n);
  });

  it('runs inside a transaction: a rollback undoes its write', async () => {
    const insert = prepared((d: Kysely<DB>, p: { email: string }) =>
      d.insertInto('users').values({ email: p.email, password_hash: 'x', display_name: 'T' }).returning('id'),
    );
    const count = prepared((d: Kysely<DB>, p: { email: string }) =>
      d
        .selectFrom('users')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('email', '=', p.email),
    );
    await expect(
      db.transaction().execute(async (trx) => {
        await insert.execute(trx, { email: 'rolled@prepared.test' });
        expect(Number((await count.executeTakeFirstOrThrow(trx, { email: 'rolled@prepared.test' })).n)).toBe(
          1,
        );
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    expect(Number((await count.executeTakeFirstOrThrow(db, { email: 'rolled@prepared.test' })).n)).toBe(0);
    await db.transaction().execute((trx) => insert.execute(trx, { email: 'kept@prepared.test' }));
    expect(Number((await count.executeTakeFirstOrThrow(db, { email: 'kept@prepared.test' })).n)).toBe(1);
  });

  it('keeps the constants of the query as they were built', async () => {
    const build = vi.fn((d: Kysely<DB>, p: { email: string }) =>
      d
        .selectFrom('users')
        .select(['email', sql<string>`${'constant'}::text`.as('tag')])
        .where('email', '=', p.email)
        .where('role', '=', 'admin')
        .limit(5),
    );
    const query = prepared(build);
    for (const email of emails) {
      const rows = await query.execute(db, { email });
      expect(rows).toEqual(email === 'bob@prepared.test' ? [{ email, tag: 'constant' }] : []);
    }
    expect(build).toHaveBeenCalledTimes(1);
  });

  describe('refuses a query whose shape could depend on its values, at the first compile', () => {
    const users = (d: Kysely<DB>) => d.selectFrom('users').select('id');

    it('a param found in no parameter position', async () => {
      const picked = prepared((d: Kysely<DB>, p: { admin: boolean; email: string }) =>
        p.admin ? users(d).where('role', '=', 'admin') : users(d).where('email', '=', p.email),
      );
      await expect(picked.execute(db, { admin: true, email: 'x' })).rejects.toThrow(
        'param "admin" is not where a value goes',
      );
      const raw = prepared((d: Kysely<DB>, p: { column: string }) =>
        users(d).where(sql.ref(p.column), '=', 'x'),
      );
      await expect(raw.execute(db, { column: 'email' })).rejects.toThrow(/spliced into the SQL text/);
      const lit = prepared((d: Kysely<DB>, p: { email: string }) =>
        users(d).where('email', '=', sql.lit(p.email)),
      );
      await expect(lit.execute(db, { email: 'x' })).rejects.toThrow(/spliced into the SQL text/);
    });

    it('a param inside a larger or transformed value', async () => {
      const like = prepared((d: Kysely<DB>, p: { email: string }) =>
        users(d).where('email', 'like', `${p.email}%`),
      );
      await expect(like.execute(db, { email: 'ada' })).rejects.toThrow(
        /inside a larger or transformed value/,
      );
      const lowered = prepared((d: Kysely<DB>, p: { email: string }) =>
        users(d).where('email', '=', p.email.toUpperCase()),
      );
      await expect(lowered.execute(db, { email: 'ada' })).rejects.toThrow(/inside a larger/);
      const array = prepared((d: Kysely<DB>, p: { a: string; b: string }) =>
        users(d).where(sql<boolean>`email = ANY(${[p.a, p.b]})`),
      );
      await expect(array.execute(db, { a: 'x', b: 'y' })).rejects.toThrow(/inside a larger/);
      const json = prepared((d: Kysely<DB>, p: { id: string }) =>
        d
          .insertInto('audit_events')
          .values({ action: 'x', details: JSON.stringify({ id: p.id }) })
          .returning('id'),
      );
      await expect(json.execute(db, { id: 'x' })).rejects.toThrow(/inside a larger/);
    });

    it('a Date constant, and an undefined param at a call', async () => {
      const dated = prepared((d: Kysely<DB>, p: { email: string }) =>
        users(d).where('email', '=', p.email).where('created_at', '<', new Date()),
      );
      await expect(dated.execute(db, { email: 'x' })).rejects.toThrow(/Date constant/);
      const byEmail = prepared((d: Kysely<DB>, p: { email: string | null }) =>
        users(d).where('email', '=', p.email),
      );
      await expect(byEmail.execute(db, {} as { email: string })).rejects.toThrow(
        'param "email" is undefined',
      );
      expect(await byEmail.execute(db, { email: null })).toEqual([]);
    });
  });
});
