import { createHash, randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type PgBoss from 'pg-boss';
import canonicalJson from 'safe-stable-stringify';
import { prepared } from '../../platform/db/prepared.js';
import type { DB } from '../../platform/db/schema.js';
import { AppError, badRequest } from '../../platform/http/errors.js';
import { enqueueGeneration } from '../../platform/queue/boss.js';
import type { AccessContext, AuthzEngine } from '../authz/engine.js';
import { applyCreditChange } from '../credits/service.js';
import type { MediaStorage } from '../media/storage.js';
import type { ModelCatalogue } from '../models/catalogue.js';
import { resolveParameters } from './parameters.js';
import { type GenerationView, toGenerationView } from './view.js';

export interface CreateGenerationInput {
  model_id: string;
  prompt: string;
  negative_prompt?: string | null | undefined;
  project_id?: string | null | undefined;
  parameters?: Record<string, unknown> | undefined;
  reference_image?: { mime: string; data: Buffer } | undefined;
  idempotency_key?: string | undefined;
}

export interface CreateDeps {
  writeDb: Kysely<DB>;
  authz: AuthzEngine;
  boss: PgBoss;
  catalogue: ModelCatalogue;
  storage: MediaStorage;
  /** Wakes a worker of this process once a generation was queued (none runs here: omitted). */
  onQueued?: (() => void) | undefined;
}

export const insufficientCredits = (cost: number) =>
  new AppError(402, 'insufficient_credits', `This generation costs ${cost} credits; your balance is lower`, {
    cost_credits: cost,
  });

const UNIQUE_VIOLATION = '23505';

// The two statements of creation, compiled once (platform/db/prepared.ts).

const byIdempotencyKeyQuery = prepared((db: Kysely<DB>, p: { userId: string; key: string }) =>
  db
    .selectFrom('generations')
    .selectAll()
    .where('user_id', '=', p.userId)
    .where('idempotency_key', '=', p.key),
);

const insertGenerationQuery = prepared(
  (
    db: Kysely<DB>,
    p: {
      id: string;
      userId: string;
      projectId: string | null;
      modelId: string;
      prompt: string;
      negativePrompt: string | null;
      parameters: string;
      costCredits: number;
      idempotencyKey: string | null;
      idempotencyHash: string | null;
      referenceKey: string | null;
      referenceMime: string | null;
    },
  ) =>
    db
      .insertInto('generations')
      .values({
        id: p.id,
        // The first job takes the generation's id; retries get fresh ones (lifecycle.reschedule).
        job_id: p.id,
        user_id: p.userId,
        project_id: p.projectId,
        model_id: p.modelId,
        prompt: p.prompt,
        negative_prompt: p.negativePrompt,
        parameters: p.parameters,
        cost_credits: p.costCredits,
        idempotency_key: p.idempotencyKey,
        idempotency_hash: p.idempotencyHash,
        reference_key: p.referenceKey,
        reference_mime: p.referenceMime,
      })
      .returningAll(),
);

/**
 * Creates a generation: validation, then ONE transaction that inserts the generation, charges its
 * cost (`UPDATE … WHERE credits_balance >= cost`, so no interleaving can overdraw), writes the
 * ledger row and enqueues the job. Either all of it commits or none of it does.
 *
 * With an Idempotency-Key, a repeat of the same request returns the first generation (no second
 * charge); the same key with a different request is refused with 422. A new generation (not a
 * replay) wakes the local worker through `onQueued` once its transaction has committed.
 *
 * The generations service's `create` (service.ts); kept in its own file for its length.
 */
export function createGenerationCreator(deps: CreateDeps) {
  const { writeDb, authz, boss, catalogue, storage, onQueued } = deps;

  async function replay(userId: string, key: string, hash: string): Promise<GenerationView | null> {
    const existing = await byIdempotencyKeyQuery.executeTakeFirst(writeDb, { userId, key });
    if (!existing) return null;
    if (existing.idempotency_hash !== hash) {
      throw new AppError(
        422,
        'idempotency_key_reused',
        'This Idempotency-Key was already used with a different request',
      );
    }
    return toGenerationView(existing);
  }

  return async function create(
    userId: string,
    input: CreateGenerationInput,
    ctx: AccessContext,
  ): Promise<{ generation: GenerationView; replayed: boolean }> {
    const model = catalogue.get(input.model_id);
    if (!model?.is_active) {
      throw badRequest('Unknown model', [
        { field: 'body.model_id', message: 'is not a model from GET /models' },
      ]);
    }
    if (input.reference_image && !model.supports_reference_image) {
      throw badRequest(`Model ${model.id} does not take a reference image`, [
        { field: 'body.reference_image', message: 'is not supported by this model' },
      ]);
    }
    const parameters = resolveParameters(model, input.parameters);
    const projectId = input.project_id ?? null;
    // Adding work to a project is editing it; decided on fresh facts from the primary, before any
    // bytes are stored or credits charged.
    if (projectId) await authz.requireFresh(writeDb, userId, { type: 'project', id: projectId }, 'edit', ctx);

    const referenceSha = input.reference_image
      ? createHash('sha256').update(input.reference_image.data).digest('hex')
      : null;
    // The request in a canonical form (object keys sorted): the same request with its parameters
    // written in another order is the same request.
    const hash = createHash('sha256')
      .update(
        canonicalJson([
          input.model_id,
          input.prompt,
          input.negative_prompt ?? null,
          projectId,
          input.parameters ?? {},
          referenceSha,
        ]),
      )
      .digest('hex');
    const key = input.idempotency_key;
    if (key) {
      const earlier = await replay(userId, key, hash);
      if (earlier) return { generation: earlier, replayed: true };
    }

    const reference = input.reference_image
      ? {
          ...(await storage.put(input.reference_image.data, input.reference_image.mime)),
          mime: input.reference_image.mime,
        }
      : null;
    const id = randomUUID();
    try {
      const row = await writeDb.transaction().execute(async (trx) => {
        const inserted = await insertGenerationQuery.executeTakeFirstOrThrow(trx, {
          id,
          userId,
          projectId,
          modelId: model.id,
          prompt: input.prompt,
          negativePrompt: input.negative_prompt ?? null,
          parameters: JSON.stringify(parameters),
          costCredits: model.cost_credits,
          idempotencyKey: key ?? null,
          idempotencyHash: key ? hash : null,
          referenceKey: reference?.key ?? null,
          referenceMime: reference?.mime ?? null,
        });
        if (model.cost_credits > 0) {
          const balance = await applyCreditChange(trx, {
            userId,
            amount: -model.cost_credits,
            reason: 'generation_charge',
            generationId: id,
          });
          if (balance === null) throw insufficientCredits(model.cost_credits);
        }
        await enqueueGeneration(boss, trx, id, { jobId: id });
        return inserted;
      });
      onQueued?.();
      return { generation: toGenerationView(row), replayed: false };
    } catch (error) {
      // Two requests with one key raced and the other committed first: answer as a replay.
      if (key && (error as { code?: string }).code === UNIQUE_VIOLATION) {
        const earlier = await replay(userId, key, hash);
        if (earlier) return { generation: earlier, replayed: true };
      }
      throw error;
    }
  };
}
