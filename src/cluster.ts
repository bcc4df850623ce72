import cluster, { type Worker } from 'node:cluster';
import type { FastifyBaseLogger } from 'fastify';
import type { Config } from './config.js';
import { createLogger, prettyDestination, wantsPrettyLogs } from './logger.js';
import { provisionDatabase } from './platform/db/database.js';
import { serveClusterMetrics } from './platform/observability/cluster-metrics.js';
import { resolveSecrets } from './platform/security/secrets.js';
import { announceReady, READY_MESSAGE, SHUTDOWN_MESSAGE } from './server.js';

/** A worker that exits this many times in a row before it ever listened means the service cannot start. */
const FAILED_STARTS_BEFORE_GIVING_UP = 3;
const RESTART_DELAY_MIN_MS = 100;
const RESTART_DELAY_MAX_MS = 10_000;

/**
 * The primary of `WEB_CONCURRENCY` server processes sharing one port (node:cluster hands each new
 * connection to the next process). It serves no requests itself. Before forking it does what the
 * processes must agree on: the signing secrets (generated once in DATA_DIR when not configured, or
 * each process would invent its own and reject the others' tokens), and the database (the embedded
 * PostgreSQL is started and migrated here, so the processes join it and the primary, leaving last,
 * stops it after every process has drained). It restarts a process that crashes, with a growing
 * delay while crashes repeat; on SIGTERM or SIGINT it tells every process to drain and waits.
 */
export async function runPrimary(config: Config, processes: number): Promise<void> {
  const pretty = wantsPrettyLogs(config);
  const logger = createLogger(config, pretty ? await prettyDestination() : undefined);
  const log = { info: (m: string) => logger.info(m), debug: (m: string) => logger.debug(m) };
  let database: Awaited<ReturnType<typeof provisionDatabase>>;
  try {
    await resolveSecrets(config, (m) => logger.warn(m));
    database = await provisionDatabase(config, log);
  } catch (error) {
    logger.fatal({ err: error }, 'could not start');
    process.exit(1);
  }
  serveClusterMetrics();

  const supervisor = new Supervisor(logger, processes, async (port) => {
    announceReady(logger, config, port, database.url, pretty, processes);
  });
  let stopping = false;
  const stop = async (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: stopping every server process now');
      supervisor.killAll();
      return;
    }
    stopping = true;
    logger.info({ signal, processes: supervisor.count() }, 'stopping: every server process drains');
    const clean = await supervisor.stopAll(config.SHUTDOWN_GRACE_MS + 5_000);
    await database.stop?.();
    logger.info('stopped');
    process.exit(clean ? 0 : 1);
  };
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(signal, () => void stop(signal));
  supervisor.onGiveUp = async (reason) => {
    logger.fatal(reason);
    stopping = true;
    await supervisor.stopAll(config.SHUTDOWN_GRACE_MS);
    await database.stop?.();
    process.exit(1);
  };
  supervisor.start();
}

class Supervisor {
  private readonly workers = new Set<Worker>();
  private readonly listened = new WeakSet<Worker>();
  private stopping = false;
  private failedStarts = 0;
  private recentCrashes: number[] = [];
  private announced = false;
  onGiveUp: (reason: string) => Promise<void> = async () => undefined;

  constructor(
    private readonly logger: FastifyBaseLogger,
    private readonly size: number,
    private readonly onAllReady: (port: number) => Promise<void>,
  ) {}

  start(): void {
    for (let i = 0; i < this.size; i++) this.fork();
  }

  count(): number {
    return this.workers.size;
  }

  private fork(): void {
    const worker = cluster.fork();
    this.workers.add(worker);
    worker.on('message', (message: { type?: unknown; port?: unknown }) => {
      if (message?.type !== READY_MESSAGE) return;
      this.listened.add(worker);
      this.failedStarts = 0;
      this.logger.info({ worker_pid: worker.process.pid }, 'server process joined');
      const ready = [...this.workers].filter((w) => this.listened.has(w)).length;
      if (!this.announced && ready === this.size && typeof message.port === 'number') {
        this.announced = true;
        void this.onAllReady(message.port);
      }
    });
    worker.on('exit', (code, signal) => {
      this.workers.delete(worker);
      if (this.stopping) return;
      const pid = worker.process.pid;
      if (!this.listened.has(worker)) {
        this.failedStarts += 1;
        if (this.failedStarts >= FAILED_STARTS_BEFORE_GIVING_UP) {
          void this.onGiveUp(
            `a server process failed to start ${this.failedStarts} times in a row; giving up`,
          );
          return;
        }
      }
      const now = Date.now();
      this.recentCrashes = this.recentCrashes.filter((t) => now - t < 60_000);
      this.recentCrashes.push(now);
      const delay = Math.min(
        RESTART_DELAY_MIN_MS * 2 ** (this.recentCrashes.length - 1),
        RESTART_DELAY_MAX_MS,
      );
      this.logger.error(
        { worker_pid: pid, code, signal, restart_in_ms: delay },
        'server process exited; starting another',
      );
      setTimeout(() => {
        if (!this.stopping) this.fork();
      }, delay).unref();
    });
  }

  /** Asks every process to drain; true when all exited with 0 within the time given. */
  async stopAll(timeoutMs: number): Promise<boolean> {
    this.stopping = true;
    const exits = [...this.workers].map(
      (worker) =>
        new Promise<boolean>((resolve) => {
          if (worker.isDead()) return resolve(worker.process.exitCode === 0);
          worker.once('exit', (code) => resolve(code === 0));
          if (worker.isConnected()) worker.send({ type: SHUTDOWN_MESSAGE });
          else worker.process.kill('SIGTERM');
        }),
    );
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const clean = await Promise.race([Promise.all(exits).then((all) => all.every(Boolean)), timedOut]);
    clearTimeout(timer);
    if (!clean) this.killAll();
    return clean;
  }

  killAll(): void {
    this.stopping = true;
    for (const worker of this.workers) worker.process.kill('SIGKILL');
  }
}
