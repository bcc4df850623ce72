import type { Config } from '../../src/config.js';
import { type AuthzEngine, createAuthzEngine } from '../../src/modules/authz/engine.js';
import { createFactsLoader } from '../../src/modules/authz/facts.js';
import { FactCache } from '../../src/platform/cache/fact-cache.js';
import { Pools } from '../../src/platform/db/pools.js';
import type { Cleanup } from './world.js';

export interface BenchEngine {
  pools: Pools;
  cache: FactCache;
  engine: AuthzEngine;
}

/**
 * The authorization engine as src/runtime.ts and src/app.ts build it, for the in-process benches:
 * the app's pools and fact cache, no Redis (l2: null) and no invalidation bus, which in one process
 * has nothing to deliver (nothing writes while we measure). The pools are closed by the cleanup
 * step registered here.
 */
export async function openBenchEngine(
  url: string,
  config: Config,
  log: (line: string) => void,
  onCleanup: (step: Cleanup) => void,
  l1MaxBytes = config.L1_MAX_BYTES,
): Promise<BenchEngine> {
  let closing = false;
  const pools = new Pools({
    url,
    pools: config.pools,
    connectTimeoutMs: config.DB_CONNECT_TIMEOUT_MS,
    // Once closing, the server may end a connection before its Terminate is through: expected.
    onError: (pool, error) => (closing ? undefined : log(`pool ${pool}: ${error.message}`)),
  });
  onCleanup(async () => {
    closing = true;
    await pools.close();
    // Pools.close() destroys the Kysely instances, and Kysely ends a pg pool only if it ever used it:
    // the pools we used raw (all of them here) must be ended by hand, or their connections linger.
    await Promise.all(Object.values(pools.pg).map((pool) => (pool.ended ? undefined : pool.end())));
  });
  const cache = new FactCache({
    l1MaxBytes,
    ttlMs: () => config.L1_TTL_SECONDS * 1000,
    l2TtlSeconds: () => config.L2_TTL_SECONDS,
    l2: null,
  });
  const engine = createAuthzEngine({
    loadFacts: createFactsLoader(pools.pg.authorization),
    cache,
    auditDenial: () => {},
  });
  const revision = await pools.pg.authorization.query<{ rev: number }>('SELECT rev FROM authz_revision');
  // What the bus would report once subscribed: every invalidation up to here is applied (none exist).
  cache.advanceTo(revision.rows[0]?.rev ?? 0);
  return { pools, cache, engine };
}
