import { EventEmitter } from 'node:events';
import pg from 'pg';

export interface ListenerOptions {
  url: string;
  channels: string[];
  /** A query on the connection this often proves it is alive; a dead one is replaced. */
  keepaliveMs?: number;
  onError: (error: Error) => void;
}

/**
 * One dedicated connection LISTENing on a few channels for this process. It emits
 * `notification` (channel, payload) for each NOTIFY, and `connected` each time it (re)connects:
 * notifications sent while it was away are lost, so subscribers that depend on seeing every one
 * (cache invalidation) treat `connected` as "distrust what you learned before".
 */
export class PgListener extends EventEmitter {
  private client: pg.Client | null = null;
  private closed = false;
  private keepalive: NodeJS.Timeout | null = null;
  private reconnectDelayMs = 100;
  private connecting: Promise<void> | null = null;

  constructor(private readonly options: ListenerOptions) {
    super();
    this.setMaxListeners(0);
  }

  /** Resolves once listening; rejects if the first connection fails. Later failures reconnect. */
  async start(): Promise<void> {
    await this.connect();
  }

  get connected(): boolean {
    return this.client !== null;
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
    const client = new pg.Client({
      connectionString: this.options.url,
      application_name: 'velro_listener',
      keepAlive: true,
      connectionTimeoutMillis: 5_000,
    });
    client.on('notification', (message) => this.emit('notification', message.channel, message.payload ?? ''));
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client, new Error('listener connection ended')));
    await client.connect();
    for (const channel of this.options.channels) await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    if (this.closed) {
      await client.end().catch(() => {});
      return;
    }
    this.client = client;
    this.reconnectDelayMs = 100;
    const every = this.options.keepaliveMs ?? 5_000;
    this.keepalive = setInterval(() => {
      client.query('SELECT 1').catch((error: Error) => this.lost(client, error));
    }, every);
    this.keepalive.unref();
    this.emit('connected');
  }

  private lost(client: pg.Client, error: Error) {
    if (this.client !== client) return;
    this.client = null;
    if (this.keepalive) clearInterval(this.keepalive);
    this.keepalive = null;
    client.removeAllListeners('notification');
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
    if (this.keepalive) clearInterval(this.keepalive);
    const client = this.client;
    this.client = null;
    if (client) await client.end().catch(() => {});
  }
}

/** NOTIFY inside the caller's transaction: delivered when, and only if, it commits. */
export const NOTIFY_SQL = 'SELECT pg_notify($1, $2)';
