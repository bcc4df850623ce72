import { CompiledQuery, type Kysely } from 'kysely';
import PgBoss from 'pg-boss';

export const GENERATION_QUEUE = 'generation';

export interface QueueOptions {
  url: string;
  poolMax: number;
  /** A job still active after this long is failed (and retried) by pg-boss's maintenance. */
  expireInSeconds: number;
  onError: (error: Error) => void;
}

/** pg-boss on the same PostgreSQL, in its own schema, with the generation queue's policy. */
export async function startQueue(options: QueueOptions): Promise<PgBoss> {
  const boss = new PgBoss({
    connectionString: options.url,
    max: options.poolMax,
    application_name: 'velro_queue',
    schema: 'pgboss',
    maintenanceIntervalSeconds: 30,
    monitorStateIntervalSeconds: 30,
  });
  boss.on('error', options.onError);
  await boss.start();
  // No pg-boss retries: every retry is a fresh job enqueued by the worker (lifecycle.reschedule),
  // which keeps a superseded job from ever touching the generation again.
  const policy = {
    name: GENERATION_QUEUE,
    retryLimit: 0,
    expireInSeconds: options.expireInSeconds,
  };
  await retryOnDeadlock(async () => {
    await boss.createQueue(GENERATION_QUEUE, policy);
    await boss.updateQueue(GENERATION_QUEUE, policy);
  });
  return boss;
}

/**
 * Instances started together against a fresh database (a rolling deploy, the bench) race in
 * pg-boss's `create_queue`, and PostgreSQL resolves that by aborting one of them with a deadlock.
 * Both statements are idempotent, so the loser simply tries again a moment later.
 */
async function retryOnDeadlock(work: () => Promise<void>, attempts = 5): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (code !== '40P01' || attempt >= attempts) throw error;
      await new Promise((resolve) => setTimeout(resolve, 20 * attempt + Math.random() * 50));
    }
  }
}

/** Lets pg-boss write its job inside one of our transactions, so the job commits with the charge. */
export function inTransaction<T>(trx: Kysely<T>): PgBoss.Db {
  return {
    executeSql: async (text: string, values: unknown[]) => {
      const result = await trx.executeQuery(CompiledQuery.raw(text, values));
      return { rows: result.rows as unknown[] };
    },
  } as PgBoss.Db;
}

/**
 * The one way a generation's job is put on the queue: inside the caller's transaction (it commits,
 * or vanishes, with the generation's row and charge), with the job id the row records, after
 * `startAfterSeconds` when it is a retry. Used by the creation and by the worker's reschedule.
 */
export async function enqueueGeneration<T>(
  boss: PgBoss,
  trx: Kysely<T>,
  generationId: string,
  options: { jobId: string; startAfterSeconds?: number },
): Promise<void> {
  const after = options.startAfterSeconds ?? 0;
  await boss.send(
    GENERATION_QUEUE,
    { generationId },
    { id: options.jobId, db: inTransaction(trx), ...(after > 0 ? { startAfter: after } : {}) },
  );
}
