import Fastify, { type FastifyInstance } from 'fastify';
import pg from 'pg';
import { type AccessClaims, createTokenVerifier } from '../lib/jwt.js';

/**
 * What the authorization peers share, so they differ from each other and from Velro only in how
 * they decide: the same request (`POST /api/v1/authz/check` with Velro's body, bearer JWT), the same
 * token verification, a pg pool sized like Velro's authorization pool, a `/stats` route counting
 * their database round trips, and the `READY <port>` handshake of bench/lib/children.ts.
 */

export const CHECK_PATH = '/api/v1/authz/check';
/** The bulk route, and how many checks the bench puts in one of its requests. */
export const BULK_PATH = '/api/v1/authz/check-bulk';
export const BULK_SIZE = 100;

export interface CheckBody {
  resource: { type: 'generation'; id: string };
  permission: 'view';
}

/** The body schema Velro validates, in its shape (so the peers pay for validation too). */
const checkSchema = {
  body: {
    type: 'object',
    additionalProperties: false,
    required: ['resource', 'permission'],
    properties: {
      resource: {
        type: 'object',
        additionalProperties: false,
        required: ['type', 'id'],
        properties: {
          type: { type: 'string', enum: ['generation'] },
          id: { type: 'string', minLength: 1, maxLength: 128 },
        },
      },
      permission: { type: 'string', enum: ['view'] },
    },
  },
} as const;

export type Decide = (claims: AccessClaims, generationId: string) => boolean | Promise<boolean>;

export interface Stats {
  /** Database statements sent while answering requests (one per round trip). */
  queries: number;
}

export function requireEnv(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set`);
  return value;
}

/** Velro's authorization pool (src/platform/db/pools.ts): 20 connections, keep-alive, timeouts. */
export function peerPool(connectionString: string, applicationName: string): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    application_name: applicationName,
    max: Number(process.env.PEER_POOL_MAX ?? 20),
    statement_timeout: 2_000,
    query_timeout: 3_000,
    connectionTimeoutMillis: 2_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
  });
  pool.on('error', (error) => process.stderr.write(`idle connection failed: ${error.message}\n`));
  return pool;
}

export function createPeer(): FastifyInstance {
  return Fastify({ logger: false });
}

/** Registers the check route: 401 without a valid token, else 200 `{allowed}` like Velro's check. */
export function addCheckRoute(app: FastifyInstance, decide: Decide): void {
  const verify = createTokenVerifier(requireEnv('JWT_SECRET'));
  app.post<{ Body: CheckBody }>(CHECK_PATH, { schema: checkSchema }, async (request, reply) => {
    const claims = verify(request.headers.authorization);
    if (!claims) {
      reply.code(401);
      return { error: { code: 'invalid_token', message: 'Access token is missing or invalid' } };
    }
    return { allowed: await decide(claims, request.body.resource.id) };
  });
}

export function addStatsRoute(app: FastifyInstance, stats: Stats): void {
  app.get('/stats', async () => ({ ...stats, rssBytes: process.memoryUsage.rss() }));
}

/** Listens on argv[2] (0: the OS picks), prints `READY <port>`, closes cleanly on SIGTERM. */
export async function listen(app: FastifyInstance, onClose?: () => Promise<void>): Promise<void> {
  const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
  await app.listen({ host: '127.0.0.1', port });
  const address = app.server.address();
  const actualPort = typeof address === 'object' && address ? address.port : port;
  process.stdout.write(`READY ${actualPort}\n`);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      void app
        .close()
        .then(() => onClose?.())
        .finally(() => process.exit(0));
    });
  }
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
