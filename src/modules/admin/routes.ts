import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { InvalidationBus } from '../../platform/cache/bus.js';
import type { FactCache } from '../../platform/cache/fact-cache.js';
import { badRequest } from '../../platform/http/errors.js';
import { errors } from '../../platform/http/schemas.js';
import {
  type EffectiveRule,
  type RuleChange,
  validateChanges,
} from '../../platform/observability/alert-rule-store.js';
import type { AlertRule } from '../../platform/observability/alert-rules.js';
import type { Warmer } from '../authz/warming.js';
import {
  CacheStats,
  Flags,
  FlagsBody,
  Flushed,
  RuleChangeBody,
  RuleList,
  WarmBody,
  WarmReport,
} from './schemas.js';

export interface AdminDeps {
  cache: FactCache;
  bus: InvalidationBus;
  warmer: Warmer;
  /** Advances the revision as a flush (see migration 004's flush_floor) and announces it. */
  flush: () => Promise<number>;
  /** Throws the fleet's kill switch (migration 005) and announces it; returns its revision. */
  setCacheEnabled: (enabled: boolean) => Promise<number>;
  /** The instances' acknowledgements of the kill switch, most recent first. */
  flagAcks: () => Promise<FlagAck[]>;
  warmLimit: number;
  alertRules: {
    /** The rules as defined in code (names, metrics, defaults). */
    defaults: readonly AlertRule[];
    /** The rules as this instance applies them now, overrides included. */
    effective: () => EffectiveRule[];
    /** Records the changes for the whole fleet and announces them; returns the revision. */
    save: (changes: RuleChange[], actorId: string | null) => Promise<number>;
    /** Reads the overrides again and applies them here (as every instance does when it hears them). */
    reload: () => Promise<void>;
  };
}

export interface FlagAck {
  instance_id: string;
  flag_rev: number;
  cache_enabled: boolean;
  acknowledged_at: string;
}

const tags = ['admin'];
const config = { scope: 'admin' as const, admin: true };

/**
 * Operator routes (role admin; service keys also need the `admin` scope). The kill switch and the
 * flush are the operator's word for the whole fleet: recorded in PostgreSQL and announced on the
 * invalidation channel, so every instance obeys, including ones started later.
 */
export async function adminRoutes(fastify: FastifyInstance, deps: AdminDeps) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { cache, bus } = deps;

  app.get(
    '/admin/cache/stats',
    {
      config,
      schema: {
        operationId: 'cacheStats',
        summary: 'Hits, misses, evictions, bytes and hit ratio per layer; bus state',
        tags,
        response: { 200: CacheStats, ...errors(401, 403) },
      },
    },
    async () => {
      const acks = await deps.flagAcks();
      return {
        ...cache.snapshot(),
        bus: {
          connected: bus.healthy,
          gaps: bus.gaps,
          reconnects: bus.reconnects,
          silent_losses: bus.silentLosses,
        },
        // The kill switch as this instance applied it, and which instances acknowledged what.
        fleet: {
          instance_id: bus.instanceId,
          cache_enabled: bus.fleetEnabled,
          changed_at_revision: bus.fleetFlagRev,
          instances: acks.map((a) => ({ ...a, current: a.flag_rev >= bus.fleetFlagRev })),
        },
      };
    },
  );

  app.post(
    '/admin/cache/warm',
    {
      config,
      schema: {
        operationId: 'cacheWarm',
        summary: 'Warm the cache with the hottest users and generations (refreshes the views first)',
        tags,
        body: WarmBody,
        response: {
          200: WarmReport,
          ...errors(400, 401, 403),
        },
      },
    },
    async (request) => {
      const refresh = request.body?.refresh_views ?? true;
      const viewsRefreshed = refresh ? await deps.warmer.refreshViews() : false;
      const report = await deps.warmer.warmFromViews(request.body?.limit ?? deps.warmLimit);
      return { ...report, views_refreshed: viewsRefreshed };
    },
  );

  app.post(
    '/admin/cache/flush',
    {
      config,
      schema: {
        operationId: 'cacheFlush',
        summary: 'Empty every instance’s L1 and retire every shared L2 entry read before now',
        tags,
        response: { 200: Flushed, ...errors(401, 403) },
      },
    },
    async () => {
      // A revision of its own, announced like any change: every instance flushes on hearing it, and
      // the recorded floor makes instances started later ignore older shared entries too.
      const rev = await deps.flush();
      await bus.wrote(rev, 1_000);
      return { flushed_at_revision: rev };
    },
  );

  app.get(
    '/admin/flags',
    {
      config,
      schema: {
        operationId: 'getFlags',
        summary: 'Runtime flags (the cache kill switch) as this instance applies them',
        tags,
        response: { 200: Flags, ...errors(401, 403) },
      },
    },
    async () => ({ cache_enabled: bus.wantEnabled }),
  );

  app.patch(
    '/admin/flags',
    {
      config,
      schema: {
        operationId: 'setFlags',
        summary: 'Change runtime flags for the whole fleet (the cache kill switch)',
        tags,
        body: FlagsBody,
        response: { 200: Flags, ...errors(400, 401, 403) },
      },
    },
    async (request) => {
      if (request.body.cache_enabled !== undefined) {
        const rev = await deps.setCacheEnabled(request.body.cache_enabled);
        // Applied here before answering (as every instance applies it: through the channel).
        await bus.wrote(rev, 1_000);
      }
      return { cache_enabled: bus.wantEnabled };
    },
  );

  app.get(
    '/admin/alert-rules',
    {
      config,
      schema: {
        operationId: 'getAlertRules',
        summary: 'The alert rules as this instance applies them: thresholds, for, minimum samples, severity',
        tags,
        response: { 200: RuleList, ...errors(401, 403) },
      },
    },
    async () => ({ items: deps.alertRules.effective() }),
  );

  app.put(
    '/admin/alert-rules',
    {
      config,
      schema: {
        operationId: 'changeAlertRules',
        summary:
          'Change alert rules for the whole fleet (threshold, for, minimum samples, severity, on/off, reset)',
        description:
          'Only the settings given change; `reset: true` returns a rule to the values defined in code. ' +
          'Stored in PostgreSQL and announced on the invalidation channel: every instance applies it, ' +
          'including ones started later. The Prometheus rules file keeps the code values.',
        tags,
        body: RuleChangeBody,
        response: { 200: RuleList, ...errors(400, 401, 403) },
      },
    },
    async (request) => {
      const changes = request.body.rules as RuleChange[];
      const problems = validateChanges(deps.alertRules.defaults, changes);
      if (problems.length > 0) {
        throw badRequest(
          'The request is not valid',
          problems.map(([field, message]) => ({ field, message })),
        );
      }
      const rev = await deps.alertRules.save(changes, request.principal?.userId ?? null);
      await bus.wrote(rev, 1_000);
      // Applied here before answering; every other instance applies it when it hears it.
      await deps.alertRules.reload();
      return { items: deps.alertRules.effective() };
    },
  );
}
