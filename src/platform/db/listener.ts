import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
import pg from 'pg';

export interface ListenerOptions {
  url: string;
  channels: string[];
  /** How often a heartbeat NOTIFY is sent round through the database on this connection. */
  heartbeatMs?: number;
  /**
   * How long a heartbeat's proof lasts. With no heartbeat back for this long the connection counts
   * as dead, even if its socket looks open (a NAT or load balancer that dropped it silently), and is
   * replaced.
   */
  leaseMs?: number;
  onError: (error: Error) => void;
}

export const DEFAULT_HEARTBEAT_MS = 500;
export const DEFAULT_LEASE_MS = 2_000;

/**
 * One dedicated connection LISTENing on a few channels for this process. Emits:
 * - `notification` (channel, payload) for each NOTIFY;
 * - `connected` each time it (re)connects, and `disconnected` when it is lost: notifications sent
 *   while it was away are lost, so subscribers that depend on seeing every one (cache
 *   invalidation) treat a reconnection as "distrust what you learned before";
 * - `proof` (sentAt, revision): a heartbeat came back. PostgreSQL delivers notifications in commit
 *   order, so by then every NOTIFY committed before `sentAt` (a `performance.now()` time) has been
 *   delivered here, and `revision` is the authorization revision the heartbeat's statement saw.
 *
 * The heartbeat is `SELECT pg_notify(<own channel>, …)` on this very connection: a reply proves the
 * socket, the server session and the notification queue all work, which a plain `SELECT 1` (or TCP
 * keepalive) does not prove about the notification path.
 */
export class PgListener extends EventEmitter {
  private client: pg.Client | null = null;
  private socket: Socket | null = null;
  private closed = false;
  private ticker: NodeJS.Timeout | null = null;
  private reconnectDelayMs = 100;
  private connecting: Promise<void> | null = null;
  /** Each listener has its own heartbeat channel: the others never see its heartbeats. */
  private readonly heartbeatChannel = `velro_hb_${randomBytes(6).toString('hex')}`;
  private heartbeatSeq = 0;
  private heartbeatInFlight = false;
  /** Heartbeats on their way: sequence number → when it was sent. */
  private readonly outstanding = new Map<number, number>();
  /** When the latest heartbeat that came back was sent (or the connection opened). */
  private provenAt = 0;
  readonly heartbeatMs: number;
  readonly leaseMs: number;
  /** Connections declared dead because no heartbeat came back within the lease. */
  silentLosses = 0;

  constructor(private readonly options: ListenerOptions) {
    super();
    this.setMaxListeners(0);
    this.heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    if (this.heartbeatMs * 2 > this.leaseMs)
      throw new Error('the listener lease must be at least twice the heartbeat interval');
  }

  /** Resolves once listening; rejects if the first connection fails. Later failures reconnect. */
  async start(): Promise<void> {
    await this.connect();
  }

  get connected(): boolean {
    return this.client !== null;
  }

  /** The heartbeat channel (for tests that hold or drop it). */
  get ownChannel(): string {
    return this.heartbeatChannel;
  }

  /** Sends a heartbeat now and resolves when it comes back (false: lost or not back within the lease). */
  async proveLive(): Promise<boolean> {
    const client = this.client;
    if (!client) return false;
    // A heartbeat already on its way proves as much as a new one would.
    const seq = this.heartbeatInFlight ? this.heartbeatSeq : this.sendHeartbeat(client);
    if (seq === null) return false;
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(false), this.leaseMs);
      const onProof = (_sentAt: number, _rev: number, provenSeq: number) => {
        if (provenSeq >= seq) done(true);
      };
      const onLost = () => done(false);
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.off('proof', onProof);
        this.off('disconnected', onLost);
        resolve(ok);
      };
      this.on('proof', onProof);
      this.on('disconnected', onLost);
    });
  }

  private connect(): Promise<void> {
    if (!this.connecting) {
      this.connecting = this.open().finally(() => {
        this.connecting = null;
      });
    }
    return this.connecting;
  }

  private async open(): Promise<void> {
    let socket: Socket | null = null;
    const client = new pg.Client({
      connectionString: this.options.url,
      application_name: 'velro_listener',
      keepAlive: true,
      connectionTimeoutMillis: 5_000,
      // Our own socket, so a silent connection can be torn down at once (ending it politely waits
      // for an answer that will never come).
      stream: () => {
        socket = new Socket();
        return socket;
      },
    });
    client.on('notification', (message) => this.received(client, message.channel, message.payload ?? ''));
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client, new Error('listener connection ended')));
    try {
      await client.connect();
      for (const channel of [...this.options.channels, this.heartbeatChannel])
        await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    } catch (error) {
      (socket as Socket | null)?.destroy();
      throw error;
    }
    if (this.closed) {
      (socket as Socket | null)?.destroy();
      return;
    }
    this.client = client;
    this.socket = socket;
    this.reconnectDelayMs = 100;
    this.outstanding.clear();
    this.heartbeatInFlight = false;
    // Until a heartbeat returns, the connection has proved nothing about notifications.
    this.provenAt = Number.NEGATIVE_INFINITY;
    this.ticker = setInterval(() => this.tick(client), this.heartbeatMs);
    this.ticker.unref();
    this.emit('connected');
    this.sendHeartbeat(client);
  }

  private received(client: pg.Client, channel: string, payload: string): void {
    if (this.client !== client) return;
    if (channel !== this.heartbeatChannel) {
      this.emit('notification', channel, payload);
      return;
    }
    const colon = payload.indexOf(':');
    const seq = Number(payload.slice(0, colon));
    const rev = Number(payload.slice(colon + 1));
    const sentAt = this.outstanding.get(seq);
    if (sentAt === undefined) return;
    // Delivered in order: every heartbeat sent before this one is through (or lost) as well.
    for (const earlier of this.outstanding.keys()) if (earlier <= seq) this.outstanding.delete(earlier);
    if (sentAt > this.provenAt) this.provenAt = sentAt;
    this.emit('proof', sentAt, rev, seq);
  }

  /**
   * Sends one heartbeat; null when the connection cannot take it now (gone, or the previous
   * heartbeat's statement has not answered: they never pile up on a silent connection).
   */
  private sendHeartbeat(client: pg.Client): number | null {
    if (this.client !== client || this.heartbeatInFlight) return null;
    this.heartbeatSeq += 1;
    const seq = this.heartbeatSeq;
    this.outstanding.set(seq, performance.now());
    this.heartbeatInFlight = true;
    client
      .query("SELECT pg_notify($1, $2 || ':' || (SELECT rev FROM authz_revision WHERE id))", [
        this.heartbeatChannel,
        String(seq),
      ])
      .then(
        () => {
          if (this.client === client) this.heartbeatInFlight = false;
        },
        (error: Error) => {
          if (this.client === client) this.heartbeatInFlight = false;
          this.lost(client, error);
        },
      );
    return seq;
  }

  private tick(client: pg.Client): void {
    if (this.client !== client) return;
    const now = performance.now();
    if (now - this.provenAt > this.leaseMs && this.oldestOutstanding() <= now - this.leaseMs) {
      // Give I/O already waiting (a heartbeat reply held up by a busy event loop) one chance to be
      // read before the connection is judged: setImmediate runs after the poll phase.
      setImmediate(() => {
        if (this.client !== client) return;
        const later = performance.now();
        if (later - this.provenAt <= this.leaseMs) return;
        this.silentLosses += 1;
        this.lost(client, new Error(`no heartbeat came back within ${this.leaseMs} ms: connection replaced`));
      });
      return;
    }
    this.sendHeartbeat(client);
  }

  private oldestOutstanding(): number {
    let oldest = Number.POSITIVE_INFINITY;
    for (const sentAt of this.outstanding.values()) if (sentAt < oldest) oldest = sentAt;
    return oldest;
  }

  private lost(client: pg.Client, error: Error) {
    if (this.client !== client) return;
    this.client = null;
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = null;
    this.outstanding.clear();
    client.removeAllListeners('notification');
    this.socket?.destroy();
    this.socket = null;
    client.end().catch(() => {});
    if (this.closed) return;
    this.emit('disconnected');
    this.options.onError(error);
    this.scheduleReconnect();
  }

  private scheduleReconnect() {
    const delay = this.reconnectDelayMs;
    this.reconnectDelayMs = Math.min(this.reconnectDelayMs * 2, 5_000);
    setTimeout(() => {
      if (this.closed) return;
      this.connect().catch((error: Error) => {
        this.options.onError(error);
        this.scheduleReconnect();
      });
    }, delay).unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.ticker) clearInterval(this.ticker);
    const client = this.client;
    this.client = null;
    if (client) await client.end().catch(() => {});
    this.socket?.destroy();
    this.socket = null;
  }
}

/** NOTIFY inside the caller's transaction: delivered when, and only if, it commits. */
export const NOTIFY_SQL = 'SELECT pg_notify($1, $2)';
