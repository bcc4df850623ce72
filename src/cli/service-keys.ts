import { randomUUID } from 'node:crypto';
import type { ServiceKeyView } from '../modules/service-keys/service.js';
import { SCOPES, type Scope } from '../platform/http/principal.js';
import type { CliDatabase } from './database.js';
import {
  type Command,
  HELP_OPTION,
  JSON_OPTION,
  requiredString,
  stringOption,
  usageError,
} from './output.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function serviceFor(db: CliDatabase) {
  const { createServiceKeyService } = await import('../modules/service-keys/service.js');
  return createServiceKeyService({
    writeDb: db.pools.db.write_heavy,
    readDb: db.pools.db.write_heavy,
    writePool: db.pools.pg.write_heavy,
    onBackgroundError: () => undefined,
  });
}

const client = () => ({ ip: null, userAgent: 'velro-cli', requestId: `cli-${randomUUID()}` });

function parseScopes(raw: string): Scope[] {
  const scopes = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (scopes.length === 0) throw usageError('--scopes needs at least one scope');
  const known = new Set<string>(SCOPES);
  const unknown = scopes.filter((s) => !known.has(s));
  if (unknown.length > 0) {
    throw usageError(`unknown scope ${unknown.join(', ')}; the scopes are: ${SCOPES.join(', ')}`);
  }
  return scopes as Scope[];
}

function describeKey(key: ServiceKeyView): string {
  const state = key.revoked_at
    ? `revoked ${key.revoked_at}`
    : key.expires_at && Date.parse(key.expires_at) <= Date.now()
      ? `expired ${key.expires_at}`
      : key.expires_at
        ? `expires ${key.expires_at}`
        : 'active';
  return `${key.id}  ${key.prefix}…  ${key.name}  [${key.scopes.join(' ')}]  ${state}  last used ${key.last_used_at ?? 'never'}`;
}

export const serviceKey: Command = {
  name: 'service-key',
  summary: "create, list or revoke a user's service keys",
  help: `usage: velro service-key create --email EMAIL --name NAME --scopes S1,S2 [--expires-at ISO-8601] [--json]
       velro service-key list   --email EMAIL [--json]
       velro service-key revoke --email EMAIL --id KEY_ID [--json]

Service keys act as their user, limited to their scopes. create prints the secret (vk_…) once: it
is stored only as a hash. revoke takes effect on every instance from the next request on.

  --email EMAIL        the owner of the keys (case-insensitive)
  --name NAME          create: 1 to 100 characters, to tell keys apart
  --scopes LIST        create: comma-separated, from ${SCOPES.join(', ')}
  --expires-at TIME    create: when the key stops working (ISO 8601, in the future)
  --id KEY_ID          revoke: the key's id (from list)
  --json               print the result as JSON
`,
  options: {
    email: { type: 'string' },
    name: { type: 'string' },
    scopes: { type: 'string' },
    'expires-at': { type: 'string' },
    id: { type: 'string' },
    ...JSON_OPTION,
    ...HELP_OPTION,
  },
  async run({ values, positionals, out }) {
    const action = positionals[0];
    if (positionals.length > 1) throw usageError(`unexpected argument: ${positionals[1]}`);
    if (action !== 'create' && action !== 'list' && action !== 'revoke') {
      throw usageError(
        action
          ? `unknown service-key action: ${action} (create, list or revoke)`
          : 'say create, list or revoke',
      );
    }
    const email = requiredString(values, 'email');
    const { userByEmail, withDatabase } = await import('./database.js');

    if (action === 'create') {
      const name = requiredString(values, 'name');
      if (name.length > 100) throw usageError('--name must be at most 100 characters');
      const scopes = parseScopes(requiredString(values, 'scopes'));
      const expiresAt = stringOption(values, 'expires-at');
      if (expiresAt !== undefined && Number.isNaN(Date.parse(expiresAt))) {
        throw usageError(`--expires-at is not a date and time: ${expiresAt}`);
      }
      const created = await withDatabase(async (db) => {
        const user = await userByEmail(db.pools.db.write_heavy, email);
        const key = await (await serviceFor(db)).create(
          user.id,
          { name, scopes, ...(expiresAt ? { expires_at: new Date(expiresAt).toISOString() } : {}) },
          client(),
        );
        return { ...key, user_id: user.id, email: user.email };
      });
      if (!out.json) out.note('The secret below is shown once: store it now.');
      out.result(`created service key ${created.id} for ${created.email}\n${created.key}`, created);
      return;
    }

    if (action === 'list') {
      const listed = await withDatabase(async (db) => {
        const user = await userByEmail(db.pools.db.write_heavy, email);
        const service = await serviceFor(db);
        const items: ServiceKeyView[] = [];
        let cursor: string | undefined;
        do {
          const page = await service.list(user.id, { limit: 100, cursor });
          items.push(...page.items);
          cursor = page.next_cursor ?? undefined;
        } while (cursor);
        return { user_id: user.id, email: user.email, items };
      });
      out.result(
        listed.items.length === 0
          ? `${listed.email} has no service keys`
          : listed.items.map(describeKey).join('\n'),
        listed,
      );
      return;
    }

    const id = requiredString(values, 'id');
    if (!UUID.test(id)) throw usageError(`--id is not a key id (a uuid): ${id}`);
    const revoked = await withDatabase(async (db) => {
      const user = await userByEmail(db.pools.db.write_heavy, email);
      const revision = await (await serviceFor(db)).revoke(user.id, id, client());
      return { id, user_id: user.id, email: user.email, revoked: true, consistency_token: revision };
    });
    out.result(`revoked service key ${revoked.id} of ${revoked.email}`, revoked);
  },
};
