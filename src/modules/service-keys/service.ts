import { type Kysely, sql } from 'kysely';
import type pg from 'pg';
import { transactRevised } from '../../platform/cache/revision.js';
import type { DB } from '../../platform/db/schema.js';
import { byTimeAndId, paginate } from '../../platform/http/cursor.js';
import { badRequest, notFound } from '../../platform/http/errors.js';
import type { Scope } from '../../platform/http/principal.js';
import { auditRequest, recordAudit } from '../audit/service.js';
import type { ClientContext } from '../auth/service.js';
import { KEY_PREFIX, newSecret, sha256 } from '../auth/tokens.js';
import type { ServiceKey as ServiceKeyView } from './schemas.js';

/** How much of the secret is kept in clear, so people can tell their keys apart. */
const DISPLAY_PREFIX_LENGTH = KEY_PREFIX.length + 8;
/** last_used_at is bookkeeping: written at most this often per key, off the request path. */
const LAST_USED_RESOLUTION_MS = 60_000;

export type { ServiceKeyView };

export interface ServiceKeyDeps {
  writeDb: Kysely<DB>;
  readDb: Kysely<DB>;
  writePool: pg.Pool;
  onBackgroundError: (error: unknown) => void;
  now?: () => number;
}

type KeyRow = {
  id: string;
  name: string;
  prefix: string;
  scopes: string[];
  expires_at: Date | null;
  revoked_at: Date | null;
  last_used_at: Date | null;
  created_at: Date;
};

function toView(row: KeyRow): ServiceKeyView {
  return {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    scopes: row.scopes as Scope[],
    expires_at: row.expires_at?.toISOString() ?? null,
    revoked_at: row.revoked_at?.toISOString() ?? null,
    last_used_at: row.last_used_at?.toISOString() ?? null,
    created_at: row.created_at.toISOString(),
  };
}

const VIEW_COLUMNS = [
  'id',
  'name',
  'prefix',
  'scopes',
  'expires_at',
  'revoked_at',
  'last_used_at',
  'created_at',
] as const;

export type ServiceKeyService = ReturnType<typeof createServiceKeyService>;

export function createServiceKeyService(deps: ServiceKeyDeps) {
  const now = deps.now ?? Date.now;
  const lastWritten = new Map<string, number>();

  return {
    async create(
      userId: string,
      input: { name: string; scopes: Scope[]; expires_at?: string | undefined },
      client: ClientContext,
    ): Promise<ServiceKeyView & { key: string }> {
      const expiresAt = input.expires_at ? new Date(input.expires_at) : null;
      if (expiresAt && expiresAt.getTime() <= now()) {
        throw badRequest('expires_at must be in the future', [
          { field: 'body.expires_at', message: 'is in the past' },
        ]);
      }
      const key = newSecret(KEY_PREFIX);
      const scopes = [...new Set(input.scopes)].sort();
      const row = await deps.writeDb.transaction().execute(async (trx) => {
        const inserted = await trx
          .insertInto('service_keys')
          .values({
            user_id: userId,
            name: input.name.trim(),
            prefix: key.slice(0, DISPLAY_PREFIX_LENGTH),
            secret_hash: sha256(key),
            scopes,
            expires_at: expiresAt,
          })
          .returning(VIEW_COLUMNS)
          .executeTakeFirstOrThrow();
        await recordAudit(trx, {
          actorId: userId,
          action: 'service_key.create',
          resourceType: 'service_key',
          resourceId: inserted.id,
          details: { scopes },
          ...auditRequest(client),
        });
        return inserted;
      });
      return { ...toView(row), key };
    },

    async list(
      userId: string,
      page: { limit: number; cursor?: string | undefined },
    ): Promise<{ items: ServiceKeyView[]; next_cursor: string | null }> {
      const query = deps.readDb
        .selectFrom('service_keys')
        .select([...VIEW_COLUMNS, sql<string>`created_at::text`.as('cursor_at')])
        .where('user_id', '=', userId);
      const { rows, next_cursor } = await paginate(
        query,
        byTimeAndId('created_at', 'id', (r) => r.id),
        page,
      );
      return { items: rows.map(toView), next_cursor };
    },

    /** Revoking is idempotent for the owner; anyone else's key id answers 404 like a missing one. */
    async revoke(userId: string, keyId: string, client: ClientContext): Promise<number> {
      const { revision } = await transactRevised(deps.writeDb, async (trx) => {
        const row = await trx
          .updateTable('service_keys')
          .set({ revoked_at: sql`coalesce(revoked_at, now())` })
          .where('id', '=', keyId)
          .where('user_id', '=', userId)
          .returning('id')
          .executeTakeFirst();
        if (!row) throw notFound('Service key not found');
        await recordAudit(trx, {
          actorId: userId,
          action: 'service_key.revoke',
          resourceType: 'service_key',
          resourceId: keyId,
          ...auditRequest(client),
        });
      });
      return revision;
    },

    /**
     * Records that a key was used. last_used_at is bookkeeping: written at most once a minute per
     * key and process, off the request path, never read on it.
     */
    noteUse(keyId: string): void {
      const at = now();
      const last = lastWritten.get(keyId) ?? 0;
      if (at - last < LAST_USED_RESOLUTION_MS) return;
      lastWritten.set(keyId, at);
      if (lastWritten.size > 100_000) lastWritten.clear();
      deps.writePool
        .query('UPDATE service_keys SET last_used_at = now() WHERE id = $1', [keyId])
        .catch(deps.onBackgroundError);
    },
  };
}
