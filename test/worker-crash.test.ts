import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  claim,
  complete,
  endUnfinished,
  heartbeat,
  reportProgress,
} from '../src/modules/generations/lifecycle.js';
import {
  bearer,
  createTestDatabase,
  type SignedUp,
  signUp,
  startTestApp,
  TEST_ENV,
  type TestApp,
} from './helpers/app.js';

/**
 * SPEC §5, crash safety: a worker killed mid-job leaves a job that another worker finishes, or fails
 * and refunds — never a double charge, never a lost generation. The killed worker is a real process
 * (`node --import tsx src/worker.ts`) sharing the database and the media folder with the test.
 */

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const WAIT_MS = 20_000;

/** The pipeline settings every process of a test shares (the queue policy is per database). */
const FAST_RECOVERY: Record<string, string> = {
  LOCAL_PROVIDER_STEP_DELAY_MS: '150',
  WORKER_HEARTBEAT_MS: '100',
  WORKER_STALE_AFTER_MS: '800',
  // Retries are fresh jobs; with a zero delay the next worker can take one at once.
  JOB_RETRY_DELAY_SECONDS: '0',
  JOB_RETRY_LIMIT: '2',
  WORKER_CONCURRENCY: '1',
};

const children = new Set<ChildProcess>();
const cleanups: (() => Promise<unknown>)[] = [];

/** Kills the children, then closes apps, clients and databases, newest first; pass or fail. */
async function cleanUp(): Promise<void> {
  for (const child of children) await killChild(child);
  children.clear();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
}

afterEach(cleanUp);
afterAll(cleanUp);

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await Promise.race([exited(child), new Promise((r) => setTimeout(r, 5_000))]);
}

interface Worker {
  child: ChildProcess;
  output: () => string;
}

/** A standalone worker process (src/worker.ts), configured only through its environment. */
function spawnWorker(databaseUrl: string, dataDir: string, env: Record<string, string>): Worker {
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    ...TEST_ENV,
    ...env,
    DATABASE_URL: databaseUrl,
    DATA_DIR: dataDir,
    LOG_LEVEL: 'silent',
    NODE_ENV: 'test',
  };
  delete childEnv.REDIS_URL;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/worker.ts'], {
    cwd: REPO_ROOT,
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let output = '';
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4_000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  return { child, output: () => output };
}

/** Polls `probe` until it returns a value; fails with `what` and the last observation after WAIT_MS. */
async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  describeLast: () => string = () => '',
): Promise<T> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}. ${describeLast()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

interface GenerationRow {
  status: string;
  progress: number;
  attempt: number;
  worker_id: string | null;
  error: string | null;
}

/** One database, one SQL client and one shared media folder per test. */
async function setting() {
  const db = await createTestDatabase();
  cleanups.push(() => db.drop());
  const sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  cleanups.push(() => sql.end());
  const dataDir = await mkdtemp(join(tmpdir(), 'velro-crash-'));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));

  const start = async (options: { worker?: boolean; env?: Record<string, string> }): Promise<TestApp> => {
    const t = await startTestApp({ databaseUrl: db.url, dataDir, ...options });
    let closing: Promise<void> | null = null;
    const close = () => {
      closing ??= t.close();
      return closing;
    };
    cleanups.push(close);
    return { ...t, close };
  };
  const row = async (id: string) =>
    (
      await sql.query<GenerationRow>(
        'SELECT status, progress, attempt, worker_id, error FROM generations WHERE id = $1',
        [id],
      )
    ).rows[0]!;
  const ledger = async (userId: string, generationId: string) => {
    const rows = await sql.query<{ amount: number; reason: string; generation_id: string | null }>(
      'SELECT amount, reason, generation_id FROM credit_transactions WHERE user_id = $1 ORDER BY id',
      [userId],
    );
    const user = await sql.query<{ credits_balance: number }>(
      'SELECT credits_balance FROM users WHERE id = $1',
      [userId],
    );
    const mine = rows.rows.filter((r) => r.generation_id === generationId);
    return {
      charges: mine.filter((r) => r.reason === 'generation_charge').map((r) => r.amount),
      refunds: mine.filter((r) => r.reason === 'generation_refund').map((r) => r.amount),
      balance: user.rows[0]!.credits_balance,
      sum: rows.rows.reduce((a, r) => a + r.amount, 0),
    };
  };
  const media = async (id: string) =>
    (
      await sql.query<{ storage_key: string; bytes: number }>(
        'SELECT storage_key, bytes FROM media WHERE generation_id = $1',
        [id],
      )
    ).rows;
  const balanceOf = async (userId: string) =>
    (await sql.query<{ b: number }>('SELECT credits_balance AS b FROM users WHERE id = $1', [userId]))
      .rows[0]!.b;
  /** Waits until the generation is running with some progress, optionally under a given worker. */
  const untilRunning = (id: string, by: (workerId: string) => boolean) => {
    let last: GenerationRow | undefined;
    return waitFor(
      `generation ${id} to be processing with progress > 0`,
      async () => {
        last = await row(id);
        return last.status === 'processing' && last.progress > 0 && last.worker_id && by(last.worker_id)
          ? last
          : undefined;
      },
      () => `last row: ${JSON.stringify(last)}`,
    );
  };
  const untilTerminal = (id: string, extra: () => string = () => '') => {
    let last: GenerationRow | undefined;
    return waitFor(
      `generation ${id} to reach a terminal state`,
      async () => {
        last = await row(id);
        return ['completed', 'failed', 'cancelled'].includes(last.status) ? last : undefined;
      },
      () => `last row: ${JSON.stringify(last)} ${extra()}`,
    );
  };
  return { db, sql, dataDir, start, row, ledger, media, balanceOf, untilRunning, untilTerminal };
}

async function createGeneration(t: TestApp, user: SignedUp): Promise<{ id: string; cost: number }> {
  const res = await t.app.inject({
    method: 'POST',
    url: '/api/v1/generations',
    headers: bearer(user.accessToken),
    payload: {
      model_id: 'velro-studio',
      prompt: 'a lighthouse in a storm',
      parameters: { steps: 20, width: 256, height: 256, seed: 7 },
    },
  });
  expect(res.statusCode, res.body).toBe(202);
  return { id: res.json().id as string, cost: res.json().cost_credits as number };
}

/** Starts a child worker, lets it take the generation mid-way, and SIGKILLs it. Returns the kill time. */
async function killMidJob(
  s: Awaited<ReturnType<typeof setting>>,
  id: string,
  env: Record<string, string>,
): Promise<{ killedAt: number; childWorkerPrefix: string }> {
  const worker = spawnWorker(s.db.url, s.dataDir, env);
  const prefix = `${hostname()}:${worker.child.pid}:`;
  let last: GenerationRow | undefined;
  const running = await waitFor(
    `the child worker (pid ${worker.child.pid}) to run generation ${id}`,
    async () => {
      if (worker.child.exitCode !== null)
        throw new Error(`the child worker exited early:\n${worker.output()}`);
      last = await s.row(id);
      return last.status === 'processing' && last.progress > 0 && last.worker_id?.startsWith(prefix)
        ? last
        : undefined;
    },
    () => `last row: ${JSON.stringify(last)}; child output: ${worker.output()}`,
  );
  expect(running.attempt).toBe(1);
  worker.child.kill('SIGKILL');
  const killedAt = Date.now();
  await exited(worker.child);
  expect(worker.child.signalCode).toBe('SIGKILL');
  // Nothing finished it in its last instant: it is still processing, under the dead worker.
  const after = await s.row(id);
  expect(after).toMatchObject({ status: 'processing', attempt: 1 });
  expect(after.progress).toBeLessThan(100);
  return { killedAt, childWorkerPrefix: prefix };
}

describe('a worker killed mid-job', () => {
  it('another worker takes the job over and completes it: one charge, no refund, one media', async () => {
    const s = await setting();
    const api = await s.start({ env: FAST_RECOVERY }); // no worker in this process
    const user = await signUp(api.app);
    const initial = await s.balanceOf(user.id);
    const { id, cost } = await createGeneration(api, user);
    expect(cost).toBe(20);

    const { killedAt } = await killMidJob(s, id, FAST_RECOVERY);

    const rescuer = await s.start({ worker: true, env: FAST_RECOVERY });
    let tookOverAt = 0;
    const unsubscribe = api.pipeline.hub.subscribe(id, (event) => {
      if (event.status === 'processing' && tookOverAt === 0) tookOverAt = Date.now();
    });
    const done = await s.untilTerminal(id);
    const completedAt = Date.now();
    unsubscribe();
    console.info(
      `[worker-crash] kill → taken over by the in-process worker: ${tookOverAt - killedAt} ms; ` +
        `kill → completed: ${completedAt - killedAt} ms`,
    );

    expect(done).toMatchObject({ status: 'completed', progress: 100, worker_id: rescuer.worker!.id });
    expect(done.attempt).toBeGreaterThanOrEqual(2);
    const ledger = await s.ledger(user.id, id);
    expect(ledger.charges).toEqual([-cost]);
    expect(ledger.refunds).toEqual([]);
    expect(ledger.balance).toBe(initial - cost);
    expect(ledger.sum).toBe(ledger.balance);
    const media = await s.media(id);
    expect(media).toHaveLength(1);
    const key = media[0]!.storage_key;
    const file = await stat(join(s.dataDir, 'media', key.slice(0, 2), key.slice(2, 4), key));
    expect(file.size).toBe(Number(media[0]!.bytes));
  }, 45_000);
});

describe('retries exhausted', () => {
  it('with JOB_RETRY_LIMIT=0 the killed job fails and is refunded exactly once, without media', async () => {
    const s = await setting();
    const env = { ...FAST_RECOVERY, JOB_RETRY_LIMIT: '0' };
    const api = await s.start({ env });
    const user = await signUp(api.app);
    const initial = await s.balanceOf(user.id);
    const { id, cost } = await createGeneration(api, user);

    const { killedAt } = await killMidJob(s, id, env);

    await s.start({ worker: true, env });
    const done = await s.untilTerminal(id);
    console.info(`[worker-crash] retries exhausted: kill → failed and refunded: ${Date.now() - killedAt} ms`);

    expect(done.status).toBe('failed');
    expect(done.attempt).toBe(1); // nobody ran it again
    expect(done.error).toMatch(/no retries left/);
    const ledger = await s.ledger(user.id, id);
    expect(ledger.charges).toEqual([-cost]);
    expect(ledger.refunds).toEqual([cost]);
    expect(ledger.balance).toBe(initial);
    expect(ledger.sum).toBe(ledger.balance);
    expect(await s.media(id)).toEqual([]);
  }, 45_000);
});

describe('graceful shutdown hands the job back', () => {
  it('a worker stopped mid-job releases it; another completes it: one charge, no refund', async () => {
    const s = await setting();
    const a = await s.start({ worker: true, env: FAST_RECOVERY });
    const user = await signUp(a.app);
    const initial = await s.balanceOf(user.id);
    const { id, cost } = await createGeneration(a, user);
    const running = await s.untilRunning(id, (w) => w === a.worker!.id);
    expect(running.attempt).toBe(1);

    const stoppedAt = Date.now();
    await a.worker!.stop();
    expect(a.worker!.activeJobs).toBe(0);
    expect(await s.row(id)).toMatchObject({ status: 'pending', attempt: 1, worker_id: null });
    await a.close();

    const b = await s.start({ worker: true, env: FAST_RECOVERY });
    const done = await s.untilTerminal(id);
    console.info(`[worker-crash] graceful stop → completed on another worker: ${Date.now() - stoppedAt} ms`);

    expect(done).toMatchObject({ status: 'completed', progress: 100, worker_id: b.worker!.id, attempt: 2 });
    const ledger = await s.ledger(user.id, id);
    expect(ledger.charges).toEqual([-cost]);
    expect(ledger.refunds).toEqual([]);
    expect(ledger.balance).toBe(initial - cost);
    expect(ledger.sum).toBe(ledger.balance);
    expect(await s.media(id)).toHaveLength(1);
  }, 45_000);
});

describe('a superseded worker cannot overwrite the outcome', () => {
  const media = {
    mime: 'image/png',
    width: 64,
    height: 64,
    bytes: 3,
    sha256: 'a'.repeat(64),
    storage_key: `${'a'.repeat(64)}.png`,
  };

  it('the attempt fence: only the latest claim may heartbeat, progress, complete or fail', async () => {
    const s = await setting();
    const t = await s.start({}); // no worker: the lifecycle is driven by hand
    const db = t.pools.db.generation;
    const user = await signUp(t.app);
    const initial = await s.balanceOf(user.id);
    const { id, cost } = await createGeneration(t, user);

    // The first job carries the generation's id; a job that is not the current one cannot claim.
    expect(await claim(db, id, '00000000-0000-4000-8000-000000000000', 'stranger')).toBeNull();
    expect((await claim(db, id, id, 'old-worker'))?.attempt).toBe(1);
    expect((await claim(db, id, id, 'new-worker'))?.attempt).toBe(2); // a takeover

    expect(await heartbeat(db, id, 1)).toBe(false);
    expect(await reportProgress(db, id, 1, 50)).toBe(false);
    expect(await complete(db, id, 1, [media])).toBe(false);
    expect(await s.media(id)).toEqual([]);
    expect(await endUnfinished(db, id, { status: 'failed', error: 'stale attempt', attempt: 1 })).toBe(false);
    expect(await s.row(id)).toMatchObject({
      status: 'processing',
      attempt: 2,
      worker_id: 'new-worker',
      progress: 0,
    });
    expect((await s.ledger(user.id, id)).refunds).toEqual([]);

    expect(await heartbeat(db, id, 2)).toBe(true);
    expect(await complete(db, id, 2, [media])).toBe(true);
    expect(await s.row(id)).toMatchObject({ status: 'completed', attempt: 2, progress: 100 });
    expect(await s.media(id)).toHaveLength(1);
    // Finished is final: neither a late failure of the old attempt nor a cancel refunds it.
    expect(await endUnfinished(db, id, { status: 'failed', error: 'late', attempt: 1 })).toBe(false);
    expect(await endUnfinished(db, id, { status: 'cancelled', error: 'late', attempt: null })).toBe(false);
    expect(await complete(db, id, 2, [media])).toBe(false);
    expect(await s.media(id)).toHaveLength(1);

    const ledger = await s.ledger(user.id, id);
    expect(ledger.charges).toEqual([-cost]);
    expect(ledger.refunds).toEqual([]);
    expect(ledger.balance).toBe(initial - cost);
    expect(ledger.sum).toBe(ledger.balance);
  });

  it('two concurrent unfenced endings: one wins and refunds once; the ledger refuses a second', async () => {
    const s = await setting();
    const t = await s.start({});
    const user = await signUp(t.app);
    const initial = await s.balanceOf(user.id);
    for (let round = 0; round < 4; round++) {
      const { id, cost } = await createGeneration(t, user);
      // Half the rounds race on a running generation, half on a pending one.
      if (round % 2 === 1) await claim(t.pools.db.generation, id, id, 'some-worker');
      // Two pools, so the two transactions really run side by side.
      const results = await Promise.all([
        endUnfinished(t.pools.db.generation, id, { status: 'failed', error: 'worker', attempt: null }),
        endUnfinished(t.pools.db.write_heavy, id, { status: 'cancelled', error: 'user', attempt: null }),
      ]);
      expect(results.filter(Boolean), `round ${round}`).toHaveLength(1);
      const ledger = await s.ledger(user.id, id);
      expect(ledger.charges).toEqual([-cost]);
      expect(ledger.refunds).toEqual([cost]);
      expect(['failed', 'cancelled']).toContain((await s.row(id)).status);

      const again = s.sql.query(
        `INSERT INTO credit_transactions (user_id, amount, balance_after, reason, generation_id)
         VALUES ($1, $2, 0, 'generation_refund', $3)`,
        [user.id, cost, id],
      );
      await expect(again).rejects.toMatchObject({ code: '23505' });
    }
    const balance = await s.balanceOf(user.id);
    expect(balance).toBe(initial);
  });
});
