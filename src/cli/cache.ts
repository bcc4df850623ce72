import { flushEverywhere } from '../platform/cache/revision.js';
import {
  CliError,
  type Command,
  HELP_OPTION,
  integerOption,
  JSON_OPTION,
  type OptionValues,
  stringOption,
  usageError,
} from './output.js';

/**
 * The caches live in the server processes, so stats and warm go through a running instance's admin
 * API. flush can do either: through the API (--url), or with no server at all, straight in the
 * database: the same flush as POST /admin/cache/flush (flushEverywhere) bumps the authorization
 * revision with a flush floor and announces key '*', so every instance listening flushes its L1, and
 * shared L2 entries read before that revision are ignored by every instance, now and later.
 */

interface Server {
  url: string;
  token: string;
}

function serverOf(values: OptionValues, action: string, required: boolean): Server | null {
  const url = stringOption(values, 'url') ?? process.env.VELRO_URL;
  const token = stringOption(values, 'token') ?? process.env.VELRO_TOKEN;
  if (!url) {
    if (!required) return null;
    throw usageError(
      `cache ${action} asks a running server: give --url (or VELRO_URL) and --token (or VELRO_TOKEN)`,
    );
  }
  if (!token) {
    throw usageError(
      `cache ${action} needs --token (or VELRO_TOKEN): an administrator's access token or a service key with the admin scope`,
    );
  }
  try {
    new URL(url);
  } catch {
    throw usageError(`--url is not a URL: ${url}`);
  }
  return { url: url.replace(/\/+$/, ''), token };
}

async function call(server: Server, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(`${server.url}/api/v1${path}`, {
      method,
      headers: {
        authorization: `Bearer ${server.token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(120_000),
    });
  } catch (error) {
    const reason =
      error instanceof Error ? ((error.cause as Error | undefined)?.message ?? error.message) : String(error);
    throw new CliError(`could not reach ${server.url}: ${reason}`, 1, 'unreachable');
  }
  const payload: unknown = await response.json().catch(() => null);
  if (!response.ok) {
    const envelope = (payload as { error?: { code?: string; message?: string } } | null)?.error;
    throw new CliError(
      `${method} ${path} answered ${response.status}: ${envelope?.message ?? response.statusText}`,
      1,
      envelope?.code ?? `http_${response.status}`,
    );
  }
  return payload;
}

export const cache: Command = {
  name: 'cache',
  summary: 'cache stats and warm (through a running server), flush (server or database)',
  help: `usage: velro cache stats --url URL --token TOKEN [--json]
       velro cache warm  --url URL --token TOKEN [--limit N] [--no-refresh-views] [--json]
       velro cache flush [--url URL --token TOKEN] [--json]

The caches live in the running instances:
  stats   that instance's hits, misses, evictions and bytes per layer, and its invalidation bus
  warm    refreshes the access-pattern views and loads the hottest users' and generations' facts
  flush   empties every instance's L1 and retires every shared L2 entry read before now. With --url
          it asks that server; without, it does the same directly in the database (DATABASE_URL,
          else the embedded one in DATA_DIR): every instance listening hears it and flushes, and
          instances started later ignore older L2 entries. Works with no instance running.

  --url URL              the server, e.g. http://127.0.0.1:3000 (or VELRO_URL)
  --token TOKEN          an administrator's access token, or a service key with the admin scope (or VELRO_TOKEN)
  --limit N              warm: how many users and generations (default: the server's CACHE_WARM_LIMIT)
  --no-refresh-views     warm: use the views as they are
  --json                 print the result as JSON
`,
  options: {
    url: { type: 'string' },
    token: { type: 'string' },
    limit: { type: 'string' },
    'no-refresh-views': { type: 'boolean', default: false },
    ...JSON_OPTION,
    ...HELP_OPTION,
  },
  async run({ values, positionals, out }) {
    const action = positionals[0];
    if (positionals.length > 1) throw usageError(`unexpected argument: ${positionals[1]}`);
    if (action === 'stats') {
      const server = serverOf(values, action, true) as Server;
      const stats = await call(server, 'GET', '/admin/cache/stats');
      out.result(JSON.stringify(stats, null, 2), stats);
      return;
    }
    if (action === 'warm') {
      const server = serverOf(values, action, true) as Server;
      const limit = integerOption(values, 'limit', 1, 1_000_000);
      const report = (await call(server, 'POST', '/admin/cache/warm', {
        ...(limit !== undefined ? { limit } : {}),
        refresh_views: values['no-refresh-views'] !== true,
      })) as { subjects: number; generations: number; ms: number; views_refreshed: boolean };
      out.result(
        `warmed ${report.subjects} users and ${report.generations} generations in ${report.ms} ms${report.views_refreshed ? ' (views refreshed)' : ''}`,
        report,
      );
      return;
    }
    if (action === 'flush') {
      const server = serverOf(values, action, false);
      if (server) {
        const done = (await call(server, 'POST', '/admin/cache/flush')) as { flushed_at_revision: number };
        out.result(`flushed at revision ${done.flushed_at_revision} (through ${server.url})`, {
          ...done,
          via: 'api',
        });
        return;
      }
      const { withDatabase } = await import('./database.js');
      const revision = await withDatabase(({ pools }) => flushEverywhere(pools.pg.write_heavy));
      out.result(`flushed at revision ${revision} (announced in the database to every instance)`, {
        flushed_at_revision: revision,
        via: 'database',
      });
      return;
    }
    throw usageError(
      action ? `unknown cache action: ${action} (stats, warm or flush)` : 'say stats, warm or flush',
    );
  },
};
