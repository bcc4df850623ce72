import { connect, createServer, type Server, type Socket } from 'node:net';
import { throughPort } from './tcp-proxy.js';

interface Relay {
  client: Socket;
  upstream: Socket;
  /** Known once the client's startup message arrived. */
  listener: boolean | null;
  frozen: boolean;
}

/**
 * A TCP relay in front of PostgreSQL that treats the LISTEN connection of an instance differently
 * from its pools. It recognises that connection by the `application_name` in its startup message
 * (`velro_listener`), so an instance behind it uses it for everything as it would in production.
 *
 * - `delayMs`: what the server sends on listener connections arrives this much later, in order
 *   (NOTIFYs late, like an instance on another host or under load); pool connections are untouched.
 * - `freezeListeners()`: the listener connections open now go silent — bytes held both ways, no
 *   FIN, no RST, TCP keepalive still answered by this relay — which is what a NAT or load balancer
 *   that dropped an idle connection looks like. Connections opened later work.
 */
export class ListenerProxy {
  delayMs = 0;
  port = 0;
  private server: Server | null = null;
  private readonly relays = new Set<Relay>();

  constructor(
    private readonly host: string,
    private readonly targetPort: number,
  ) {}

  static forUrl(url: string): ListenerProxy {
    const parsed = new URL(url);
    return new ListenerProxy(parsed.hostname, Number(parsed.port || 5432));
  }

  /** The same URL, through this relay. */
  wrap(url: string): string {
    return throughPort(url, this.port);
  }

  async start(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.targetPort, this.host);
      const relay: Relay = { client, upstream, listener: null, frozen: false };
      this.relays.add(relay);
      for (const socket of [client, upstream]) socket.on('error', () => {});
      client.on('close', () => {
        this.relays.delete(relay);
        upstream.destroy();
      });
      upstream.on('close', () => {
        // Late bytes first, then the close.
        setTimeout(() => client.destroy(), relay.listener ? this.delayMs + 1 : 0);
      });
      client.on('data', (chunk) => {
        if (relay.listener === null) relay.listener = chunk.includes('velro_listener');
        if (!relay.frozen) upstream.write(chunk);
      });
      upstream.on('data', (chunk) => {
        if (relay.frozen) return;
        if (!relay.listener || this.delayMs === 0) {
          client.write(chunk);
          return;
        }
        setTimeout(() => {
          if (!relay.frozen && !client.destroyed) client.write(chunk);
        }, this.delayMs);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const address = server.address();
    if (address && typeof address === 'object') this.port = address.port;
    this.server = server;
  }

  /** Listener connections open now. */
  get listenerConnections(): number {
    let n = 0;
    for (const relay of this.relays) if (relay.listener && !relay.client.destroyed) n += 1;
    return n;
  }

  /** Silences every listener connection open now (see the class comment). Returns how many. */
  freezeListeners(): number {
    let n = 0;
    for (const relay of this.relays) {
      if (!relay.listener || relay.frozen) continue;
      relay.frozen = true;
      n += 1;
    }
    return n;
  }

  async close(): Promise<void> {
    for (const relay of this.relays) {
      relay.client.destroy();
      relay.upstream.destroy();
    }
    this.relays.clear();
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
