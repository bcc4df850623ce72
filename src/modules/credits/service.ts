import { type Kysely, sql } from 'kysely';
import { prepared } from '../../platform/db/prepared.js';
import type { ListReader } from '../../platform/db/read-routing.js';
import type { CreditReason, DB } from '../../platform/db/schema.js';
import { type KeysetList, paginate, serialKeyset } from '../../platform/http/cursor.js';
import { AppError } from '../../platform/http/errors.js';
import { creditsMoved } from '../../platform/observability/metrics.js';
import { auditRequest, recordAudit } from '../audit/service.js';
import type { AccessContext } from '../authz/engine.js';
import type { Transaction } from './schemas.js';

// The statements of a balance move, compiled once (platform/db/prepared.ts). The UPDATE has two
// shapes (a debit also tests the balance): one prepared statement each.

const creditQuery = prepared((db: Kysely<DB>, p: { userId: string; amount: number }) =>
  db
    .updateTable('users')
    .set((eb) => ({ credits_balance: eb('credits_balance', '+', p.amount) }))
    .where('id', '=', p.userId)
    .returning('credits_balance'),
);

/** `cost` is the debit's size (-amount): the balance must cover it. */
const debitQuery = prepared((db: Kysely<DB>, p: { userId: string; amount: number; cost: number }) =>
  db
    .updateTable('users')
    .set((eb) => ({ credits_balance: eb('credits_balance', '+', p.amount) }))
    .where('id', '=', p.userId)
    .where('credits_balance', '>=', p.cost)
    .returning('credits_balance'),
);

const ledgerInsertQuery = prepared(
  (
    db: Kysely<DB>,
    p: {
      userId: string;
      amount: number;
      balanceAfter: number;
      reason: CreditReason;
      generationId: string | null;
    },
  ) =>
    db.insertInto('credit_transactions').values({
      user_id: p.userId,
      amount: p.amount,
      balance_after: p.balanceAfter,
      reason: p.reason,
      generation_id: p.generationId,
    }),
);

/**
 * Moves a user's balance and writes the matching ledger row, inside the caller's transaction. A
 * debit only happens when the balance covers it (`credits_balance >= cost` in the same UPDATE), so
 * no interleaving of requests can take a balance below zero. Returns the new balance, or null when
 * the balance was too low.
 */
export async function applyCreditChange(
  trx: Kysely<DB>,
  change: { userId: string; amount: number; reason: CreditReason; generationId?: string },
): Promise<number | null> {
  const updated =
    change.amount < 0
      ? await debitQuery.executeTakeFirst(trx, {
          userId: change.userId,
          amount: change.amount,
          cost: -change.amount,
        })
      : await creditQuery.executeTakeFirst(trx, { userId: change.userId, amount: change.amount });
  if (!updated) return null;
  // Counted before commit: a rolled-back move is still counted (an upper bound, like any counter).
  if (change.amount !== 0) creditsMoved.inc({ reason: change.reason }, Math.abs(change.amount));
  await ledgerInsertQuery.run(trx, {
    userId: change.userId,
    amount: change.amount,
    balanceAfter: updated.credits_balance,
    reason: change.reason,
    generationId: change.generationId ?? null,
  });
  return updated.credits_balance;
}

export interface CreditsDeps {
  writeDb: Kysely<DB>;
  readDb: Kysely<DB>;
  /** The ledger list's database (a replica unless the request carries a token); default readDb. */
  listDb?: ListReader;
}

/** The ledger pages newest first on its id alone (ids only grow); the cursor is the last entry's id. */
const ledgerList: KeysetList<{ id: string }, { id: number }> = {
  keyset: serialKeyset,
  columns: ['id'],
  keyOf: (row) => ({ id: Number(row.id) }),
};

/** Balances, the ledger and grants: every credits query of the API. */
export function createCreditsService(deps: CreditsDeps) {
  const { writeDb, readDb } = deps;
  const listDb: ListReader = deps.listDb ?? (() => readDb);

  return {
    async balance(userId: string): Promise<number> {
      const row = await readDb
        .selectFrom('users')
        .select('credits_balance')
        .where('id', '=', userId)
        .executeTakeFirstOrThrow();
      return row.credits_balance;
    },

    /** The ledger, newest first; the cursor is the last entry's id (ids only grow). */
    async ledger(
      userId: string,
      page: { limit: number; cursor?: string | undefined },
      minRevision?: number,
    ): Promise<{ items: Transaction[]; next_cursor: string | null }> {
      const query = listDb(minRevision)
        .selectFrom('credit_transactions')
        .select(['id', 'amount', 'balance_after', 'reason', 'generation_id', 'created_at'])
        .where('user_id', '=', userId);
      const { rows, next_cursor } = await paginate(query, ledgerList, page);
      const items = rows.map((r) => ({ ...r, id: Number(r.id), created_at: r.created_at.toISOString() }));
      return { items, next_cursor };
    },

    /** An administrator's grant to a user named by id or email, audited in the same transaction. */
    async grant(
      actorId: string,
      target: { userId?: string | undefined; email?: string | undefined },
      amount: number,
      note: string | undefined,
      ctx: Pick<AccessContext, 'requestId' | 'ip'>,
    ): Promise<{ user_id: string; credits_balance: number }> {
      return writeDb.transaction().execute(async (trx) => {
        const user = await trx
          .selectFrom('users')
          .select('id')
          .where(
            target.userId
              ? sql<boolean>`id = ${target.userId}`
              : sql<boolean>`email = ${(target.email ?? '').toLowerCase()}`,
          )
          .executeTakeFirst();
        if (!user) throw new AppError(404, 'user_not_found', 'No user with that id or email');
        const balance = (await applyCreditChange(trx, {
          userId: user.id,
          amount,
          reason: 'admin_grant',
        })) as number;
        await recordAudit(trx, {
          actorId,
          action: 'credits.grant',
          resourceType: 'user',
          resourceId: user.id,
          details: { amount, ...(note ? { note } : {}) },
          ...auditRequest(ctx),
        });
        return { user_id: user.id, credits_balance: balance };
      });
    },
  };
}

export type CreditsService = ReturnType<typeof createCreditsService>;
