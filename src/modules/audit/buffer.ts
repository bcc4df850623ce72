import type { Kysely } from 'kysely';
import type { DB } from '../../platform/db/schema.js';
import { type AuditEvent, auditRow } from './service.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Writes the queued denial audit events now; resolves once they are in the database (or logged as failed). */
    flushAudit(): Promise<void>;
  }
}

const FLUSH_EVERY_MS = 200;
const FLUSH_AT = 500;
/** Past this, events are dropped (and counted) rather than growing memory while the database is away. */
const MAX_PENDING = 50_000;

/**
 * Audit events that must not slow the request that caused them (authorization denials): queued in
 * memory and written in multi-row inserts a few times a second. Writes that must commit together
 * with their event (membership changes, key revocations) use `recordAudit` inside their transaction.
 */
export class AuditBuffer {
  private pending: AuditEvent[] = [];
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  dropped = 0;
  written = 0;

  constructor(
    private readonly db: Kysely<DB>,
    private readonly onError: (error: unknown) => void,
  ) {}

  record(event: AuditEvent): void {
    if (this.pending.length >= MAX_PENDING) {
      this.dropped += 1;
      return;
    }
    this.pending.push(event);
    if (this.pending.length >= FLUSH_AT) void this.flush();
    else if (!this.timer) this.timer = setTimeout(() => void this.flush(), FLUSH_EVERY_MS);
  }

  /** Writes everything queued so far; resolves when it is in the database (or failed and was logged). */
  async flush(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.flushing) await this.flushing;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.flushing = this.db
      .insertInto('audit_events')
      .values(batch.map(auditRow))
      .execute()
      .then(
        () => {
          this.written += batch.length;
        },
        (error: unknown) => {
          this.dropped += batch.length;
          this.onError(error);
        },
      )
      .finally(() => {
        this.flushing = null;
      });
    await this.flushing;
  }
}
