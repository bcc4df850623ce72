import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import type { RedisClient } from '../../platform/redis.js';
import { type Check, Liveness, Readiness } from './schemas.js';

export interface ReadinessDeps {
  pool: pg.Pool;
  redis: RedisClient | null;
  /** False until start-up work that must precede traffic (cache warm-up) has finished. */
  warmedUp: () => boolean;
  probeTimeoutMs: number;
}

export async function healthRoutes(fastify: FastifyInstance, deps: ReadinessDeps) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();

  app.get(
    '/health',
    {
      config: { public: true, routeClass: 'ultra_fast' },
      schema: {
        operationId: 'health',
        summary: 'Liveness: the process answers (touches no I/O)',
        tags: ['operations'],
        response: { 200: Liveness },
      },
    },
    async () => ({ status: 'ok' as const, uptime_s: Math.round(process.uptime()) }),
  );

  app.get(
    '/ready',
    {
      config: { public: true, routeClass: 'ultra_fast' },
      schema: {
        operationId: 'ready',
        summary: 'Readiness: PostgreSQL (and Redis when configured) answer and warm-up is done',
        tags: ['operations'],
        response: { 200: Readiness, 503: Readiness },
      },
    },
    async (_request, reply) => {
      const checks: Record<string, Check> = {
        postgres: await probe(() => deps.pool.query('SELECT 1'), deps.probeTimeoutMs),
      };
      if (deps.redis) {
        const redis = deps.redis;
        checks.redis = await probe(() => redis.ping(), deps.probeTimeoutMs);
      }
      checks.warm_up = { ok: deps.warmedUp(), latency_ms: 0 };
      const ready = Object.values(checks).every((c) => c.ok);
      if (!ready) reply.header('retry-after', '1');
      return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready', checks });
    },
  );
}

async function probe(run: () => Promise<unknown>, timeoutMs: number) {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      run(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    return { ok: true, latency_ms: round(performance.now() - started) };
  } catch (error) {
    return {
      ok: false,
      latency_ms: round(performance.now() - started),
      error: error instanceof Error ? error.message : 'failed',
    };
  } finally {
    clearTimeout(timer);
  }
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;
