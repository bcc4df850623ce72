import { randomBytes, randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { Value } from 'typebox/value';
import { recordAudit } from '../modules/audit/service.js';
import { createPasswordHasher } from '../modules/auth/passwords.js';
import * as repo from '../modules/auth/repo.js';
import { Email, Password } from '../modules/auth/schemas.js';
import { normaliseEmail, type PublicUser, toPublicUser } from '../modules/auth/service.js';
import { applyCreditChange } from '../modules/credits/service.js';
import { userByEmail, withDatabase } from './database.js';
import { CliError, type Output, usageError } from './output.js';

/**
 * The database side of create-admin and grant-credits, loaded only when one of them runs (so that
 * --help and usage errors answer at once). The service functions do the work: repo.insertUser and
 * applyCreditChange as registration does, applyCreditChange and recordAudit as the admin route does.
 */

/** Who did it, in the audit log: the operator's shell, not a request. */
const cliContext = () => ({ requestId: `cli-${randomUUID()}`, details: { via: 'cli' } });

function checkAgainst(schema: typeof Email | typeof Password, value: string, option: string): void {
  const issue = [...Value.Errors(schema, value)][0];
  if (issue) throw usageError(`${option} ${issue.message}`);
}

export type AdminOutcome =
  | { action: 'created'; user: PublicUser; password?: string }
  | { action: 'promoted' | 'unchanged'; user: PublicUser };

export async function createOrPromoteAdmin(
  input: { email: string; password: string | undefined; displayName: string | undefined },
  out: Output,
): Promise<AdminOutcome> {
  const email = normaliseEmail(input.email);
  checkAgainst(Email, email, '--email');
  const given = input.password;
  if (given !== undefined) checkAgainst(Password, given, '--password');
  const displayName = input.displayName?.trim();

  return withDatabase(async ({ config, pools }) => {
    const db = pools.db.write_heavy;
    const existing = await repo.findCredentialsByEmail(db, email);
    if (existing) {
      if (given !== undefined) out.note('note: the account exists; its password is left unchanged');
      if (existing.role === 'admin') return { action: 'unchanged' as const, user: toPublicUser(existing) };
      const user = await db.transaction().execute(async (trx) => {
        // The users trigger bumps the authorization revision and tells every instance.
        await trx
          .updateTable('users')
          .set({ role: 'admin', updated_at: sql`now()` })
          .where('id', '=', existing.id)
          .execute();
        const { requestId, details } = cliContext();
        await recordAudit(trx, {
          actorId: null,
          action: 'user.promote_admin',
          resourceType: 'user',
          resourceId: existing.id,
          requestId,
          details,
        });
        return repo.findUserById(trx, existing.id);
      });
      return { action: 'promoted' as const, user: toPublicUser(user ?? existing) };
    }

    const password = given ?? randomBytes(18).toString('base64url');
    const hasher = createPasswordHasher({
      memoryKib: config.ARGON2_MEMORY_KIB,
      timeCost: config.ARGON2_TIME_COST,
    });
    const passwordHash = await hasher.hash(password);
    const user = await db.transaction().execute(async (trx) => {
      const created = await repo.insertUser(trx, {
        email,
        passwordHash,
        displayName: displayName || email.split('@')[0] || email,
      });
      if (!created) throw new CliError(`an account with the email ${email} was created meanwhile; run again`);
      await applyCreditChange(trx, { userId: created.id, amount: config.INITIAL_CREDITS, reason: 'signup' });
      await trx.updateTable('users').set({ role: 'admin' }).where('id', '=', created.id).execute();
      const { requestId, details } = cliContext();
      for (const action of ['auth.register', 'user.promote_admin']) {
        await recordAudit(trx, {
          actorId: null,
          action,
          resourceType: 'user',
          resourceId: created.id,
          requestId,
          details,
        });
      }
      return repo.findUserById(trx, created.id);
    });
    if (!user) throw new CliError('the new account could not be read back');
    return {
      action: 'created' as const,
      user: toPublicUser(user),
      ...(given === undefined ? { password } : {}),
    };
  });
}

export async function grantCreditsByEmail(input: {
  email: string;
  amount: number;
  note: string | undefined;
}): Promise<{ user_id: string; email: string; amount: number; credits_balance: number }> {
  const { amount, note } = input;
  return withDatabase(async ({ pools }) =>
    pools.db.write_heavy.transaction().execute(async (trx) => {
      const user = await userByEmail(trx, input.email);
      const balance = await applyCreditChange(trx, { userId: user.id, amount, reason: 'admin_grant' });
      if (balance === null) throw new CliError(`the balance of ${user.email} could not be changed`);
      const { requestId, details } = cliContext();
      await recordAudit(trx, {
        actorId: null,
        action: 'credits.grant',
        resourceType: 'user',
        resourceId: user.id,
        requestId,
        details: { ...details, amount, ...(note ? { note } : {}) },
      });
      return { user_id: user.id, email: user.email, amount, credits_balance: balance };
    }),
  );
}
