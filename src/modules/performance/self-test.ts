import type pg from 'pg';
import { FactCache } from '../../platform/cache/fact-cache.js';
import { createAuthzEngine } from '../authz/engine.js';
import type { FactsLoader } from '../authz/facts.js';
import type { SelfTestDeps } from './routes.js';

/** The self-test's probes: a key nobody else uses, a subject that is nobody. */
const PROBE_KEY = 'probe|8:selftest';
const PROBE_SUBJECT = '00000000-0000-4000-8000-000000000000';
const PROBE_RESOURCE = { type: 'generation' as const, id: '00000000-0000-4000-8000-000000000001' };

/**
 * The probes of GET /api/v1/performance/test. They measure the same code paths as real requests,
 * on a cache of their own (one fixed subject and resource, no L2): anyone may call the self-test, so
 * it must not add entries to the shared L1 or write to Redis. The L2 probe only reads.
 */
export function createSelfTestProbes(deps: {
  cache: FactCache;
  pool: pg.Pool;
  loadFacts: FactsLoader;
}): SelfTestDeps {
  const probeCache = new FactCache({
    l1MaxBytes: 64 * 1024,
    ttlMs: () => 60_000,
    l2TtlSeconds: () => 60,
    l2: null,
  });
  const probeEngine = createAuthzEngine({
    loadFacts: deps.loadFacts,
    cache: probeCache,
    auditDenial: () => {},
  });
  return {
    l1Probe: () => {
      probeCache.warm(new Map([[PROBE_KEY, { probe: true }]]), 0);
      const started = performance.now();
      probeCache.peek(PROBE_KEY);
      return (performance.now() - started) * 1000;
    },
    l2Probe: async () => {
      const l2 = deps.cache.l2;
      if (!l2?.available) return null;
      const started = performance.now();
      const result = await l2.read(PROBE_KEY);
      return result === 'error' ? null : (performance.now() - started) * 1000;
    },
    dbProbe: async () => {
      const started = performance.now();
      await deps.pool.query('SELECT 1');
      return (performance.now() - started) * 1000;
    },
    checkProbe: async () => {
      let started = performance.now();
      // A token newer than anything seen forces the database (and fills the probe's own cache).
      await probeEngine.check(PROBE_SUBJECT, PROBE_RESOURCE, Number.MAX_SAFE_INTEGER);
      const cold = (performance.now() - started) * 1000;
      started = performance.now();
      const warm = await probeEngine.check(PROBE_SUBJECT, PROBE_RESOURCE);
      return { cold, warm: (performance.now() - started) * 1000, warmLayer: warm.cache };
    },
  };
}
