import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { InvalidationBus } from '../../platform/cache/bus.js';
import type { FactCache } from '../../platform/cache/fact-cache.js';
import { errors } from '../../platform/http/schemas.js';
import type { Warmer } from '../authz/warming.js';

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
}

export interface FlagAck {
  instance_id: string;
  flag_rev: number;
  cache_enabled: boolean;
  acknowledged_at: string;
}

const tags = ['admin'];
const security = [{ bearerAuth: [] }];
const config = { scope: 'admin' as const, admin: true };

const Flags = Type.Object({
  cache_enabled: Type.Boolean({
    description:
      'Kill switch, for the whole fleet: off answers every check from the database on every instance, ' +
      'including ones started later. An instance configured with CACHE_ENABLED=false stays off either way.',
  }),
});

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
        security,
        response: { 200: Type.Record(Type.String(), Type.Unknown()), ...errors(401, 403) },
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
        security,
        body: Type.Optional(
          Type.Object(
            {
              limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000 })),
              refresh_views: Type.Optional(Type.Boolean()),
            },
            { additionalProperties: false },
          ),
        ),
        response: {
          200: Type.Object({
            subjects: Type.Integer(),
            generations: Type.Integer(),
            ms: Type.Number(),
            views_refreshed: Type.Boolean(),
          }),
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
        security,
        response: { 200: Type.Object({ flushed_at_revision: Type.Integer() }), ...errors(401, 403) },
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
        security,
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
        security,
        body: Type.Object({ cache_enabled: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
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
}
