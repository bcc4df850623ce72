import type { Kysely } from 'kysely';
import type { CreditReason, DB } from '../../platform/db/schema.js';
import { creditsMoved } from '../../platform/observability/metrics.js';

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
  let query = trx
    .updateTable('users')
    .set((eb) => ({ credits_balance: eb('credits_balance', '+', change.amount) }))
    .where('id', '=', change.userId);
  if (change.amount < 0) query = query.where('credits_balance', '>=', -change.amount);
  const updated = await query.returning('credits_balance').executeTakeFirst();
  if (!updated) return null;
  // Counted before commit: a rolled-back move is still counted (an upper bound, like any counter).
  if (change.amount !== 0) creditsMoved.inc({ reason: change.reason }, Math.abs(change.amount));
  await trx
    .insertInto('credit_transactions')
    .values({
      user_id: change.userId,
      amount: change.amount,
      balance_after: updated.credits_balance,
      reason: change.reason,
      generation_id: change.generationId ?? null,
    })
    .execute();
  return updated.credits_balance;
}
