import type { Config } from './config.js';

/** Where a person reaches the service: the API, its documentation and the live dashboard. */
export interface ServiceUrls {
  base: string;
  api: string;
  docs: string;
  dashboard: string;
}

/**
 * A wildcard listen address (0.0.0.0, ::) is not something to type into a browser: this machine
 * answers on the loopback address.
 */
export function serviceUrls(config: Pick<Config, 'HOST' | 'PORT'>, port = config.PORT): ServiceUrls {
  const host =
    config.HOST === '0.0.0.0' || config.HOST === ''
      ? '127.0.0.1'
      : config.HOST === '::'
        ? '[::1]'
        : config.HOST;
  const shown = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  const base = `http://${shown}:${port}`;
  return { base, api: `${base}/api/v1`, docs: `${base}/docs`, dashboard: `${base}/dashboard` };
}

/** A connection string with its password replaced, for logs. */
export function withoutPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '*****';
    return parsed.toString();
  } catch {
    return '(unparsable connection string)';
  }
}

/** The lines printed once the service listens. */
export function startupBanner(input: {
  urls: ServiceUrls;
  database: string;
  databaseKind: string;
  /** A URL (its password is hidden here) or a description of Sentinel/Cluster (none to hide). */
  redis: string | null;
  listening: string;
}): string {
  const rows: [string, string][] = [
    ['API', input.urls.api],
    ['Docs', input.urls.docs],
    ['Dashboard', input.urls.dashboard],
    ['Database', `${withoutPassword(input.database)} (${input.databaseKind})`],
    [
      'Redis',
      input.redis
        ? input.redis.includes('://')
          ? withoutPassword(input.redis)
          : input.redis
        : 'not configured (caches and rate limits stay in each process)',
    ],
    ['Listening on', input.listening],
  ];
  return ['Velro is ready', ...rows.map(([name, value]) => `  ${name.padEnd(13)}${value}`)].join('\n');
}
