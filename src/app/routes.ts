import { adminRoutes, type FlagAck } from '../modules/admin/routes.js';
import { auditRoutes } from '../modules/audit/routes.js';
import { authRoutes } from '../modules/auth/routes.js';
import { authzRoutes } from '../modules/authz/routes.js';
import { batchRoutes } from '../modules/batch/routes.js';
import { creditRoutes } from '../modules/credits/routes.js';
import { generationRoutes } from '../modules/generations/routes.js';
import { healthRoutes } from '../modules/health/routes.js';
import { mediaRoutes } from '../modules/media/routes.js';
import { mediaRowReader } from '../modules/media/rows.js';
import { modelRoutes } from '../modules/models/routes.js';
import { performanceRoutes } from '../modules/performance/routes.js';
import { projectRoutes } from '../modules/projects/routes.js';
import { serviceKeyRoutes } from '../modules/service-keys/routes.js';
import { teamRoutes } from '../modules/teams/routes.js';
import { BulkCache } from '../platform/cache/bulk-cache.js';
import { flushEverywhere, setCacheEnabledEverywhere } from '../platform/cache/revision.js';
import { API_PREFIX, type AppDeps } from './deps.js';
import type { Server } from './fastify.js';
import type { Observability } from './observability.js';
import type { Services } from './services.js';

/** Every route: operations and performance at the root, the API under /api/v1. */
export async function registerRoutes(
  server: Server,
  deps: AppDeps,
  services: Services,
  observability: Observability,
): Promise<void> {
  const { app, off } = server;
  const { config, pools, redis } = deps;
  await app.register(healthRoutes, {
    pool: pools.pg.authorization,
    redis,
    warmedUp: services.warmedUp,
    probeTimeoutMs: 1_000,
  });
  await app.register(performanceRoutes, {
    selfTest: services.selfTest,
    tracker: observability.tracker,
    metrics: observability.metrics,
    cache: observability.cacheStats,
    pools: () => pools.stats(),
    queueDepth: observability.queueDepth,
    activity: () => observability.activity.read(),
  });
  await app.register(
    async (api) => {
      await api.register(authRoutes, {
        service: services.auth,
        limits: {
          loginPerIp: config.LOGIN_RATE_LIMIT_PER_IP,
          loginPerAccount: config.LOGIN_RATE_LIMIT_PER_ACCOUNT,
          registerPerIp: config.REGISTER_RATE_LIMIT_PER_IP,
          windowSeconds: config.LOGIN_RATE_LIMIT_WINDOW_SECONDS,
        },
      });
      await api.register(serviceKeyRoutes, { service: services.serviceKeys });
      await api.register(teamRoutes, {
        service: services.teams,
        memberAddsByEmailPerHour: config.MEMBER_ADDS_BY_EMAIL_PER_HOUR,
      });
      await api.register(projectRoutes, { service: services.projects });
      await api.register(modelRoutes, { catalogue: deps.catalogue });
      await api.register(generationRoutes, {
        service: services.generations,
        hub: deps.hub,
        bus: deps.bus,
        createsPerMinute: config.GENERATION_RATE_LIMIT_PER_MINUTE,
        referenceImageMaxBytes: config.REFERENCE_IMAGE_MAX_BYTES,
      });
      await api.register(mediaRoutes, {
        mediaRow: mediaRowReader(
          pools.db.authorization,
          new BulkCache(config.L1_BULK_MAX_BYTES, config.L1_TTL_SECONDS * 1000),
        ),
        generationIsLive: (id, minRevision) => services.authz.generationIsLive(id, minRevision),
        signer: services.signer,
        storage: deps.storage,
        ...(deps.now ? { now: deps.now } : {}),
      });
      await api.register(adminRoutes, {
        cache: deps.cache,
        bus: deps.bus,
        warmer: services.warmer,
        flush: () => flushEverywhere(pools.pg.write_heavy),
        setCacheEnabled: (enabled) => setCacheEnabledEverywhere(pools.pg.write_heavy, enabled),
        flagAcks: async () =>
          (
            await pools.pg.authorization.query<FlagAck>(
              `SELECT instance_id, flag_rev, cache_enabled, acknowledged_at::text AS acknowledged_at
                 FROM cache_flag_acks ORDER BY acknowledged_at DESC LIMIT 100`,
            )
          ).rows,
        warmLimit: config.CACHE_WARM_LIMIT,
        alertRules: observability.alertRules,
      });
      await api.register(batchRoutes, { root: app });
      await api.register(creditRoutes, {
        writeDb: pools.db.write_heavy,
        readDb: pools.db.authorization,
        listDb: pools.reads.reader,
      });
      // The audit log is a report: the replica, unless the request carries a consistency token.
      await api.register(auditRoutes, { adminDb: pools.reads.reportReader, userDb: pools.db.authorization });
      await api.register(authzRoutes, {
        engine: services.authz,
        readDb: pools.db.authorization,
        limitChecks: (userId, count) => services.limitUser?.(userId, 'bulk_checks', count),
        xCache: !off.has('x_cache'),
        tally: observability.metrics.authz,
      });
    },
    { prefix: API_PREFIX },
  );
}
