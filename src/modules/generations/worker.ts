import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { type Kysely, sql } from 'kysely';
import type PgBoss from 'pg-boss';
import type { DB } from '../../platform/db/schema.js';
import { enqueueGeneration, GENERATION_QUEUE } from '../../platform/queue/boss.js';
import type { MediaStorage } from '../media/storage.js';
import type { ModelCatalogue } from '../models/catalogue.js';
import { type GenerationJob, PermanentProviderError, type Provider } from '../providers/types.js';
import type { GenerationEventHub } from './events.js';
import {
  type ClaimedGeneration,
  claim,
  complete,
  type Enqueue,
  endUnfinished,
  heartbeat,
  reportProgress,
  reschedule,
} from './lifecycle.js';
import type { ImageParameters } from './parameters.js';

export interface WorkerOptions {
  concurrency: number;
  jobTimeoutMs: number;
  heartbeatMs: number;
  /** A processing generation whose heartbeat is older than this is presumed abandoned. */
  staleAfterMs: number;
  retryLimit: number;
  retryDelaySeconds: number;
}

export interface WorkerDeps {
  db: Kysely<DB>;
  boss: PgBoss;
  hub: GenerationEventHub;
  catalogue: ModelCatalogue;
  providers: Record<string, Provider>;
  storage: MediaStorage;
  log: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void };
}

type JobData = { generationId: string };

/** How long an idle poller waits before asking the queue again (a local create wakes it at once). */
const POLL_MS = 500;

/** Publishes progress at most this often per generation (and always at 100). */
const PROGRESS_EVERY_MS = 200;

class Superseded extends Error {}

/**
 * Runs generation jobs from the queue. Crash safety comes from three things together: a heartbeat
 * on the generation row while a job runs; a reaper (in every worker) that hands abandoned jobs back
 * to pg-boss for a retry, or fails and refunds them when retries are spent; and the `attempt`
 * fence, so that a worker presumed dead which wakes up cannot overwrite the outcome.
 */
export function createGenerationWorker(deps: WorkerDeps, options: WorkerOptions) {
  const workerId = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  const running = new Map<string, AbortController>();
  const loops: Promise<void>[] = [];
  let wakeUp: (() => void) | null = null;
  const wake = () => {
    const resolve = wakeUp;
    wakeUp = null;
    resolve?.();
  };
  /** Waits for a nudge or the polling interval, whichever comes first. */
  const idle = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      const previous = wakeUp;
      wakeUp = () => {
        clearTimeout(timer);
        previous?.();
        resolve();
      };
    });

  /**
   * One slot of concurrency: fetch a job, run it, complete it, forever. Our own loop rather than
   * pg-boss's `work()`: pg-boss completes and fails jobs without handling their rejection, so a
   * database outage while a job ended crashed the process. Here every database call is caught; a
   * job whose completion could not be recorded is left to expire, and the generation's own state
   * (finished, or rescheduled by the reaper) is what counts.
   */
  async function poll(): Promise<void> {
    let backoff = 100;
    while (!stopping) {
      let job: PgBoss.Job<JobData> | undefined;
      try {
        [job] = await deps.boss.fetch<JobData>(GENERATION_QUEUE, { batchSize: 1 });
        backoff = 100;
      } catch (error) {
        deps.log.warn({ err: error }, 'could not fetch a job; retrying');
        await idle(backoff);
        backoff = Math.min(backoff * 2, 5_000);
        continue;
      }
      if (!job) {
        await idle(POLL_MS);
        continue;
      }
      try {
        await run(job);
      } catch (error) {
        deps.log.warn({ err: error, generation_id: job.data.generationId }, 'job ended with an error');
      }
      await deps.boss.complete(GENERATION_QUEUE, job.id).catch((error: unknown) => {
        deps.log.warn({ err: error, job_id: job.id }, 'could not record the job as done; it will expire');
      });
    }
  }
  let reaper: NodeJS.Timeout | null = null;
  let stopping = false;

  /** The provider's job from the claimed row and its model (read once per attempt, by `run`). */
  function jobFor(
    row: ClaimedGeneration,
    model: { provider_model: string },
    reference: GenerationJob['referenceImage'],
  ): GenerationJob {
    const p = row.parameters as unknown as ImageParameters;
    return {
      generationId: row.id,
      modelId: row.model_id,
      providerModel: model.provider_model,
      prompt: row.prompt,
      negativePrompt: row.negative_prompt,
      width: p.width,
      height: p.height,
      seed: p.seed,
      steps: p.steps,
      referenceImage: reference,
      parameters: row.parameters,
    };
  }

  const enqueue: Enqueue = (trx, generationId, jobId, startAfterSeconds) =>
    enqueueGeneration(deps.boss, trx, generationId, { jobId, startAfterSeconds });

  const retryPolicy = { retryLimit: options.retryLimit, retryDelaySeconds: options.retryDelaySeconds };

  /**
   * One job. It always returns normally: what happens next (retry, hand-back) is a fresh job
   * enqueued by `reschedule`, never a pg-boss retry of this one, so a job that lost its
   * generation (superseded, cancelled) can end without affecting the generation's current job.
   */
  async function run(job: PgBoss.Job<JobData>): Promise<void> {
    const id = job.data.generationId;
    const row = await claim(deps.db, id, job.id, workerId);
    if (!row) return; // not this job's to run any more: cancelled, finished, or superseded
    const controller = new AbortController();
    running.set(id, controller);
    const abort = (why: Error) => {
      if (!controller.signal.aborted) controller.abort(why);
    };
    const unsubscribe = deps.hub.subscribe(id, (event) => {
      if (event.status === 'cancelled' || event.status === 'failed')
        abort(new Superseded('generation ended elsewhere'));
    });
    const timeout = setTimeout(
      () => abort(new Error(`timed out after ${options.jobTimeoutMs} ms`)),
      options.jobTimeoutMs,
    );
    const beat = setInterval(() => {
      heartbeat(deps.db, id, row.attempt).then(
        (owned) => owned || abort(new Superseded('attempt superseded')),
        () => {},
      );
    }, options.heartbeatMs);
    let lastPublished = 0;
    let pending: Promise<unknown> = Promise.resolve();
    const onProgress = (percent: number) => {
      const now = Date.now();
      if (percent < 100 && now - lastPublished < PROGRESS_EVERY_MS) return;
      lastPublished = now;
      pending = pending.then(() =>
        reportProgress(deps.db, id, row.attempt, Math.min(99, percent)).catch(() => {}),
      );
    };
    try {
      const model = deps.catalogue.get(row.model_id);
      const provider = model ? deps.providers[model.provider] : undefined;
      if (!model || !provider) throw new PermanentProviderError(`no provider for model ${row.model_id}`);
      const reference =
        row.reference_key && row.reference_mime
          ? { mime: row.reference_mime, data: await deps.storage.read(row.reference_key) }
          : null;
      const outputs = await provider.generate(jobFor(row, model, reference), controller.signal, onProgress);
      await pending;
      const media = [];
      for (const output of outputs) {
        const stored = await deps.storage.put(output.data, output.mime);
        media.push({
          mime: output.mime,
          width: output.width,
          height: output.height,
          bytes: stored.bytes,
          sha256: stored.sha256,
          storage_key: stored.key,
        });
      }
      await complete(deps.db, id, row.attempt, media);
    } catch (error) {
      await pending;
      const reason = controller.signal.reason;
      if (reason instanceof Superseded) return; // someone else decided the outcome
      const message = (reason instanceof Error ? reason : (error as Error)).message ?? 'generation failed';
      const fence = { attempt: row.attempt, status: 'processing' as const, jobId: job.id, ...retryPolicy };
      if (stopping && controller.signal.aborted) {
        // Shutting down: hand it to another worker, without spending a retry.
        await reschedule(
          deps.db,
          id,
          { ...fence, error: 'worker shut down; handed back', countFailure: false },
          enqueue,
        );
        return;
      }
      if (error instanceof PermanentProviderError) {
        await endUnfinished(deps.db, id, { status: 'failed', error: message, attempt: row.attempt });
        deps.log.warn({ generation_id: id, attempt: row.attempt, err: error }, 'generation failed');
        return;
      }
      const outcome = await reschedule(
        deps.db,
        id,
        { ...fence, error: `attempt ${row.attempt} failed: ${message}`, countFailure: true },
        enqueue,
      );
      if (outcome === 'failed')
        deps.log.warn({ generation_id: id, err: error }, 'generation failed after retries');
    } finally {
      clearTimeout(timeout);
      clearInterval(beat);
      unsubscribe();
      running.delete(id);
    }
  }

  /**
   * Abandoned work, found by age: a processing row whose heartbeat stopped (its worker died), a
   * pending row whose current job was fetched but never claimed (died in between), or whose job
   * ended without finishing it. Each is rescheduled under a fresh job, or failed and refunded when
   * its retries are spent. Fenced, so every worker can run it at once.
   */
  async function reap(): Promise<void> {
    const stale = await sql<{
      id: string;
      status: 'pending' | 'processing';
      attempt: number;
      job_id: string | null;
    }>`
      SELECT id, status, attempt, job_id FROM generations
       WHERE status IN ('pending', 'processing')
         AND coalesce(heartbeat_at, updated_at) < now() - make_interval(secs => ${options.staleAfterMs / 1000})
       ORDER BY updated_at LIMIT 100`.execute(deps.db);
    for (const g of stale.rows) {
      if (running.has(g.id)) continue;
      const job = g.job_id ? await deps.boss.getJobById<JobData>(GENERATION_QUEUE, g.job_id) : null;
      const state = job?.state;
      // Queued (possibly with a delay): a worker will take it.
      if (g.status === 'pending' && (state === 'created' || state === 'retry')) continue;
      const outcome = await reschedule(
        deps.db,
        g.id,
        {
          attempt: g.attempt,
          status: g.status,
          jobId: g.job_id,
          error:
            g.status === 'processing' ? 'worker lost (no heartbeat)' : `job lost (${state ?? 'missing'})`,
          countFailure: true,
          ...retryPolicy,
        },
        enqueue,
      );
      if (outcome === null) continue;
      if (g.job_id && state && state !== 'completed' && state !== 'failed' && state !== 'cancelled') {
        await deps.boss.cancel(GENERATION_QUEUE, g.job_id).catch(() => {});
      }
      deps.log.warn(
        { generation_id: g.id, attempt: g.attempt, job_state: state ?? 'missing', outcome },
        'recovered an abandoned generation',
      );
    }
  }

  return {
    id: workerId,
    async start(): Promise<void> {
      for (let i = 0; i < options.concurrency; i++) loops.push(poll());
      reaper = setInterval(
        () => reap().catch((error) => deps.log.warn({ err: error }, 'reaper failed')),
        Math.max(100, Math.floor(options.staleAfterMs / 2)),
      );
      reaper.unref();
    },

    /** Wake the pollers now instead of at their next interval (a job was just enqueued here). */
    nudge(): void {
      wake();
    },

    reap,

    get activeJobs(): number {
      return running.size;
    },

    /**
     * Stop taking jobs; running ones are aborted and handed back to the queue (status pending, job
     * failed for a retry), so another worker finishes them. Resolves when none is running here.
     */
    async stop(): Promise<void> {
      stopping = true;
      if (reaper) clearInterval(reaper);
      wake();
      for (const controller of running.values()) controller.abort(new Error('worker stopping'));
      await Promise.all(loops);
    },
  };
}

export type GenerationWorker = ReturnType<typeof createGenerationWorker>;
