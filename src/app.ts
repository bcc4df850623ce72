import cluster from 'node:cluster';
import { hostname } from 'node:os';
import cors from '@fastify/cors';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import underPressure from '@fastify/under-pressure';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type PgBoss from 'pg-boss';
import type { Config } from './config.js';
import { adminRoutes, type FlagAck } from './modules/admin/routes.js';
import { AuditBuffer } from './modules/audit/buffer.js';
import { auditRoutes, auditSchemas } from './modules/audit/routes.js';
import { createAuthenticator, installAuthentication } from './modules/auth/authenticate.js';
import { createCredentialFacts } from './modules/auth/credentials.js';
import { createPasswordHasher } from './modules/auth/passwords.js';
import { authRoutes } from './modules/auth/routes.js';
import { User } from './modules/auth/schemas.js';
import { createAuthService } from './modules/auth/service.js';
import { AccessTokens, refreshSuccessors } from './modules/auth/tokens.js';
import { createAuthzEngine } from './modules/authz/engine.js';
import { createFactsLoader } from './modules/authz/facts.js';
import { authzRoutes } from './modules/authz/routes.js';
import { createWarmer } from './modules/authz/warming.js';
import { batchRoutes } from './modules/batch/routes.js';
import { creditRoutes } from './modules/credits/routes.js';
import { createGenerationCreator } from './modules/generations/create.js';
import type { GenerationEventHub } from './modules/generations/events.js';
import { generationRoutes } from './modules/generations/routes.js';
import { createGenerationsService } from './modules/generations/service.js';
import { healthRoutes } from './modules/health/routes.js';
import { mediaRoutes } from './modules/media/routes.js';
import { MediaSigner } from './modules/media/signing.js';
import type { MediaStorage } from './modules/media/storage.js';
import type { ModelCatalogue } from './modules/models/catalogue.js';
import { modelRoutes } from './modules/models/routes.js';
import { performanceRoutes } from './modules/performance/routes.js';
import { projectRoutes } from './modules/projects/routes.js';
import { createProjectsService } from './modules/projects/service.js';
import { serviceKeyRoutes, serviceKeySchemas } from './modules/service-keys/routes.js';
import { createServiceKeyService } from './modules/service-keys/service.js';
import { teamRoutes } from './modules/teams/routes.js';
import { createTeamsService } from './modules/teams/service.js';
import { BulkCache } from './platform/cache/bulk-cache.js';
import type { InvalidationBus } from './platform/cache/bus.js';
import { FactCache } from './platform/cache/fact-cache.js';
import { flushEverywhere, setCacheEnabledEverywhere } from './platform/cache/revision.js';
import type { Pools } from './platform/db/pools.js';
import { registerReplicaMetrics } from './platform/db/read-routing.js';
import { AdmissionControl, admissionEnabled } from './platform/http/admission.js';
import { documentConsistencyToken } from './platform/http/consistency-docs.js';
import { installErrorHandling, sendError } from './platform/http/error-handler.js';
import { layersOff } from './platform/http/measurement.js';
import { redisWithLocalFallbackStore } from './platform/http/rate-limit-store.js';
import { addRequestContext, decorateRequestContext, requestIdFrom } from './platform/http/request-context.js';
import { RequestFrame } from './platform/http/request-frame.js';
import { ErrorEnvelope } from './platform/http/schemas.js';
import { API_HEADERS, securityHeadersStep } from './platform/http/security-headers.js';
import { createUserRateLimiter, documentUserRateLimit } from './platform/http/user-rate-limit.js';
import { installValidation } from './platform/http/validation.js';
import { Activity, StatusTally } from './platform/observability/activity.js';
import {
  effectiveRules,
  loadOverrides,
  type RuleOverride,
  rulesToEvaluate,
  saveChanges,
} from './platform/observability/alert-rule-store.js';
import { AlertmanagerNotifier, alertmanagerUrls } from './platform/observability/alertmanager.js';
import { createAppMetrics, poolWaitWindows } from './platform/observability/metrics.js';
import { lazyRequestLogger } from './platform/observability/request-logger.js';
import { createRequestObserver } from './platform/observability/request-observer.js';
import {
  type AlertRule,
  type CacheRatioSource,
  DEFAULT_ALERT_RULES,
  PerformanceTracker,
} from './platform/observability/tracker.js';
import { GENERATION_QUEUE } from './platform/queue/boss.js';
import type { RedisClient } from './platform/redis.js';
import type { Secrets } from './platform/security/secrets.js';

export const API_PREFIX = '/api/v1';
/**
 * Graceful close: from the moment the app starts closing, new requests get our 503 (envelope,
 * Retry-After) and every response ends its connection, and connections left idle are closed until
 * the server is, so a client holding keep-alive connections cannot keep the process alive.
 */
function addClosing(app: FastifyInstance, frame: RequestFrame, retryAfterSeconds: number) {
  let closing = false;
  let sweeper: NodeJS.Timeout | null = null;
  app.addHook('preClose', (done) => {
    closing = true;
    sweeper = setInterval(() => app.server.closeIdleConnections?.(), 50);
    sweeper.unref();
    done();
  });
  app.addHook('onClose', (_instance, done) => {
    if (sweeper) clearInterval(sweeper);
    done();
  });
  frame.atStart((request, reply) => {
    if (!closing) return undefined;
    reply.header('connection', 'close');
    if (request.url === '/health') return undefined;
    reply.header('retry-after', String(retryAfterSeconds));
    sendError(request, reply, 503, 'service_unavailable', 'The service is shutting down; retry shortly');
    return true;
  });
  frame.beforeSend((_request, reply) => {
    if (closing) reply.header('connection', 'close');
  });
}

/** The self-test's probes: a key nobody else uses, a subject that is nobody. */
const PROBE_KEY = 'probe|8:selftest';
const PROBE_SUBJECT = '00000000-0000-4000-8000-000000000000';
const PROBE_RESOURCE = { type: 'generation' as const, id: '00000000-0000-4000-8000-000000000001' };

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

/** The one application: `main.ts` and every test build it through here. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const { config, pools, redis } = deps;
  const builtAt = performance.now();
  const app = Fastify({
    // Request loggers become pino children only when they write a line (most never do).
    ...(deps.logger
      ? { loggerInstance: deps.logger, childLoggerFactory: lazyRequestLogger }
      : { logger: false }),
    bodyLimit: config.BODY_LIMIT_BYTES,
    trustProxy: config.TRUST_PROXY,
    genReqId: requestIdFrom,
    logController: new LogController({ requestIdLogLabel: 'request_id' }),
    // Our own closing answer (envelope, Retry-After) and connection handling: see addClosing.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    frameworkErrors: (error, request, reply) => {
      // A malformed URL (bad percent-encoding) fails before routing: still the envelope and headers.
      const status = (error as { statusCode?: number }).statusCode ?? 400;
      reply.headers(API_HEADERS);
      reply.header('x-request-id', request.id);
      sendError(request, reply, status, status === 400 ? 'bad_request' : 'error', error.message);
    },
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 2048 },
  });

  // Measurement only (`npm run bench -- --attribution`): layers switched off to see what each costs.
  const off = layersOff(config.MEASURE_WITHOUT);
  if (off.size > 0) {
    app.addHook('onReady', async () =>
      app.log.warn(
        { layers: [...off] },
        'MEASURE_WITHOUT: per-request layers are OFF; never do this in production',
      ),
    );
  }
  if (off.has('response_schema'))
    app.addHook('onRoute', (route) => {
      if (route.schema?.response) route.schema = { ...route.schema, response: undefined };
    });
  app.decorate('readsConsistencyTokens', !off.has('consistency_token'));

  installValidation(app);
  installErrorHandling(app, config.DB_RETRY_AFTER_SECONDS);
  const queueDepth = () => deps.boss.getQueueSize(GENERATION_QUEUE);
  const cacheStats = () => deps.cache.snapshot();
  const metrics = createAppMetrics({
    cache: () => {
      const c = cacheStats();
      return { l1: c.l1, l2: c.l2, database_loads: c.database_loads };
    },
    pools: () => pools.stats(),
    queueDepth,
  });
  registerReplicaMetrics(metrics.registry, pools.reads);
  const trackerSources: CacheRatioSource = {
    l1: () => deps.cache.stats.l1,
    breakers: () => {
      const states: Record<string, 'open' | 'half_open' | 'closed'> = {};
      const l2 = deps.cache.l2;
      if (l2) states.l2_redis = l2.stats().breaker as 'open' | 'half_open' | 'closed';
      return states;
    },
    denials: (windowMs) => metrics.authz.probing(windowMs),
    poolWaits: (window) => poolWaitWindows.stats(window, Date.now()),
  };
  const alertmanager = alertmanagerUrls(config.ALERTMANAGER_URL);
  const notifier =
    alertmanager.length > 0
      ? new AlertmanagerNotifier({
          urls: alertmanager,
          // The port it listens on (PORT, or the one the system chose for PORT=0).
          instance: () => {
            const address = app.server.address();
            return `${hostname()}:${typeof address === 'object' && address ? address.port : config.PORT}`;
          },
          // Several server processes on one port (WEB_CONCURRENCY) each judge their own traffic:
          // one process's resolution must not close another's alert.
          ...(cluster.isWorker && cluster.worker ? { labels: { process: String(cluster.worker.id) } } : {}),
          resendSeconds: config.ALERTMANAGER_RESEND_SECONDS,
          runbookUrl: config.ALERT_RUNBOOK_URL,
          onError: (error, url) =>
            app.log.warn(
              { err: error, alertmanager: url },
              'could not post alerts to Alertmanager; retrying',
            ),
        })
      : null;
  const tracker = new PerformanceTracker(trackerSources, deps.alertRules ?? DEFAULT_ALERT_RULES, (alert) => {
    notifier?.notify(alert);
    const line = {
      alert: alert.rule.name,
      severity: alert.rule.severity,
      value: alert.value,
      threshold: alert.rule.threshold,
    };
    if (alert.state === 'firing') app.log.warn(line, 'alert firing');
    else app.log.info(line, 'alert resolved');
  });
  tracker.enabled = config.TRACKING_ENABLED;
  // Alert rules: the code's definitions with the administrators' overrides (alert-rule-store.ts),
  // read at start and again whenever a change is announced or the invalidation stream reconnects.
  const ruleDefaults = deps.alertRules ?? DEFAULT_ALERT_RULES;
  let ruleOverrides: RuleOverride[] = [];
  const reloadAlertRules = async () => {
    ruleOverrides = await loadOverrides(pools.pg.authorization);
    tracker.setRules(rulesToEvaluate(ruleDefaults, ruleOverrides));
  };
  const rulesAnnounced = () =>
    reloadAlertRules().catch((error: unknown) =>
      app.log.warn({ err: error }, 'could not read the alert rules; keeping the ones in force'),
    );
  deps.bus.on('rules', rulesAnnounced);
  app.addHook('onReady', async () => {
    await rulesAnnounced();
  });
  app.addHook('onClose', async () => {
    deps.bus.off('rules', rulesAnnounced);
  });
  // The dashboard's activity: fleet-wide figures from the database (analytics pool, cached a few
  // seconds), this process's denials, 4xx/5xx and pool health from counters (see activity.ts).
  const statusTally = new StatusTally();
  const activity = new Activity({
    db: () => pools.db.analytics,
    sources: { statuses: statusTally, denials: () => metrics.authz.denials },
  });
  app.addHook('onReady', async () => activity.instance.start());
  app.addHook('onClose', async () => activity.instance.stop());
  // Timing and request-id headers, security headers and the closing answer: one onRequest and one
  // onSend hook for all of them (each layer can be left out when measuring what it costs).
  const frame = new RequestFrame();
  decorateRequestContext(app);
  if (!off.has('request_context'))
    addRequestContext(
      frame,
      config.TRACKING_ENABLED ? createRequestObserver(tracker, metrics, statusTally) : undefined,
    );
  if (!off.has('security_headers')) frame.atStart(securityHeadersStep());
  if (!off.has('closing')) addClosing(app, frame, config.OVERLOAD_RETRY_AFTER_SECONDS);
  const admission = admissionEnabled(config)
    ? new AdmissionControl({
        retryAfterSeconds: config.OVERLOAD_RETRY_AFTER_SECONDS,
        registry: metrics.registry,
      })
    : null;
  if (admission) {
    admission.install(frame);
    // A client that goes away before its answer releases its place too (released exactly once).
    app.addHook('onRequestAbort', (request, done) => {
      admission.release(request);
      done();
    });
    app.addHook('onReady', async () => admission.start());
    app.addHook('onClose', async () => admission.stop());
  }
  frame.install(app);
  app.addHook('onReady', async () => {
    tracker.start();
    notifier?.start();
  });
  app.addHook('onClose', async () => {
    tracker.stop();
    notifier?.stop();
  });
  // The per-subject denial windows of the probing rule (authz_denial_spike) move on every 10 s.
  app.addHook('onReady', async () => metrics.authz.start());
  app.addHook('onClose', async () => metrics.authz.stop());
  app.addSchema(ErrorEnvelope);
  app.addSchema(User);
  for (const schema of serviceKeySchemas) app.addSchema(schema);
  for (const schema of auditSchemas) app.addSchema(schema);

  // Shed load before the event loop collapses: 503 + Retry-After while it lags. Liveness stays
  // answered (a slow process is not a dead one); readiness sheds, taking the instance out.
  if (!off.has('under_pressure'))
    await app.register(underPressure, {
      maxEventLoopDelay: config.OVERLOAD_MAX_EVENT_LOOP_DELAY_MS,
      maxHeapUsedBytes: config.OVERLOAD_MAX_HEAP_BYTES,
      sampleInterval: 100,
      retryAfter: config.OVERLOAD_RETRY_AFTER_SECONDS,
      pressureHandler: (request, reply, type, value) => {
        // Liveness always answers; and the first seconds of a process (loading, warming) lag the
        // loop by nature: that is not overload.
        if (
          request.url === '/health' ||
          performance.now() - builtAt < config.OVERLOAD_STARTUP_GRACE_SECONDS * 1000
        )
          return;
        request.log.warn({ type, value }, 'shedding load');
        reply.header('retry-after', String(config.OVERLOAD_RETRY_AFTER_SECONDS));
        sendError(request, reply, 503, 'overloaded', 'The service is overloaded; retry shortly');
      },
    });
  if (config.CORS_ORIGINS.trim()) {
    await app.register(cors, {
      origin: config.CORS_ORIGINS.split(',')
        .map((o) => o.trim())
        .filter(Boolean),
      credentials: false,
      exposedHeaders: [
        'x-request-id',
        'x-response-time',
        'x-cache',
        'velro-consistency-token',
        'retry-after',
      ],
      maxAge: 600,
    });
  }
  await app.register(rateLimit, {
    global: false,
    ...(redis ? { store: redisWithLocalFallbackStore(redis, `${config.REDIS_KEY_PREFIX}rl:`) } : {}),
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Velro API',
        version: '1.0.0',
        description: 'AI media generation with fast, never-wrong authorization.',
      },
      servers: [{ url: '/', description: 'This service (every path below carries its full prefix)' }],
      tags: [
        { name: 'auth', description: 'Accounts, sessions and tokens' },
        { name: 'service keys', description: 'Long-lived, scoped keys for programs (vk_…)' },
        { name: 'teams', description: 'Teams and their members' },
        { name: 'projects', description: 'Projects, optionally shared with a team' },
        { name: 'models', description: 'The model catalogue' },
        { name: 'generations', description: 'Generations: create, follow, list, manage' },
        { name: 'media', description: 'Signed, expiring media URLs' },
        { name: 'credits', description: 'Credit balance and ledger' },
        { name: 'authorization', description: 'Permission checks, lookups and explanations' },
        { name: 'batch', description: 'Several GET requests in one' },
        { name: 'admin', description: 'Operator routes (role admin)' },
        { name: 'performance', description: 'Latency, cache and target reports' },
        { name: 'operations', description: 'Liveness and readiness' },
      ],
      components: {
        securitySchemes: {
          bearerAuth: {
            type: 'http',
            scheme: 'bearer',
            description: 'An access token from /auth/login, or a service key (vk_…)',
          },
          opsToken: {
            type: 'http',
            scheme: 'bearer',
            description: 'OPS_TOKEN, for the operational routes when the operator has set one',
          },
        },
      },
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => String(json.$id ?? `def-${i}`) },
    transform: documentConsistencyToken,
  });
  await app.register(async (docs) => {
    // The documentation is for anyone who can reach the service, like the models list.
    docs.addHook('onRoute', (route) => {
      route.config = { ...route.config, public: true, routeClass: 'fast', page: true };
    });
    await docs.register(swaggerUi, {
      routePrefix: '/docs',
      staticCSP: true,
      // Its policy asks the browser to upgrade every request to https: over plain http at an address
      // other than localhost that leaves the page blank. HSTS (over https) does the upgrading instead.
      transformStaticCSP: (header) => header.replace(/\s*upgrade-insecure-requests;?/, ''),
      uiConfig: { deepLinking: true },
    });
  });

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
  const loadFacts = createFactsLoader(pools.pg.authorization);
  const authz = createAuthzEngine({
    loadFacts,
    cache: deps.cache,
    auditDenial: (event) => auditBuffer.record(event),
    tally: metrics.authz,
  });
  const warmer = createWarmer({
    pool: pools.pg.background,
    // With a replica, it chooses what to warm from its copy of the views; values still come from the primary.
    ...(pools.reads.configured ? { viewsDb: pools.reads.analytics } : {}),
    cache: deps.cache,
    loadFacts,
  });
  const probeCache = new FactCache({
    l1MaxBytes: 64 * 1024,
    ttlMs: () => 60_000,
    l2TtlSeconds: () => 60,
    l2: null,
  });
  const probeEngine = createAuthzEngine({ loadFacts, cache: probeCache, auditDenial: () => {} });
  let warmedUp = false;
  let warmTimer: NodeJS.Timeout | null = null;
  app.addHook('onReady', async () => {
    // Start-up warming gates /ready; the periodic one keeps the hottest facts in.
    await warmer
      .warmFromViews(config.CACHE_WARM_LIMIT)
      .catch((error) => app.log.warn({ err: error }, 'warm-up failed'));
    warmedUp = true;
    if (config.CACHE_WARM_INTERVAL_SECONDS > 0) {
      warmTimer = setInterval(() => {
        warmer
          .refreshViews()
          .then(() => warmer.warmFromViews(config.CACHE_WARM_LIMIT))
          .catch((error) => app.log.warn({ err: error }, 'periodic warming failed'));
      }, config.CACHE_WARM_INTERVAL_SECONDS * 1000);
      warmTimer.unref();
    }
  });
  app.addHook('onClose', async () => {
    if (warmTimer) clearInterval(warmTimer);
  });
  // Lists read through `listDb`: the replica unless the request carries a consistency token.
  const resourceDeps = {
    writeDb: pools.db.write_heavy,
    readDb: pools.db.authorization,
    listDb: pools.reads.reader,
    authz,
  };
  const signer = new MediaSigner(deps.secrets.mediaSigningSecret, deps.now);
  const createGeneration = createGenerationCreator({
    writeDb: pools.db.write_heavy,
    authz,
    boss: deps.boss,
    catalogue: deps.catalogue,
    storage: deps.storage,
  });

  await app.register(healthRoutes, {
    pool: pools.pg.authorization,
    redis,
    warmedUp: () => warmedUp && (deps.warmedUp?.() ?? true),
    probeTimeoutMs: 1_000,
  });
  await app.register(performanceRoutes, {
    // The self-test measures the same code paths on a cache of its own (one fixed subject and
    // resource, no L2): anyone may call it, so it must not add entries to the shared L1 or write to
    // Redis. The L2 probe only reads.
    selfTest: {
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
        await pools.pg.authorization.query('SELECT 1');
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
    },
    tracker,
    metrics,
    cache: cacheStats,
    pools: () => pools.stats(),
    queueDepth,
    activity: () => activity.read(),
  });
  await app.register(
    async (api) => {
      await api.register(authRoutes, {
        service: auth,
        limits: {
          loginPerIp: config.LOGIN_RATE_LIMIT_PER_IP,
          loginPerAccount: config.LOGIN_RATE_LIMIT_PER_ACCOUNT,
          registerPerIp: config.REGISTER_RATE_LIMIT_PER_IP,
          windowSeconds: config.LOGIN_RATE_LIMIT_WINDOW_SECONDS,
        },
      });
      await api.register(serviceKeyRoutes, { service: serviceKeys });
      await api.register(teamRoutes, {
        service: createTeamsService(resourceDeps),
        memberAddsByEmailPerHour: config.MEMBER_ADDS_BY_EMAIL_PER_HOUR,
      });
      await api.register(projectRoutes, { service: createProjectsService(resourceDeps) });
      await api.register(modelRoutes, { catalogue: deps.catalogue });
      await api.register(generationRoutes, {
        service: createGenerationsService({
          ...resourceDeps,
          signer,
          mediaUrlTtlSeconds: config.MEDIA_URL_TTL_SECONDS,
          mediaUrlPrefix: `${API_PREFIX}/media/`,
        }),
        create: async (userId, input, ctx) => {
          const created = await createGeneration(userId, input, ctx);
          if (!created.replayed) deps.onGenerationQueued?.();
          return created;
        },
        hub: deps.hub,
        bus: deps.bus,
        createsPerMinute: config.GENERATION_RATE_LIMIT_PER_MINUTE,
        referenceImageMaxBytes: config.REFERENCE_IMAGE_MAX_BYTES,
      });
      await api.register(mediaRoutes, {
        db: pools.db.authorization,
        bulk: new BulkCache(config.L1_BULK_MAX_BYTES, config.L1_TTL_SECONDS * 1000),
        generationIsLive: (id, minRevision) => authz.generationIsLive(id, minRevision),
        signer,
        storage: deps.storage,
        ...(deps.now ? { now: deps.now } : {}),
      });
      await api.register(adminRoutes, {
        cache: deps.cache,
        bus: deps.bus,
        warmer,
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
        alertRules: {
          defaults: ruleDefaults,
          effective: () => effectiveRules(ruleDefaults, ruleOverrides),
          save: (changes, actorId) => saveChanges(pools.pg.write_heavy, changes, actorId),
          reload: reloadAlertRules,
        },
      });
      await api.register(batchRoutes, { root: app });
      await api.register(creditRoutes, {
        writeDb: pools.db.write_heavy,
        readDb: pools.db.authorization,
        listDb: pools.reads.reader,
      });
      await api.register(auditRoutes, { adminDb: pools.reads.reportReader, userDb: pools.db.authorization });
      await api.register(authzRoutes, {
        engine: authz,
        readDb: pools.db.authorization,
        limitChecks: (userId, count) => limitUser?.(userId, 'bulk_checks', count),
        xCache: !off.has('x_cache'),
        tally: metrics.authz,
      });
    },
    { prefix: API_PREFIX },
  );
  return app;
}
