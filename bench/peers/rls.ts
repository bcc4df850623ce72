import {
  addCheckRoute,
  addStatsRoute,
  createPeer,
  listen,
  peerPool,
  requireEnv,
  type Stats,
  UUID,
} from './common.js';

/**
 * The row-level-security baseline (the pattern of the platform Velro replaces), per request exactly
 * what PostgREST does for a Supabase client, no cheaper and no costlier:
 *   BEGIN;
 *   SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{"sub":…}', true);
 *   SELECT … FROM generations g WHERE g.id = $1;   -- the policy of bench/peers/rls.sql decides
 *   COMMIT;
 * on one connection of a pool logged in as `authenticator`. A row back means "may view".
 * Env: RLS_DATABASE_URL (the authenticator's URL), JWT_SECRET.
 */
const pool = peerPool(requireEnv('RLS_DATABASE_URL'), 'bench_rls');
const stats: Stats = { queries: 0 };

// Named statements: PostgREST prepares its statements too.
const SET_CLAIMS = {
  name: 'rls_set_claims',
  text: "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
};
const SELECT_GENERATION = {
  name: 'rls_select_generation',
  text: 'SELECT g.id, g.project_id, g.status, g.created_at FROM generations g WHERE g.id = $1',
};

const app = createPeer();
addCheckRoute(app, async (claims, generationId) => {
  // PostgREST would answer 400 for a malformed uuid; no such id is ever asked in the bench.
  if (!UUID.test(generationId)) return false;
  const jwtClaims = JSON.stringify({ sub: claims.sub, role: 'authenticated', exp: claims.exp });
  const client = await pool.connect();
  try {
    stats.queries += 4;
    await client.query('BEGIN');
    await client.query({ ...SET_CLAIMS, values: ['authenticated', jwtClaims] });
    const { rowCount } = await client.query({ ...SELECT_GENERATION, values: [generationId] });
    await client.query('COMMIT');
    client.release();
    return (rowCount ?? 0) > 0;
  } catch (error) {
    // A connection in an unknown transaction state is not given back to the pool.
    client.release(error instanceof Error ? error : true);
    throw error;
  }
});
addStatsRoute(app, stats);
await listen(app, () => pool.end());
