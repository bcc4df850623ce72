import { addStatsRoute, createPeer, listen, peerPool, requireEnv, type Stats } from './common.js';

/**
 * The floor of any database-backed route: Fastify answering after one `SELECT 1` through a pg pool
 * sized like Velro's authorization pool. No token (as in DESIGN.md's table): what is measured is
 * the round trip. The cold check's target is a ratio to this.
 */
const pool = peerPool(requireEnv('DATABASE_URL'), 'bench_select1');
const stats: Stats = { queries: 0 };

const app = createPeer();
app.get('/select1', async () => {
  stats.queries += 1;
  const { rows } = await pool.query<{ one: number }>('SELECT 1 AS one');
  return { ok: rows[0]?.one === 1 };
});
addStatsRoute(app, stats);
await listen(app, () => pool.end());
