import { type Kysely, sql } from 'kysely';
import type PgBoss from 'pg-boss';
import { type Revised, transactRevised } from '../../platform/cache/revision.js';
import { prepared } from '../../platform/db/prepared.js';
import type { ListReader } from '../../platform/db/read-routing.js';
import type { DB, GenerationStatus } from '../../platform/db/schema.js';
import { byTimeAndId, paginate } from '../../platform/http/cursor.js';
import { AppError } from '../../platform/http/errors.js';
import { auditRequest, recordAudit } from '../audit/service.js';
import type { AccessContext, AuthzEngine, CheckResult } from '../authz/engine.js';
import type { MediaSigner } from '../media/signing.js';
import type { MediaStorage } from '../media/storage.js';
import type { ModelCatalogue } from '../models/catalogue.js';
import { createGenerationCreator } from './create.js';
import { endUnfinished } from './lifecycle.js';
import { GENERATION_COLUMNS, type GenerationView, toGenerationView } from './view.js';

export interface GenerationPermissions {
  generation_id: string;
  user_id: string;
  can_view: boolean;
  can_download: boolean;
  can_edit: boolean;
  can_delete: boolean;
  access_method: string;
}

export interface MediaUrl {
  media_id: string;
  url: string;
  mime: string;
  width: number;
  height: number;
  bytes: number;
  expires_at: string;
}

export interface ListFilter {
  project_id?: string | undefined;
  status?: GenerationStatus | undefined;
  favorite?: boolean | undefined;
  limit: number;
  cursor?: string | undefined;
}

export interface GenerationsDeps {
  writeDb: Kysely<DB>;
  readDb: Kysely<DB>;
  /** Where lists and statistics read (a replica unless the request carries a token); default readDb. */
  listDb?: ListReader;
  authz: AuthzEngine;
  signer: MediaSigner;
  mediaUrlTtlSeconds: number;
  mediaUrlPrefix: string;
  /** Creation (`create`): the queue its jobs go to, the models it offers, where reference images go. */
  boss: PgBoss;
  catalogue: ModelCatalogue;
  storage: MediaStorage;
  /** Wakes this process's worker after a generation was queued (no worker here: omitted). */
  onQueued?: (() => void) | undefined;
}

export type GenerationsService = ReturnType<typeof createGenerationsService>;

/** GET /generations/:id's read, compiled once (platform/db/prepared.ts). */
const generationByIdQuery = prepared((db: Kysely<DB>, p: { id: string }) =>
  db.selectFrom('generations').select(GENERATION_COLUMNS).where('id', '=', p.id),
);

/** SPEC §3 rule 1: a deleted project hides its generations from everyone, their creator included. */
const notInDeletedProject = sql<boolean>`NOT EXISTS (
  SELECT 1 FROM projects p WHERE p.id = generations.project_id AND p.deleted_at IS NOT NULL)`;

/** The seed's GenerationPermissions of one decision (a plain function: no closure per request). */
function permissionsOf(
  id: string,
  userId: string,
  { decision, cache }: CheckResult,
): { value: GenerationPermissions; cache: string } {
  const held = decision.permissions;
  return {
    cache,
    value: {
      generation_id: id,
      user_id: userId,
      can_view: held.includes('view'),
      can_download: held.includes('download'),
      can_edit: held.includes('edit'),
      can_delete: held.includes('delete'),
      access_method: decision.accessMethod,
    },
  };
}

export function createGenerationsService(deps: GenerationsDeps) {
  const { writeDb, readDb, authz } = deps;
  const listDb: ListReader = deps.listDb ?? (() => readDb);
  const generation = (id: string) => ({ type: 'generation' as const, id });
  const create = createGenerationCreator({
    writeDb,
    authz,
    boss: deps.boss,
    catalogue: deps.catalogue,
    storage: deps.storage,
    onQueued: deps.onQueued,
  });

  async function load(id: string): Promise<GenerationView> {
    const row = await generationByIdQuery.executeTakeFirst(readDb, { id });
    if (!row) throw new AppError(404, 'not_found', 'Generation not found');
    return toGenerationView(row);
  }

  return {
    /**
     * Starts a generation: its cost charged, its row written and its job queued in one transaction
     * (402 without the credits), an Idempotency-Key replaying the first; see create.ts.
     */
    create,

    async get(userId: string, id: string, ctx: AccessContext): Promise<GenerationView> {
      await authz.require(userId, generation(id), 'view', ctx);
      return load(id);
    },

    /** For the event stream: authorised once when the stream opens. */
    async openForEvents(userId: string, id: string, ctx: AccessContext): Promise<GenerationView> {
      await authz.require(userId, generation(id), 'view', ctx);
      return load(id);
    },

    /**
     * The seed's GenerationPermissions; not viewable → 404, like every other route. Synchronous when
     * the facts are in L1 (the warm path answers without a promise), else through the cache layers
     * or the database.
     */
    permissions(
      userId: string,
      id: string,
      ctx: AccessContext,
    ):
      | { value: GenerationPermissions; cache: string }
      | Promise<{ value: GenerationPermissions; cache: string }> {
      const now = authz.requireNowOrLater(userId, generation(id), 'view', ctx);
      if (!(now instanceof Promise)) return permissionsOf(id, userId, now);
      return now.then((result) => permissionsOf(id, userId, result));
    },

    /**
     * Without a project: the caller's own generations. With one: every generation in that project,
     * for anyone who can view the project (viewing a project is viewing its generations, rules 3–5).
     */
    async list(userId: string, filter: ListFilter, ctx: AccessContext) {
      if (filter.project_id)
        await authz.require(userId, { type: 'project', id: filter.project_id }, 'view', ctx);
      let query = listDb(ctx.minRevision)
        .selectFrom('generations')
        .select([...GENERATION_COLUMNS, sql<string>`created_at::text`.as('cursor_at')])
        .where('deleted_at', 'is', null)
        .where(notInDeletedProject);
      query = filter.project_id
        ? query.where('project_id', '=', filter.project_id)
        : query.where('user_id', '=', userId);
      if (filter.status) query = query.where('status', '=', filter.status);
      if (filter.favorite !== undefined) query = query.where('is_favorite', '=', filter.favorite);
      const { rows, next_cursor } = await paginate(
        query,
        byTimeAndId('created_at', 'id', (r) => r.id),
        filter,
      );
      return { items: rows.map(toGenerationView), next_cursor };
    },

    /** Counts and spend over the caller's own generations. */
    async stats(userId: string, ctx?: Pick<AccessContext, 'minRevision'>) {
      const db = listDb(ctx?.minRevision);
      const rows = await db
        .selectFrom('generations')
        .select([
          'status',
          sql<number>`count(*)::int`.as('count'),
          sql<number>`coalesce(sum(cost_credits), 0)::int`.as('cost'),
        ])
        .where('user_id', '=', userId)
        .where('deleted_at', 'is', null)
        .where(notInDeletedProject)
        .groupBy('status')
        .execute();
      const favorites = await db
        .selectFrom('generations')
        .select(sql<number>`count(*)::int`.as('n'))
        .where('user_id', '=', userId)
        .where('deleted_at', 'is', null)
        .where(notInDeletedProject)
        .where('is_favorite', '=', true)
        .executeTakeFirstOrThrow();
      const by_status: Record<GenerationStatus, number> = {
        pending: 0,
        processing: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
      };
      let total = 0;
      let spent = 0;
      for (const r of rows) {
        by_status[r.status] = r.count;
        total += r.count;
        // failed and cancelled generations were refunded
        if (r.status !== 'failed' && r.status !== 'cancelled') spent += r.cost;
      }
      return { total, by_status, favorites: favorites.n, credits_spent: spent };
    },

    /** Stops a pending or running generation and refunds it. The worker aborts within a moment. */
    async cancel(userId: string, id: string, ctx: AccessContext): Promise<GenerationView> {
      await authz.requireFresh(writeDb, userId, generation(id), 'edit', ctx);
      const ended = await endUnfinished(writeDb, id, {
        status: 'cancelled',
        error: 'cancelled by user',
        attempt: null,
      });
      if (!ended) {
        const current = await load(id);
        throw new AppError(409, 'not_cancellable', `The generation is already ${current.status}`, {
          status: current.status,
        });
      }
      return load(id);
    },

    /** Sets the favourite flag, or flips it when no value is given. */
    async favorite(
      userId: string,
      id: string,
      value: boolean | undefined,
      ctx: AccessContext,
    ): Promise<GenerationView> {
      await authz.requireFresh(writeDb, userId, generation(id), 'edit', ctx);
      await writeDb
        .updateTable('generations')
        .set({ is_favorite: value === undefined ? sql`NOT is_favorite` : value, updated_at: sql`now()` })
        .where('id', '=', id)
        .execute();
      return load(id);
    },

    /** Signed, expiring URLs for the generation's media; anyone holding one can fetch until expiry. */
    async mediaUrls(userId: string, id: string, ctx: AccessContext): Promise<{ items: MediaUrl[] }> {
      await authz.require(userId, generation(id), 'download', ctx);
      const rows = await readDb
        .selectFrom('media')
        .select(['id', 'mime', 'width', 'height', 'bytes'])
        .where('generation_id', '=', id)
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      return {
        items: rows.map((m) => {
          const { token, expiresAt } = deps.signer.sign(m.id, deps.mediaUrlTtlSeconds);
          return {
            media_id: m.id,
            url: `${deps.mediaUrlPrefix}${token}`,
            mime: m.mime,
            width: m.width,
            height: m.height,
            bytes: m.bytes,
            expires_at: new Date(expiresAt * 1000).toISOString(),
          };
        }),
      };
    },

    /**
     * Soft delete: the generation and its media disappear for everyone from the next request. One
     * still running is cancelled and refunded in the same transaction.
     */
    async remove(userId: string, id: string, ctx: AccessContext): Promise<Revised<null>> {
      return transactRevised(writeDb, async (trx) => {
        await authz.requireFresh(trx, userId, generation(id), 'delete', ctx);
        await endUnfinished(trx, id, { status: 'cancelled', error: 'deleted', attempt: null });
        await trx
          .updateTable('generations')
          .set({ deleted_at: sql`coalesce(deleted_at, now())`, updated_at: sql`now()` })
          .where('id', '=', id)
          .execute();
        await recordAudit(trx, {
          actorId: userId,
          action: 'generation.delete',
          resourceType: 'generation',
          resourceId: id,
          ...auditRequest(ctx),
        });
        return null;
      });
    },
  };
}
