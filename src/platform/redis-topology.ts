/**
 * Which Redis deployment the configuration names, checked at start-up. Three ways, exactly one at
 * a time:
 *
 * - `REDIS_URL`: one server (`redis://[:password@]host:port[/db]`, `rediss://` for TLS).
 * - `REDIS_SENTINELS` (+ `REDIS_SENTINEL_MASTER`, `REDIS_SENTINEL_PASSWORD`): the sentinels are
 *   asked where the current master of that name is; the client follows failovers.
 * - `REDIS_CLUSTER_NODES`: seed nodes of a Redis Cluster; the client learns the rest.
 *
 * In the last two, the data nodes' password is `REDIS_PASSWORD` (a URL would name one server, and
 * a REDIS_URL next to them would make it ambiguous which Redis is meant); their database is 0 (the
 * only one a Cluster has; `REDIS_KEY_PREFIX` separates deployments sharing a Redis).
 *
 * No imports: the configuration, the client factory and the CLI all read it.
 */

export interface HostPort {
  host: string;
  port: number;
}

export type RedisTopology =
  | { mode: 'single'; url: string }
  | {
      mode: 'sentinel';
      sentinels: HostPort[];
      master: string;
      sentinelPassword?: string;
      password?: string;
    }
  | { mode: 'cluster'; nodes: HostPort[]; password?: string };

export interface RedisSettings {
  REDIS_URL?: string | undefined;
  REDIS_SENTINELS?: string | undefined;
  REDIS_SENTINEL_MASTER: string;
  REDIS_SENTINEL_PASSWORD?: string | undefined;
  REDIS_CLUSTER_NODES?: string | undefined;
  REDIS_PASSWORD?: string | undefined;
}

/** `host:port,host:port` (IPv6 as `[::1]:26379`); a missing port is `defaultPort`. */
export function parseHostPorts(variable: string, list: string, defaultPort: number): HostPort[] {
  const entries = list
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
  if (entries.length === 0) throw new Error(`${variable} names no host:port`);
  return entries.map((entry) => {
    const match = /^(?:\[([^\]]+)\]|([^:[\]\s]+))(?::(\d+))?$/.exec(entry);
    const port = match?.[3] === undefined ? defaultPort : Number(match[3]);
    if (!match || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw new Error(`${variable}: '${entry}' is not host:port`);
    }
    return { host: (match[1] ?? match[2]) as string, port };
  });
}

/** The deployment the settings name, or null without Redis; throws on a conflicting combination. */
export function redisTopology(settings: RedisSettings): RedisTopology | null {
  const named = (['REDIS_URL', 'REDIS_SENTINELS', 'REDIS_CLUSTER_NODES'] as const).filter(
    (key) => settings[key] !== undefined && settings[key] !== '',
  );
  if (named.length > 1) {
    throw new Error(
      `${named.join(' and ')} are set: they are different ways to reach Redis (one server, Sentinel, ` +
        'Cluster); set exactly one. With Sentinel or Cluster, the password of the data nodes goes in REDIS_PASSWORD',
    );
  }
  const mode = named[0];
  if (settings.REDIS_PASSWORD && mode !== 'REDIS_SENTINELS' && mode !== 'REDIS_CLUSTER_NODES') {
    throw new Error(
      mode === 'REDIS_URL'
        ? 'REDIS_PASSWORD is for Sentinel and Cluster; with REDIS_URL put the password in the URL (redis://:password@host:port)'
        : 'REDIS_PASSWORD is set but no Redis is configured (REDIS_SENTINELS or REDIS_CLUSTER_NODES)',
    );
  }
  if (settings.REDIS_SENTINEL_PASSWORD && mode !== 'REDIS_SENTINELS') {
    throw new Error('REDIS_SENTINEL_PASSWORD is set without REDIS_SENTINELS');
  }
  const password = settings.REDIS_PASSWORD ? { password: settings.REDIS_PASSWORD } : {};
  switch (mode) {
    case 'REDIS_URL':
      return { mode: 'single', url: settings.REDIS_URL as string };
    case 'REDIS_SENTINELS':
      return {
        mode: 'sentinel',
        sentinels: parseHostPorts('REDIS_SENTINELS', settings.REDIS_SENTINELS as string, 26379),
        master: settings.REDIS_SENTINEL_MASTER,
        ...(settings.REDIS_SENTINEL_PASSWORD ? { sentinelPassword: settings.REDIS_SENTINEL_PASSWORD } : {}),
        ...password,
      };
    case 'REDIS_CLUSTER_NODES':
      return {
        mode: 'cluster',
        nodes: parseHostPorts('REDIS_CLUSTER_NODES', settings.REDIS_CLUSTER_NODES as string, 6379),
        ...password,
      };
    default:
      return null;
  }
}

const hostPort = ({ host, port }: HostPort) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

/** One line for people (banner, status, logs): never a password. */
export function describeRedisTopology(topology: RedisTopology): string {
  switch (topology.mode) {
    case 'single':
      return withoutPassword(topology.url);
    case 'sentinel':
      return `Sentinel, master '${topology.master}' via ${topology.sentinels.map(hostPort).join(', ')}`;
    case 'cluster':
      return `Cluster, seed nodes ${topology.nodes.map(hostPort).join(', ')}`;
  }
}

function withoutPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '*****';
    return parsed.toString();
  } catch {
    return url;
  }
}
