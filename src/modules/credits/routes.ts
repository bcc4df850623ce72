import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import { Type } from 'typebox';
import type { ListReader } from '../../platform/db/read-routing.js';
import type { DB } from '../../platform/db/schema.js';
import { accessContext, minRevisionOf } from '../../platform/http/context.js';
import { decodeCursor, encodeCursor } from '../../platform/http/cursor.js';
import { AppError, badRequest } from '../../platform/http/errors.js';
import { errors, PageQuery, page, Uuid } from '../../platform/http/schemas.js';
import { recordAudit } from '../audit/service.js';
import { principalOf } from '../auth/authenticate.js';
import { applyCreditChange } from './service.js';

const Transaction = Type.Object({
  id: Type.Integer(),
  amount: Type.Integer(),
  balance_after: Type.Integer(),
  reason: Type.String({ enum: ['signup', 'generation_charge', 'generation_refund', 'admin_grant'] }),
  generation_id: Type.Union([Uuid, Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
});

const security = [{ bearerAuth: [] }];

export async function creditRoutes(
  fastify: FastifyInstance,
  opts: {
    writeDb: Kysely<DB>;
    readDb: Kysely<DB>;
    /** The ledger list's database (a replica unless the request carries a token); default readDb. */
    listDb?: ListReader;
  },
) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { writeDb, readDb } = opts;
  const listDb: ListReader = opts.listDb ?? (() => readDb);

  app.get(
    '/credits/balance',
    {
      config: { scope: 'any' },
      schema: {
        operationId: 'getCreditBalance',
        summary: 'My credit balance',
        tags: ['credits'],
        security,
        response: { 200: Type.Object({ credits_balance: Type.Integer() }), ...errors(401) },
      },
    },
    async (request) => {
      const row = await readDb
        .selectFrom('users')
        .select('credits_balance')
        .where('id', '=', principalOf(request).userId)
        .executeTakeFirstOrThrow();
      return { credits_balance: row.credits_balance };
    },
  );

  app.get(
    '/credits/transactions',
    {
      config: { scope: 'any' },
      schema: {
        operationId: 'listCreditTransactions',
        summary: 'My credit ledger, newest first',
        tags: ['credits'],
        security,
        querystring: Type.Object(PageQuery),
        response: { 200: page(Transaction), ...errors(400, 401) },
      },
    },
    async (request) => {
      const limit = request.query.limit ?? 20;
      let query = listDb(minRevisionOf(request))
        .selectFrom('credit_transactions')
        .select(['id', 'amount', 'balance_after', 'reason', 'generation_id', 'created_at'])
        .where('user_id', '=', principalOf(request).userId)
        .orderBy('id', 'desc')
        .limit(limit + 1);
      if (request.query.cursor) {
        const [before] = decodeCursor(request.query.cursor, 1);
        if (typeof before !== 'number' || !Number.isSafeInteger(before)) {
          throw badRequest('cursor is not valid', [
            { field: 'query.cursor', message: 'is not a cursor from this list' },
          ]);
        }
        query = query.where('id', '<', String(before));
      }
      const rows = await query.execute();
      const items = rows
        .slice(0, limit)
        .map((r) => ({ ...r, id: Number(r.id), created_at: r.created_at.toISOString() }));
      const last = rows.length > limit ? items[items.length - 1] : undefined;
      return { items, next_cursor: last ? encodeCursor([last.id]) : null };
    },
  );

  app.post(
    '/admin/credits/grant',
    {
      config: { scope: 'admin', admin: true },
      schema: {
        operationId: 'grantCredits',
        summary: 'Give a user credits (administrators)',
        tags: ['admin'],
        security,
        body: Type.Object(
          {
            user_id: Type.Optional(Uuid),
            email: Type.Optional(Type.String({ format: 'email', maxLength: 254 })),
            amount: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
            note: Type.Optional(Type.String({ maxLength: 500 })),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ user_id: Uuid, credits_balance: Type.Integer() }),
          ...errors(400, 401, 403, 404),
        },
      },
    },
    async (request) => {
      const { user_id, email, amount, note } = request.body;
      if ((user_id === undefined) === (email === undefined)) {
        throw badRequest('Give exactly one of user_id or email', [
          { field: 'body.user_id', message: 'or body.email is required' },
        ]);
      }
      const actor = principalOf(request).userId;
      const ctx = accessContext(request);
      return writeDb.transaction().execute(async (trx) => {
        const target = await trx
          .selectFrom('users')
          .select('id')
          .where(
            user_id ? sql<boolean>`id = ${user_id}` : sql<boolean>`email = ${(email ?? '').toLowerCase()}`,
          )
          .executeTakeFirst();
        if (!target) throw new AppError(404, 'user_not_found', 'No user with that id or email');
        const balance = (await applyCreditChange(trx, {
          userId: target.id,
          amount,
          reason: 'admin_grant',
        })) as number;
        await recordAudit(trx, {
          actorId: actor,
          action: 'credits.grant',
          resourceType: 'user',
          resourceId: target.id,
          requestId: ctx.requestId,
          details: { amount, ...(note ? { note } : {}) },
          ...(ctx.ip ? { ip: ctx.ip } : {}),
        });
        return { user_id: target.id, credits_balance: balance };
      });
    },
  );
}
