import { type Static, Type } from 'typebox';
import type { CreditReason } from '../../platform/db/schema.js';
import { Uuid } from '../../platform/http/schemas.js';

/** The request and answer shapes of the credit routes (validation, the OpenAPI document and the types). */

const REASONS: CreditReason[] = ['signup', 'generation_charge', 'generation_refund', 'admin_grant'];

/** One line of a user's credit ledger. */
export const Transaction = Type.Object({
  id: Type.Integer(),
  amount: Type.Integer(),
  balance_after: Type.Integer(),
  reason: Type.Unsafe<CreditReason>({ type: 'string', enum: REASONS }),
  generation_id: Type.Union([Uuid, Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
});
export type Transaction = Static<typeof Transaction>;

export const Balance = Type.Object({ credits_balance: Type.Integer() });

export const GrantBody = Type.Object(
  {
    user_id: Type.Optional(Uuid),
    email: Type.Optional(Type.String({ format: 'email', maxLength: 254 })),
    amount: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
    note: Type.Optional(Type.String({ maxLength: 500 })),
  },
  { additionalProperties: false },
);
export const Granted = Type.Object({ user_id: Uuid, credits_balance: Type.Integer() });
