import {
  type Command,
  HELP_OPTION,
  integerOption,
  JSON_OPTION,
  requiredString,
  stringOption,
  usageError,
} from './output.js';

export const createAdmin: Command = {
  name: 'create-admin',
  summary: 'create an administrator, or promote an existing account',
  help: `usage: velro create-admin --email EMAIL [--password PASSWORD] [--display-name NAME] [--json]

Creates an account with the admin role (signup credits and ledger row as at registration), or gives
an existing account the admin role. Without --password a new account gets a random password, printed
once. An existing account keeps its password. Running it again changes nothing.

  --email EMAIL          the account (case-insensitive)
  --password PASSWORD    for a new account: 8 to 256 characters
  --display-name NAME    for a new account (default: the part of the email before @)
  --json                 print the result as JSON
`,
  options: {
    email: { type: 'string' },
    password: { type: 'string' },
    'display-name': { type: 'string' },
    ...JSON_OPTION,
    ...HELP_OPTION,
  },
  async run({ values, out }) {
    const { createOrPromoteAdmin } = await import('./accounts-work.js');
    const outcome = await createOrPromoteAdmin(
      {
        email: requiredString(values, 'email'),
        password: stringOption(values, 'password'),
        displayName: stringOption(values, 'display-name'),
      },
      out,
    );
    const lines: Record<typeof outcome.action, string> = {
      created: `created administrator ${outcome.user.email} (${outcome.user.id})`,
      promoted: `promoted ${outcome.user.email} (${outcome.user.id}) to administrator`,
      unchanged: `${outcome.user.email} (${outcome.user.id}) is already an administrator`,
    };
    const password = outcome.action === 'created' ? outcome.password : undefined;
    out.result(
      password
        ? `${lines[outcome.action]}\npassword: ${password}\n(shown once: store it now)`
        : lines[outcome.action],
      outcome,
    );
  },
};

export const grantCredits: Command = {
  name: 'grant-credits',
  summary: 'give a user credits (ledger reason admin_grant)',
  help: `usage: velro grant-credits --email EMAIL --amount N [--note TEXT] [--json]

Adds N credits to the account's balance with a ledger row (reason admin_grant) and an audit event,
in one transaction: the same rules as POST /api/v1/admin/credits/grant.

  --email EMAIL    the account (case-insensitive)
  --amount N       1 to 1,000,000
  --note TEXT      recorded in the audit event (at most 500 characters)
  --json           print the result as JSON
`,
  options: {
    email: { type: 'string' },
    amount: { type: 'string' },
    note: { type: 'string' },
    ...JSON_OPTION,
    ...HELP_OPTION,
  },
  async run({ values, out }) {
    const email = requiredString(values, 'email');
    const amount = integerOption(values, 'amount', 1, 1_000_000);
    if (amount === undefined) throw usageError('--amount is required');
    const note = stringOption(values, 'note');
    if (note !== undefined && note.length > 500) throw usageError('--note must be at most 500 characters');
    const { grantCreditsByEmail } = await import('./accounts-work.js');
    const result = await grantCreditsByEmail({ email, amount, note });
    out.result(
      `granted ${result.amount.toLocaleString('en-US')} credits to ${result.email}: balance ${result.credits_balance.toLocaleString('en-US')}`,
      result,
    );
  },
};
