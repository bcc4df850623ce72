import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { freePort } from './children.js';

/**
 * A throwaway redis-server on loopback for a bench run without REDIS_URL, so velro_l2 is measured
 * in every full run rather than skipped; null when no redis-server is installed. Nothing is kept
 * on disk; `stop` ends it.
 */
export async function startLocalRedis(): Promise<{ url: string; stop: () => Promise<void> } | null> {
  if (spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status !== 0) return null;
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' },
  );
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 50 });
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        await client.connect();
        await client.ping();
        break;
      } catch (error) {
        client.disconnect();
        if (attempt >= 100 || child.exitCode !== null) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  } finally {
    client.disconnect();
  }
  return {
    url,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}
