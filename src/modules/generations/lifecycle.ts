import { randomUUID } from 'node:crypto';
import { type Kysely, sql } from 'kysely';
import type { DB, GenerationStatus } from '../../platform/db/schema.js';
import { jobOutcomes } from '../../platform/observability/metrics.js';
import { applyCreditChange } from '../credits/service.js';
import { publishGenerationEvent } from './events.js';

/**
 * Every status change of a generation, in one place. The state machine:
 *
 *   pending ──claim──▶ processing ──complete──▶ completed
 *      ▲                   │  └──────fail──────▶ failed     (refunded)
 *      └──reschedule───────┘  (retry, lost worker, shutdown: a fresh job)
 *   pending/processing ──cancel──▶ cancelled                (refunded)
 *
 * Transitions out of pending/processing are conditional UPDATEs, so exactly one of any racing
 * transitions wins; the refund happens in the same transaction as the transition that wins, and a
 * unique index on the ledger makes a second refund impossible anyway. Worker-side transitions are
 * fenced by `attempt`: a worker whose attempt was superseded changes nothing.
 */

export interface ClaimedGeneration {
  id: string;
  attempt: number;
  user_id: string;
  model_id: string;
  prompt: string;
  negative_prompt: string | null;
  parameters: Record<string, unknown>;
  reference_key: string | null;
  reference_mime: string | null;
}

export interface NewMedia {
  mime: string;
  width: number;
  height: number;
  bytes: number;
  sha256: string;
  storage_key: string;
}

/** Only the generation's current job may claim it; a superseded job changes nothing. */
export async function claim(
  db: Kysely<DB>,
  id: string,
  jobId: string,
  workerId: string,
): Promise<ClaimedGeneration | null> {
  return db.transaction().execute(async (trx) => {
    const row = await trx
      .updateTable('generations')
      .set({
        status: 'processing',
        attempt: sql`attempt + 1`,
        progress: 0,
        started_at: sql`coalesce(started_at, now())`,
        heartbeat_at: sql`now()`,
        worker_id: workerId,
        updated_at: sql`now()`,
      })
      .where('id', '=', id)
      .where('job_id', '=', jobId)
      .where('status', 'in', ['pending', 'processing'])
      .where('deleted_at', 'is', null)
      .returning([
        'id',
        'attempt',
        'user_id',
        'model_id',
        'prompt',
        'negative_prompt',
        'parameters',
        'reference_key',
        'reference_mime',
      ])
      .executeTakeFirst();
    if (!row) return null;
    await publishGenerationEvent(trx, { id, status: 'processing', progress: 0, error: null });
    return row;
  });
}

/** False when this attempt no longer owns the generation (cancelled, deleted, or taken over). */
export async function heartbeat(db: Kysely<DB>, id: string, attempt: number): Promise<boolean> {
  const row = await db
    .updateTable('generations')
    .set({ heartbeat_at: sql`now()` })
    .where('id', '=', id)
    .where('attempt', '=', attempt)
    .where('status', '=', 'processing')
    .where('deleted_at', 'is', null)
    .returning('id')
    .executeTakeFirst();
  return row !== undefined;
}

export async function reportProgress(
  db: Kysely<DB>,
  id: string,
  attempt: number,
  progress: number,
): Promise<boolean> {
  return db.transaction().execute(async (trx) => {
    const row = await trx
      .updateTable('generations')
      .set({ progress, heartbeat_at: sql`now()`, updated_at: sql`now()` })
      .where('id', '=', id)
      .where('attempt', '=', attempt)
      .where('status', '=', 'processing')
      .where('progress', '<', progress)
      .returning('id')
      .executeTakeFirst();
    if (row) await publishGenerationEvent(trx, { id, status: 'processing', progress, error: null });
    return row !== undefined;
  });
}

/** Finishes this attempt with its media; false (and nothing written) if the attempt lost the fence. */
export async function complete(
  db: Kysely<DB>,
  id: string,
  attempt: number,
  media: NewMedia[],
): Promise<boolean> {
  return db.transaction().execute(async (trx) => {
    const row = await trx
      .updateTable('generations')
      .set({
        status: 'completed',
        progress: 100,
        error: null,
        completed_at: sql`now()`,
        updated_at: sql`now()`,
      })
      .where('id', '=', id)
      .where('attempt', '=', attempt)
      .where('status', '=', 'processing')
      .returning('id')
      .executeTakeFirst();
    if (!row) return false;
    if (media.length > 0) {
      await trx
        .insertInto('media')
        .values(media.map((m) => ({ ...m, generation_id: id })))
        .execute();
    }
    await publishGenerationEvent(trx, { id, status: 'completed', progress: 100, error: null });
    jobOutcomes.inc({ outcome: 'completed' });
    return true;
  });
}

/** Puts a fresh job for a generation on the queue, inside the caller's transaction. */
export type Enqueue = (
  trx: Kysely<DB>,
  generationId: string,
  jobId: string,
  startAfterSeconds: number,
) => Promise<void>;

export interface RescheduleOptions {
  /** Fences: the state the caller saw. */
  attempt: number;
  status: 'pending' | 'processing';
  jobId: string | null;
  error: string;
  /** A failure or a lost worker spends the retry budget; a hand-back at shutdown does not. */
  countFailure: boolean;
  retryLimit: number;
  retryDelaySeconds: number;
}

/**
 * Back to the queue, under a NEW job, or — when the retry budget is spent — failed and refunded.
 * Retries are ours rather than pg-boss's: each one is a fresh job that becomes the generation's
 * current job, so an old job (a worker presumed dead that wakes up, an expired job) can never
 * claim or finish the generation again. Returns what happened, or null when the fence failed.
 */
export async function reschedule(
  db: Kysely<DB>,
  id: string,
  options: RescheduleOptions,
  enqueue: Enqueue,
): Promise<'requeued' | 'failed' | null> {
  return db.transaction().execute(async (trx) => {
    let update = trx
      .updateTable('generations')
      .set({
        status: 'pending',
        progress: 0,
        error: options.error,
        heartbeat_at: null,
        worker_id: null,
        failures: options.countFailure ? sql`failures + 1` : sql`failures`,
        updated_at: sql`now()`,
      })
      .where('id', '=', id)
      .where('attempt', '=', options.attempt)
      .where('status', '=', options.status);
    update =
      options.jobId === null
        ? update.where('job_id', 'is', null)
        : update.where('job_id', '=', options.jobId);
    const row = await update.returning(['failures']).executeTakeFirst();
    if (!row) return null;
    if (row.failures > options.retryLimit) {
      const message = `${options.error}; no retries left`;
      await endUnfinished(trx, id, { status: 'failed', error: message, attempt: options.attempt });
      return 'failed';
    }
    const jobId = randomUUID();
    const delay = options.countFailure ? options.retryDelaySeconds * 2 ** Math.max(0, row.failures - 1) : 0;
    await trx.updateTable('generations').set({ job_id: jobId }).where('id', '=', id).execute();
    await enqueue(trx, id, jobId, Math.min(delay, 3600));
    await publishGenerationEvent(trx, { id, status: 'pending', progress: 0, error: options.error });
    jobOutcomes.inc({ outcome: options.countFailure ? 'retried' : 'handed_back' });
    return 'requeued';
  });
}

/**
 * Ends a generation that has not finished, as failed or cancelled, and refunds its cost to whoever
 * paid — exactly once. `attempt` fences worker-side failures; null (a user cancelling, a deletion)
 * ends it whatever attempt is running. Runs in the caller's transaction when given one.
 */
export async function endUnfinished(
  db: Kysely<DB>,
  id: string,
  outcome: {
    status: Extract<GenerationStatus, 'failed' | 'cancelled'>;
    error: string;
    attempt: number | null;
  },
): Promise<boolean> {
  const run = async (trx: Kysely<DB>) => {
    let update = trx
      .updateTable('generations')
      .set({ status: outcome.status, error: outcome.error, completed_at: sql`now()`, updated_at: sql`now()` })
      .where('id', '=', id)
      .where('status', 'in', ['pending', 'processing']);
    if (outcome.attempt !== null) update = update.where('attempt', '=', outcome.attempt);
    const row = await update.returning(['user_id', 'cost_credits', 'progress']).executeTakeFirst();
    if (!row) return false;
    if (row.cost_credits > 0) {
      await applyCreditChange(trx, {
        userId: row.user_id,
        amount: row.cost_credits,
        reason: 'generation_refund',
        generationId: id,
      });
    }
    await publishGenerationEvent(trx, {
      id,
      status: outcome.status,
      progress: row.progress,
      error: outcome.error,
    });
    return true;
  };
  return db.isTransaction ? run(db) : db.transaction().execute(run);
}
