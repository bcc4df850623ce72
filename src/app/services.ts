import { AuditBuffer } from '../modules/audit/buffer.js';
import { createAuthenticator, installAuthentication } from '../modules/auth/authenticate.js';
import { createCredentialFacts } from '../modules/auth/credentials.js';
import { createPasswordHasher } from '../modules/auth/passwords.js';
import { createAuthService } from '../modules/auth/service.js';
import { AccessTokens, refreshSuccessors } from '../modules/auth/tokens.js';
import { createAuthzEngine } from '../modules/authz/engine.js';
import { createFactsLoader } from '../modules/authz/facts.js';
import { createWarmer } from '../modules/authz/warming.js';
import { createGenerationsService } from '../modules/generations/service.js';
import { MediaSigner } from '../modules/media/signing.js';
import { createSelfTestProbes } from '../modules/performance/self-test.js';
import { createProjectsService } from '../modules/projects/service.js';
import { createServiceKeyService } from '../modules/service-keys/service.js';
import { createTeamsService } from '../modules/teams/service.js';
import { createUserRateLimiter, documentUserRateLimit } from '../platform/http/user-rate-limit.js';
import { API_PREFIX, type AppDeps } from './deps.js';
import type { Server } from './fastify.js';
import type { Observability } from './observability.js';

export type Services = ReturnType<typeof wireServices>;

/**
 * The services of the app, wired to their pools and to each other; authentication installed on
 * every route; the cache warmed at start (gating /ready) and every CACHE_WARM_INTERVAL_SECONDS.
 */
export function wireServices(server: Server, deps: AppDeps, observability: Observability) {
  const { app, off } = server;
  const { config, pools } = deps;
  const tokens = new AccessTokens(deps.secrets.jwtSecret, config.ACCESS_TOKEN_TTL_SECONDS, deps.now);
  const hasher = createPasswordHasher({
    memoryKib: config.ARGON2_MEMORY_KIB,
    timeCost: config.ARGON2_TIME_COST,
  });
  const auth = createAuthService({
    writeDb: pools.db.write_heavy,
    readDb: pools.db.authorization,
    hasher,
    tokens,
    initialCredits: config.INITIAL_CREDITS,
    refreshTtlSeconds: config.REFRESH_TOKEN_TTL_SECONDS,
    refreshReuseIntervalMs: config.REFRESH_TOKEN_REUSE_INTERVAL_MS,
    refreshSuccessorOf: refreshSuccessors(deps.secrets.jwtSecret),
    onBackgroundError: (error) => app.log.warn({ err: error }, 'audit write failed'),
    awaitRevision: (revision) => deps.bus.wrote(revision, config.WRITE_VISIBILITY_WAIT_MS),
    onSignIn: (userId, sessionId) => {
      // Warm that user's facts (session, user, memberships) before their next request needs them.
      if (!deps.cache.enabled) return;
      Promise.all([credentials.warmSession(sessionId), warmer.warmSubjects([userId])]).catch((error) =>
        app.log.warn({ err: error }, 'sign-in warming failed'),
      );
    },
  });
  const serviceKeys = createServiceKeyService({
    writeDb: pools.db.write_heavy,
    readDb: pools.db.authorization,
    writePool: pools.pg.write_heavy,
    onBackgroundError: (error) => app.log.warn({ err: error }, 'service key bookkeeping failed'),
  });
  const credentials = createCredentialFacts(pools.pg.authorization, deps.cache);
  const limitUser = off.has('user_rate_limit')
    ? null
    : createUserRateLimiter({
        perMinute: config.USER_RATE_LIMIT_PER_MINUTE,
        maxKeys: config.USER_RATE_LIMIT_MAX_KEYS,
      });
  documentUserRateLimit(app);
  installAuthentication(
    app,
    createAuthenticator({
      tokens,
      sessionLiveness: !off.has('session_liveness'),
      credentials,
      onKeyUse: (keyId) => serviceKeys.noteUse(keyId),
      ...(deps.now ? { now: deps.now } : {}),
    }),
    {
      opsToken: config.OPS_TOKEN,
      opsLoopbackOnly: config.NODE_ENV === 'production' && !config.OPS_TOKEN,
      limitUser,
    },
  );
  app.decorate('awaitRevision', (revision: number) =>
    deps.bus.wrote(revision, config.WRITE_VISIBILITY_WAIT_MS),
  );

  const auditBuffer = new AuditBuffer(pools.db.write_heavy, (error) =>
    app.log.warn({ err: error }, 'audit events could not be written'),
  );
  app.addHook('onClose', () => auditBuffer.flush());
  app.decorate('flushAudit', () => auditBuffer.flush());
  const loadFacts = createFactsLoader(pools.pg.authorization);
  const authz = createAuthzEngine({
    loadFacts,
    cache: deps.cache,
    auditDenial: (event) => auditBuffer.record(event),
    tally: observability.metrics.authz,
  });
  const warmer = createWarmer({
    pool: pools.pg.background,
    // With a replica, it chooses what to warm from its copy of the views; values still come from the primary.
    ...(pools.reads.configured ? { viewsDb: pools.reads.analytics } : {}),
    cache: deps.cache,
    loadFacts,
  });
  let warmedUp = false;
  let warmTimer: NodeJS.Timeout | null = null;
  app.addHook('onReady', async () => {
    // Start-up warming gates /ready; the periodic one keeps the hottest facts in.
    await warmer
      .warmFromViews(config.CACHE_WARM_LIMIT)
      .then((report) => app.log.info({ warm: report }, 'cache warmed at start'))
      .catch((error) => app.log.warn({ err: error }, 'warm-up failed'));
    warmedUp = true;
    if (config.CACHE_WARM_INTERVAL_SECONDS > 0) {
      // Logged at info with what it cost: the views' refresh (false when another instance held
      // it) and the facts loaded because L1 lacked them.
      const warmPeriodically = async () => {
        const started = performance.now();
        const refreshed = await warmer.refreshViews();
        const refreshMs = Math.round(performance.now() - started);
        const report = await warmer.warmFromViews(config.CACHE_WARM_LIMIT, { onlyNew: true });
        app.log.info({ warm: { ...report, refreshed, refresh_ms: refreshMs } }, 'cache warmed');
      };
      warmTimer = setInterval(() => {
        warmPeriodically().catch((error) => app.log.warn({ err: error }, 'periodic warming failed'));
      }, config.CACHE_WARM_INTERVAL_SECONDS * 1000);
      warmTimer.unref();
    }
  });
  app.addHook('onClose', async () => {
    if (warmTimer) clearInterval(warmTimer);
    tokens.close();
  });

  // Lists read through `listDb`: the replica unless the request carries a consistency token.
  const resourceDeps = {
    writeDb: pools.db.write_heavy,
    readDb: pools.db.authorization,
    listDb: pools.reads.reader,
    authz,
  };
  const signer = new MediaSigner(deps.secrets.mediaSigningSecret, deps.now);
  return {
    auth,
    serviceKeys,
    limitUser,
    authz,
    warmer,
    signer,
    teams: createTeamsService(resourceDeps),
    projects: createProjectsService(resourceDeps),
    generations: createGenerationsService({
      ...resourceDeps,
      signer,
      mediaUrlTtlSeconds: config.MEDIA_URL_TTL_SECONDS,
      mediaUrlPrefix: `${API_PREFIX}/media/`,
      boss: deps.boss,
      catalogue: deps.catalogue,
      storage: deps.storage,
      // The in-process worker's wake-up, when this process runs one.
      onQueued: deps.onGenerationQueued,
    }),
    selfTest: createSelfTestProbes({ cache: deps.cache, pool: pools.pg.authorization, loadFacts }),
    warmedUp: () => warmedUp && (deps.warmedUp?.() ?? true),
  };
}
