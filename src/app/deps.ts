import type { FastifyBaseLogger } from 'fastify';
import type PgBoss from 'pg-boss';
import type { Config } from '../config.js';
import type { GenerationEventHub } from '../modules/generations/events.js';
import type { MediaStorage } from '../modules/media/storage.js';
import type { ModelCatalogue } from '../modules/models/catalogue.js';
import type { InvalidationBus } from '../platform/cache/bus.js';
import type { FactCache } from '../platform/cache/fact-cache.js';
import type { Pools } from '../platform/db/pools.js';
import type { AlertRule } from '../platform/observability/alert-rules.js';
import type { RedisClient } from '../platform/redis.js';
import type { Secrets } from '../platform/security/secrets.js';

/** Everything the app takes from the outside world (runtime.ts opens it; tests open their own). */
export interface AppDeps {
  config: Config;
  pools: Pools;
  redis: RedisClient | null;
  secrets: Secrets;
  boss: PgBoss;
  hub: GenerationEventHub;
  catalogue: ModelCatalogue;
  storage: MediaStorage;
  cache: FactCache;
  bus: InvalidationBus;
  /** Called after a generation is queued by this process (wakes a local worker at once). */
  onGenerationQueued?: () => void;
  logger?: FastifyBaseLogger;
  /** The alert rules the tracker evaluates (tests use quick ones); the shipped rules by default. */
  alertRules?: AlertRule[];
  /** Clock for token issuing; tests move it. */
  now?: () => number;
  warmedUp?: () => boolean;
}

export const API_PREFIX = '/api/v1';
