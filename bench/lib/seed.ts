import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type Algorithm, hash as argon2Hash } from '@node-rs/argon2';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { flushEverywhere } from '../../src/platform/cache/revision.js';
import { migrate } from '../../src/platform/db/migrate.js';

/**
 * Bulk data for benchmarks and load tests (`npm run seed-data`): users, teams of power-law sizes,
 * projects, Zipf-distributed generations with their media and a consistent credit ledger, streamed
 * into PostgreSQL with binary `COPY … FROM STDIN` in one transaction.
 *
 * Every value is a pure function of (seed, kind, index) except the per-user credit balance, which is
 * a running sum walked in generation order; so the same options give the same rows (relative to
 * `now`), ids can be computed without reading the database (`seedId`), and nothing row-sized is
 * kept in memory: rows are produced in 256 KiB batches as COPY asks for them. Per-entity state
 * (users, teams, projects, memberships) lives in typed arrays, a few bytes per entity.
 *
 * Measured on this 2-core machine (shared with other work, so wall times vary; the server's CPU
 * time is the steadier figure), 100k users and 1M generations into empty tables, 3.46M rows:
 * - every index (primary keys too) dropped before its table's COPY and built once after it, the
 *   default into empty tables: 27 s wall, 14 s of server CPU; secondary indexes only: 66 s and 21 s;
 *   all kept and updated row by row: 94 s and 37 s. Random (v4) uuids make every primary-key
 *   insert a random leaf, a page miss once the index outgrows shared_buffers.
 * - binary COPY: 4 µs of server CPU per generation row without indexes, 8 µs as text;
 * - COPY FREEZE (after reset, or into a new database) costs the same CPU and spares the VACUUM that
 *   is otherwise needed before the first readers (hint bits, visibility map for index-only scans).
 */

export interface SeedOptions {
  users: number;
  generations: number;
  /** Default users / 20. */
  teams?: number;
  /** Default users × 2. */
  projects?: number;
  /** PRNG seed (unsigned 32-bit); the same seed gives the same data. Default 1. */
  seed?: number;
  /** The one password every seeded user has. Default 'velro-seed-password'. */
  password?: string;
  /** TRUNCATE the seeded tables (and sessions, refresh tokens, service keys) first. Default false. */
  reset?: boolean;
  /** A media row per completed generation. Default true. */
  media?: boolean;
  /** The credit ledger (signup, charges, refunds, top-ups) matching every balance. Default true. */
  ledger?: boolean;
  /** Signup credits, as the service's INITIAL_CREDITS. Default 1000. */
  initialCredits?: number;
  /** argon2id cost of the shared hash. Default the service's (19 MiB, 2 passes). */
  argon2?: { memoryKib: number; timeCost: number };
  /**
   * VACUUM (ANALYZE) instead of ANALYZE at the end when COPY FREEZE was not possible (appending to
   * a database that already held rows). Default true.
   */
  vacuum?: boolean;
  /**
   * The indexes of each seeded table (primary key and unique constraints included, with the foreign
   * keys that refer to them): 'rebuild' drops them before its COPY and restores them, built once,
   * after it, in the same transaction; 'keep' updates them row by row; 'auto' (default) rebuilds
   * when the table is empty before the load (after reset, or a new database).
   */
  indexes?: 'auto' | 'keep' | 'rebuild';
  /** The reference "now" timestamps are laid out from. Default the current time. */
  now?: Date;
}

export interface SeedProgress {
  phase: string;
  done: number;
  total: number;
}

export interface PhaseReport {
  phase: string;
  rows: number;
  ms: number;
  rowsPerSecond: number;
}

/**
 * Counted by the database after the load. Users are the seeded ones (by email domain); the other
 * tables are counted whole, so rows the database held before (without reset) are included.
 */
export interface SeedCounts {
  users: number;
  inactiveUsers: number;
  teams: number;
  teamMembers: number;
  inactiveMembers: number;
  projects: number;
  projectsInTeams: number;
  projectsByVisibility: { private: number; team: number; public: number };
  generations: number;
  generationsByStatus: { completed: number; failed: number; cancelled: number };
  deletedGenerations: number;
  media: number;
  creditTransactions: number;
}

export interface SeedReport {
  seed: number;
  password: string;
  /** `user<N>@seed.velro.test` for N in [0, users); user0 is the most active (Zipf rank 1). */
  emailPattern: string;
  counts: SeedCounts;
  /** Generations of the 10 most active users, most active first (user index = rank). */
  topUsers: { index: number; email: string; generations: number }[];
  phases: PhaseReport[];
  /** Rows loaded by COPY, over the whole run's wall time. */
  rows: number;
  totalMs: number;
  rowsPerSecond: number;
  /** The authz revision the load committed at (announced with key '*', an operator flush). */
  revision: number;
  /** Whether COPY … FREEZE was used: after reset, or into a database whose seeded tables were empty. */
  frozen: boolean;
}

export const SEED_EMAIL_DOMAIN = 'seed.velro.test';
export const DEFAULT_SEED_PASSWORD = 'velro-seed-password';

export function seedEmail(index: number): string {
  return `user${index}@${SEED_EMAIL_DOMAIN}`;
}

export type SeedKind = 'user' | 'team' | 'project' | 'generation' | 'media';

/**
 * The id of the index-th row of a kind, as seedData writes it (a well-formed v4 uuid). Users, teams,
 * projects and generations are numbered from 0 in load order; a media row has its generation's
 * index (only completed generations have one).
 */
export function seedId(seed: number, kind: SeedKind, index: number): string {
  return idFromKey(kindKey(seed, kind), index);
}

const SEEDED_TABLES = [
  'users',
  'teams',
  'team_members',
  'projects',
  'generations',
  'media',
  'credit_transactions',
] as const;

// ---------------------------------------------------------------------------------------------
// Counter-based randomness: value k of row i is mix(key, i, k). No state, so every pass over the
// generations recomputes exactly the fields it needs, in any order.

const GOLDEN = 0x9e3779b9;
const TWO_32 = 4_294_967_296;
const DAY_MS = 86_400_000;

/** lowbias32: a bijection on 32-bit integers with good avalanche. */
function mix32(input: number): number {
  let x = input >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

const KIND_TAGS: Record<SeedKind | 'draw', number> = {
  user: 0x75736572,
  team: 0x7465616d,
  project: 0x70726f6a,
  generation: 0x67656e65,
  media: 0x6d656469,
  draw: 0x64726177,
};

function kindKey(seed: number, kind: SeedKind | 'draw'): number {
  return mix32(mix32(seed ^ 0x5eed5eed) ^ KIND_TAGS[kind]);
}

/** Row key: distinct for distinct indexes below 2^32 (both steps are bijections). */
function rowKey(key: number, index: number): number {
  return mix32(key ^ mix32(index));
}

/** Uniform uint32, the k-th value of a row. */
function bits(row: number, k: number): number {
  return mix32((row + Math.imul(k, GOLDEN)) >>> 0);
}

/** Uniform in [0, 1). */
function unit(row: number, k: number): number {
  return bits(row, k) / TWO_32;
}

function pick<T>(list: readonly T[], row: number, k: number): T {
  return list[bits(row, k) % list.length] as T;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

function hex8(x: number): string {
  return HEX[x >>> 24]! + HEX[(x >>> 16) & 255]! + HEX[(x >>> 8) & 255]! + HEX[x & 255]!;
}

/** The four big-endian words of an id; one shared scratch array, read before the next call. */
const ID_WORDS = new Uint32Array(4);

function idWords(key: number, index: number): Uint32Array {
  const a = rowKey(key, index);
  const b = ((mix32(a + GOLDEN) & 0xffff0fff) | 0x4000) >>> 0;
  const c = ((mix32(b ^ key) & 0x3fffffff) | 0x80000000) >>> 0;
  ID_WORDS[0] = a;
  ID_WORDS[1] = b;
  ID_WORDS[2] = c;
  ID_WORDS[3] = mix32(c + index);
  return ID_WORDS;
}

function idFromKey(key: number, index: number): string {
  const w = idWords(key, index);
  const bh = hex8(w[1]!);
  const ch = hex8(w[2]!);
  return `${hex8(w[0]!)}-${bh.slice(0, 4)}-${bh.slice(4)}-${ch.slice(0, 4)}-${ch.slice(4)}${hex8(w[3]!)}`;
}

/** 64 hex characters (a sha256-shaped digest) from a row key. */
function hexDigest(row: number, k: number): string {
  let out = '';
  for (let j = 0; j < 8; j++) out += hex8(bits(row, k + j));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Vocabulary. No tab, newline or backslash anywhere: COPY text needs no escaping.

/** A word list written as one line: entries separated by '|'. */
function words(list: string): readonly string[] {
  return list.split('|');
}

const FIRST = words(
  'Ada|Alan|Grace|Linus|Barbara|Ken|Margaret|Dennis|Frances|Edsger|Radia|Donald|Hedy|John' +
    '|Katherine|Tim|Shafi|Niklaus|Sophie|Guido|Anita|Bjarne|Lynn|Yukihiro|Jean|Vint|Mary|Leslie' +
    '|Evelyn|Ivan',
);
const LAST = words(
  'Lovelace|Turing|Hopper|Torvalds|Liskov|Thompson|Hamilton|Ritchie|Allen|Dijkstra|Perlman|Knuth' +
    '|Lamarr|McCarthy|Johnson|Berners-Lee|Goldwasser|Wirth|Wilson|van Rossum|Borg|Stroustrup|Conway' +
    '|Matsumoto|Bartik|Cerf|Keller|Lamport|Boyd|Sutherland',
);
const TEAM_ADJ = words(
  'Blue|Quiet|Golden|Northern|Rapid|Silver|Bright|Crimson|Hidden|Open|Wild|Lucid|Electric|Paper' +
    '|Iron|Velvet',
);
const TEAM_NOUN = words(
  'Falcon|Harbor|Pixel|Orchard|Comet|Atlas|Lantern|Meadow|Circuit|Canvas|Summit|Tide|Forge|Prism' +
    '|Grove|Signal',
);
const TEAM_KIND = words('Studio|Labs|Collective|Agency|Works|Design|Media|Team');
const PROJECT_WORDS = words(
  'Spring campaign|Album cover|Storyboard|Product shots|Moodboard|Game concept art' +
    '|Book illustrations|Website hero|Social posts|Packaging|Poster series|Character sheet' +
    '|Logo explorations|Travel zine|Pitch deck|Menu redesign',
);
const SUBJECTS = words(
  'a red fox|an old lighthouse|a glass teapot|a mountain village|a robot gardener|a koi pond' +
    '|a vintage motorcycle|a city skyline|a sleeping cat|a paper boat|an astronaut|a desert caravan' +
    '|a violin on a chair|a bowl of ramen|a treehouse|a steam locomotive|a jellyfish' +
    '|a library staircase|a sunflower field|a lone samurai|a neon diner|a hummingbird|a castle ruin' +
    '|a snowy owl|a street market|a sailboat|a crystal cave|a bicycle courier|a greenhouse' +
    '|a dragon kite',
);
const SETTINGS = words(
  'in a misty forest|at dusk|under the northern lights|on a rainy street|at golden hour' +
    '|in a snowstorm|on the moon|by the sea|in a cyberpunk alley|in a quiet room|at sunrise' +
    '|in spring bloom|among the clouds|underwater|in the desert at noon',
);
const STYLES = words(
  'watercolor|oil painting|photorealistic|35mm film photo|isometric 3d render|ukiyo-e print' +
    '|pencil sketch|studio lighting|cinematic|low-poly|art nouveau poster|pixel art|charcoal drawing' +
    '|macro photography|flat vector illustration|gouache',
);
const MODIFIERS = ['highly detailed', 'soft focus', 'wide angle', 'dramatic shadows', 'pastel palette', '8k'];
const NEGATIVES = [
  'blurry, low quality',
  'text, watermark',
  'extra fingers, deformed hands',
  'oversaturated',
];
const FAILURES = [
  'provider timed out; no retries left',
  'provider error: out of capacity; no retries left',
  'worker lost; no retries left',
  'the provider refused the prompt',
];
const WORKERS = ['worker-a1', 'worker-a2', 'worker-b1', 'worker-b2', 'worker-c1', 'worker-c2'];

// ---------------------------------------------------------------------------------------------
// The world: who exists, which teams they are in, which projects they may put work in.

const ROLE_NAMES = ['owner', 'admin', 'editor', 'viewer'] as const;
const ROLE_OWNER = 0;
const ROLE_ADMIN = 1;
const ROLE_EDITOR = 2;
const VISIBILITIES = ['private', 'team', 'public'] as const;
const VIS_PRIVATE = 0;
const VIS_TEAM = 1;
const VIS_PUBLIC = 2;
const STATUS_COMPLETED = 0;
const STATUS_FAILED = 1;
const STATUS_CANCELLED = 2;
const STATUS_NAMES = ['completed', 'failed', 'cancelled'] as const;

const GENERATION_WINDOW_MS = 90 * DAY_MS;
/** Users signed up over the year before the generation window. */
const SIGNUP_SPAN_MS = 310 * DAY_MS;
/** Nothing is still running: seeded pending/processing rows would be picked up by workers' sweeps. */
const WINDOW_END_GAP_MS = 5 * 60_000;
const ZIPF_ACTIVITY = 1.1;
const ZIPF_PROJECT_OWNERS = 0.6;
const TEAM_SIZE_MIN = 2;
const TEAM_SIZE_ALPHA = 1.3;
const TEAM_SIZE_CAP = 2_000;
const TOP_UP_CREDITS = 10_000;

interface Model {
  id: string;
  cost: number;
  defaultWidth: number;
  defaultHeight: number;
  minWidth: number;
  maxWidth: number;
  minHeight: number;
  maxHeight: number;
  defaultSteps: number;
  /** Cumulative pick weight. */
  weight: number;
}

/** CSR adjacency: the values of owner o are list[start[o] .. start[o + 1]). */
interface Csr {
  start: Int32Array;
  list: Int32Array;
}

function buildCsr(
  owners: number,
  count: number,
  ownerOf: (item: number) => number,
  valueFor: (item: number) => number = (item) => item,
): Csr {
  const start = new Int32Array(owners + 1);
  for (let i = 0; i < count; i++) {
    const o = ownerOf(i);
    if (o >= 0) start[o + 1]! += 1;
  }
  for (let o = 0; o < owners; o++) start[o + 1]! += start[o]!;
  const fill = start.slice(0, owners);
  const list = new Int32Array(start[owners]!);
  for (let i = 0; i < count; i++) {
    const o = ownerOf(i);
    if (o >= 0) list[fill[o]!++] = valueFor(i);
  }
  return { start, list };
}

function zipfCdf(n: number, s: number): Float64Array {
  const cdf = new Float64Array(n);
  let total = 0;
  for (let k = 0; k < n; k++) {
    total += 1 / (k + 1) ** s;
    cdf[k] = total;
  }
  for (let k = 0; k < n; k++) cdf[k]! /= total;
  return cdf;
}

/** First index whose cumulative value is ≥ u. */
function searchCdf(cdf: Float64Array, u: number): number {
  let lo = 0;
  let hi = cdf.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cdf[mid]! < u) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

interface World {
  seed: number;
  now: number;
  windowStart: number;
  windowSpan: number;
  users: number;
  userActive: Uint8Array;
  userAdmin: Uint8Array;
  activity: Float64Array;
  teams: number;
  teamOwner: Int32Array;
  teamCreated: Float64Array;
  members: number;
  memberTeam: Int32Array;
  memberUser: Int32Array;
  memberRole: Uint8Array;
  memberActive: Uint8Array;
  projects: number;
  projectOwner: Int32Array;
  projectTeam: Int32Array;
  projectVisibility: Uint8Array;
  projectCreated: Float64Array;
  /** 0 when not deleted. */
  projectDeleted: Float64Array;
  owned: Csr;
  /** user → teams where they are an active owner, admin or editor (may add work to team projects). */
  editorTeams: Csr;
  /** team → its projects visible to the team (visibility team or public). */
  teamProjects: Csr;
  models: Model[];
  keys: { user: number; team: number; project: number; generation: number; media: number; draw: number };
}

function userCreated(world: World, u: number): number {
  return world.windowStart - SIGNUP_SPAN_MS + (SIGNUP_SPAN_MS * u) / Math.max(1, world.users);
}

function buildWorld(
  options: Required<Pick<SeedOptions, 'users' | 'teams' | 'projects' | 'seed'>>,
  now: number,
  models: Model[],
): World {
  const { users, seed } = options;
  const teams = users > 0 ? options.teams : 0;
  const projects = users > 0 ? options.projects : 0;
  const keys = {
    user: kindKey(seed, 'user'),
    team: kindKey(seed, 'team'),
    project: kindKey(seed, 'project'),
    generation: kindKey(seed, 'generation'),
    media: kindKey(seed, 'media'),
    draw: kindKey(seed, 'draw'),
  };
  const windowStart = now - GENERATION_WINDOW_MS;
  const world: World = {
    seed,
    now,
    windowStart,
    windowSpan: GENERATION_WINDOW_MS - WINDOW_END_GAP_MS,
    users,
    userActive: new Uint8Array(users),
    userAdmin: new Uint8Array(users),
    activity: zipfCdf(Math.max(1, users), ZIPF_ACTIVITY),
    teams,
    teamOwner: new Int32Array(teams),
    teamCreated: new Float64Array(teams),
    members: 0,
    memberTeam: new Int32Array(0),
    memberUser: new Int32Array(0),
    memberRole: new Uint8Array(0),
    memberActive: new Uint8Array(0),
    projects,
    projectOwner: new Int32Array(projects),
    projectTeam: new Int32Array(projects).fill(-1),
    projectVisibility: new Uint8Array(projects),
    projectCreated: new Float64Array(projects),
    projectDeleted: new Float64Array(projects),
    owned: { start: new Int32Array(users + 1), list: new Int32Array(0) },
    editorTeams: { start: new Int32Array(users + 1), list: new Int32Array(0) },
    teamProjects: { start: new Int32Array(teams + 1), list: new Int32Array(0) },
    models,
    keys,
  };

  // Users: 1 % deactivated, 1 in 1,000 an admin. The ten most active (Zipf ranks) stay active.
  for (let u = 0; u < users; u++) {
    const r = rowKey(keys.user, u);
    world.userActive[u] = u < 10 || unit(r, 1) >= 0.01 ? 1 : 0;
    world.userAdmin[u] = unit(r, 2) < 0.001 ? 1 : 0;
  }

  // Teams: sizes Pareto(2, 1.3) — most teams a handful of people, a few hundreds. Member 0 is the
  // primary owner (teams.owner_id), always an active user and an active member.
  const sizes = new Int32Array(teams);
  let memberTotal = 0;
  const cap = Math.min(users, TEAM_SIZE_CAP);
  for (let t = 0; t < teams; t++) {
    const r = rowKey(keys.team, t);
    const u = 1 - unit(r, 1);
    const size = Math.min(cap, Math.max(1, Math.floor(TEAM_SIZE_MIN / u ** (1 / TEAM_SIZE_ALPHA))));
    sizes[t] = size;
    memberTotal += size;
  }
  world.members = memberTotal;
  world.memberTeam = new Int32Array(memberTotal);
  world.memberUser = new Int32Array(memberTotal);
  world.memberRole = new Uint8Array(memberTotal);
  world.memberActive = new Uint8Array(memberTotal);
  let m = 0;
  const chosen = new Set<number>();
  for (let t = 0; t < teams; t++) {
    const r = rowKey(keys.team, t);
    let owner = bits(r, 2) % users;
    for (let k = 3; world.userActive[owner] === 0; k++) owner = bits(r, k) % users;
    world.teamOwner[t] = owner;
    const ownerSince = userCreated(world, owner);
    world.teamCreated[t] = ownerSince + unit(r, 60) * (windowStart - ownerSince);
    chosen.clear();
    chosen.add(owner);
    world.memberTeam[m] = t;
    world.memberUser[m] = owner;
    world.memberRole[m] = ROLE_OWNER;
    world.memberActive[m] = 1;
    m++;
    for (let j = 1; j < sizes[t]!; j++) {
      const mr = rowKey(keys.team ^ 0x6d656d62, m);
      let user = bits(mr, 0) % users;
      for (let k = 1; chosen.has(user); k++) user = bits(mr, k) % users;
      chosen.add(user);
      const roll = unit(mr, 40);
      world.memberTeam[m] = t;
      world.memberUser[m] = user;
      world.memberRole[m] =
        roll < 0.03 ? ROLE_OWNER : roll < 0.13 ? ROLE_ADMIN : roll < 0.55 ? ROLE_EDITOR : 3;
      world.memberActive[m] = unit(mr, 41) < 0.08 ? 0 : 1;
      m++;
    }
  }
  // Team → the users who are its active owners and admins (may put projects in it).
  const managers = buildCsr(
    teams,
    memberTotal,
    (i) => (world.memberActive[i] === 1 && world.memberRole[i]! <= ROLE_ADMIN ? world.memberTeam[i]! : -1),
    (i) => world.memberUser[i]!,
  );
  world.editorTeams = buildCsr(
    users,
    memberTotal,
    (i) => (world.memberActive[i] === 1 && world.memberRole[i]! <= ROLE_EDITOR ? world.memberUser[i]! : -1),
    (i) => world.memberTeam[i]!,
  );

  // Projects: half in a team (teams drawn by size, owned by one of its managers), the rest personal,
  // owned by users drawn from Zipf(0.6) over activity ranks. Visibility 50/35/15 overall: team
  // projects 15 % private / 70 % team / 15 % public, personal ones 85 % private / 15 % public.
  const teamCdf = new Float64Array(teams);
  let acc = 0;
  for (let t = 0; t < teams; t++) {
    acc += sizes[t]!;
    teamCdf[t] = acc;
  }
  for (let t = 0; t < teams; t++) teamCdf[t]! /= acc;
  const ownerCdf = zipfCdf(Math.max(1, users), ZIPF_PROJECT_OWNERS);
  for (let p = 0; p < projects; p++) {
    const r = rowKey(keys.project, p);
    let owner: number;
    let since: number;
    if (teams > 0 && unit(r, 1) < 0.5) {
      const t = searchCdf(teamCdf, unit(r, 2));
      const first = managers.start[t]!;
      owner = managers.list[first + (bits(r, 3) % (managers.start[t + 1]! - first))]!;
      world.projectTeam[p] = t;
      const roll = unit(r, 4);
      world.projectVisibility[p] = roll < 0.15 ? VIS_PRIVATE : roll < 0.85 ? VIS_TEAM : VIS_PUBLIC;
      since = Math.max(world.teamCreated[t]!, userCreated(world, owner));
    } else {
      owner = searchCdf(ownerCdf, unit(r, 2));
      world.projectVisibility[p] = unit(r, 4) < 0.85 ? VIS_PRIVATE : VIS_PUBLIC;
      since = userCreated(world, owner);
    }
    world.projectOwner[p] = owner;
    world.projectCreated[p] = since + unit(r, 5) * (windowStart - since);
    // 2 % deleted, within the last 30 days.
    if (unit(r, 6) < 0.02) world.projectDeleted[p] = now - unit(r, 7) * 30 * DAY_MS;
  }
  world.owned = buildCsr(users, projects, (p) => world.projectOwner[p]!);
  world.teamProjects = buildCsr(teams, projects, (p) =>
    world.projectVisibility[p] !== VIS_PRIVATE ? world.projectTeam[p]! : -1,
  );
  return world;
}

// ---------------------------------------------------------------------------------------------
// One generation, drawn from its index. Shared by every pass (plan, generations, media, ledger).

interface Draw {
  user: number;
  /** -1: no project. */
  project: number;
  model: Model;
  status: number;
  created: number;
  /** 0: never started. */
  started: number;
  /** When it reached its final status. */
  finished: number;
  /** 0: not deleted. */
  deleted: number;
  width: number;
  height: number;
}

function drawGeneration(world: World, total: number, i: number, out: Draw): Draw {
  const r = rowKey(world.keys.generation, i);
  const user = searchCdf(world.activity, unit(r, 1));
  out.user = user;
  // Evenly through the window with traffic growing over time (density ∝ 1 + t): the recent days
  // are about twice as busy as three months ago. Monotonic in i, so index order is time order.
  const q = (i + unit(r, 2)) / total;
  const created = world.windowStart + (Math.sqrt(1 + 3 * q) - 1) * world.windowSpan;
  out.created = created;

  const roll = unit(r, 3);
  let model = world.models[world.models.length - 1]!;
  for (const candidate of world.models) {
    if (roll < candidate.weight) {
      model = candidate;
      break;
    }
  }
  out.model = model;

  // Mostly the model's default canvas, sometimes a landscape or portrait one within its limits.
  const shape = unit(r, 4);
  let width = model.defaultWidth;
  let height = model.defaultHeight;
  if (shape >= 0.7) {
    const long = Math.min(shape < 0.85 ? model.maxWidth : model.maxHeight, Math.round((width * 1.5) / 8) * 8);
    const short = Math.max(
      shape < 0.85 ? model.minHeight : model.minWidth,
      Math.round((height * 2) / 3 / 8) * 8,
    );
    if (shape < 0.85) {
      width = long;
      height = short;
    } else {
      width = short;
      height = long;
    }
  }
  out.width = width;
  out.height = height;

  const s = unit(r, 5);
  out.status = s < 0.935 ? STATUS_COMPLETED : s < 0.975 ? STATUS_FAILED : STATUS_CANCELLED;
  const queued = 300 + unit(r, 6) * 4_000;
  const runMs = (2_000 + unit(r, 7) * 6_000) * Math.max(1, model.cost / 10) ** 0.5;
  if (out.status === STATUS_CANCELLED && unit(r, 8) < 0.5) {
    out.started = 0;
    out.finished = created + queued * (0.2 + unit(r, 9));
  } else {
    out.started = created + queued;
    out.finished = out.started + runMs * (out.status === STATUS_COMPLETED ? 1 : 0.2 + unit(r, 9));
  }
  out.deleted = unit(r, 10) < 0.04 ? out.finished + unit(r, 11) * (world.now - out.finished) : 0;

  // 85 % in a project the user may add work to: their own (60 %) or a team-visible project of a
  // team where they are an active editor or more. Never one deleted before the generation.
  out.project = -1;
  if (unit(r, 12) < 0.85) {
    const ownFirst = world.owned.start[user]!;
    const own = world.owned.start[user + 1]! - ownFirst;
    const teamFirst = world.editorTeams.start[user]!;
    const teamCount = world.editorTeams.start[user + 1]! - teamFirst;
    let project = -1;
    if (teamCount > 0 && (own === 0 || unit(r, 13) >= 0.6)) {
      const t = world.editorTeams.list[teamFirst + (bits(r, 14) % teamCount)]!;
      const first = world.teamProjects.start[t]!;
      const n = world.teamProjects.start[t + 1]! - first;
      if (n > 0) project = world.teamProjects.list[first + (bits(r, 15) % n)]!;
    }
    if (project < 0 && own > 0) project = world.owned.list[ownFirst + (bits(r, 16) % own)]!;
    if (project >= 0) {
      const deletedAt = world.projectDeleted[project]!;
      if (deletedAt === 0 || deletedAt > created) out.project = project;
    }
  }
  return out;
}

function newDraw(world: World): Draw {
  return {
    user: 0,
    project: -1,
    model: world.models[0]!,
    status: 0,
    created: 0,
    started: 0,
    finished: 0,
    deleted: 0,
    width: 0,
    height: 0,
  };
}

type LedgerEmit = (user: number, amount: number, balance: number, reason: string, at: number) => void;

/**
 * The ledger's movements for one generation, in generation order after every user's signup: a
 * charge (preceded by an admin top-up when the balance does not cover it, so balance_after never
 * goes negative) and a refund when it failed or was cancelled. Returns the number of rows.
 */
function ledgerStep(draw: Draw, balances: Int32Array, emit: LedgerEmit | null): number {
  const cost = draw.model.cost;
  if (cost === 0) return 0;
  const u = draw.user;
  let balance = balances[u]!;
  let rows = 1;
  if (balance < cost) {
    const grant = Math.max(TOP_UP_CREDITS, cost);
    balance += grant;
    emit?.(u, grant, balance, 'admin_grant', draw.created - 1_000);
    rows++;
  }
  balance -= cost;
  emit?.(u, -cost, balance, 'generation_charge', draw.created);
  if (draw.status !== STATUS_COMPLETED) {
    balance += cost;
    emit?.(u, cost, balance, 'generation_refund', draw.finished);
    rows++;
  }
  balances[u] = balance;
  return rows;
}

// ---------------------------------------------------------------------------------------------
// COPY plumbing. A producer fills one batch (about 256 KiB) at a time; the stream asks for the next
// batch only when COPY has taken the previous one, so memory stays flat whatever the row count.
// Every table goes in COPY's binary format, which spares the server parsing uuids, timestamps and
// numbers (measured: about half its CPU time per row when no index is maintained) and spares us
// formatting them.

const BATCH_BYTES = 1 << 18;

interface Producer {
  /** Rows this producer will write (for progress). */
  total: number;
  /** Rows written so far. */
  done: number;
  next(): Buffer | null;
}

const PG_EPOCH_MS = 946_684_800_000;
const COPY_SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/** Rows in PostgreSQL's binary COPY format: per row a field count, per field a length and the bytes. */
class BinaryRows {
  private buf = Buffer.allocUnsafe(BATCH_BYTES + 65_536);
  private pos = 0;

  get full(): boolean {
    return this.pos >= BATCH_BYTES;
  }

  /** The batch so far, handed to the stream (which keeps it); writing goes on in a new buffer. */
  take(): Buffer {
    const out = this.buf.subarray(0, this.pos);
    this.buf = Buffer.allocUnsafe(BATCH_BYTES + 65_536);
    this.pos = 0;
    return out;
  }

  header(): void {
    COPY_SIGNATURE.copy(this.buf, 0);
    this.buf.writeInt32BE(0, 11);
    this.buf.writeInt32BE(0, 15);
    this.pos = 19;
  }

  trailer(): void {
    this.pos = this.buf.writeInt16BE(-1, this.pos);
  }

  /** Starts a row; rows are small (well under 64 KiB), so one check per row keeps room. */
  row(fields: number): void {
    if (this.pos > this.buf.length - 16_384) {
      const bigger = Buffer.allocUnsafe(this.buf.length * 2);
      this.buf.copy(bigger, 0, 0, this.pos);
      this.buf = bigger;
    }
    this.pos = this.buf.writeInt16BE(fields, this.pos);
  }

  nul(): void {
    this.pos = this.buf.writeInt32BE(-1, this.pos);
  }

  uuid(key: number, index: number): void {
    const w = idWords(key, index);
    let p = this.buf.writeInt32BE(16, this.pos);
    p = this.buf.writeUInt32BE(w[0]!, p);
    p = this.buf.writeUInt32BE(w[1]!, p);
    p = this.buf.writeUInt32BE(w[2]!, p);
    this.pos = this.buf.writeUInt32BE(w[3]!, p);
  }

  text(value: string): void {
    const n = this.buf.write(value, this.pos + 4, 'utf8');
    this.buf.writeInt32BE(n, this.pos);
    this.pos += 4 + n;
  }

  /** jsonb: a version byte (1), then the JSON text. */
  jsonb(value: string): void {
    const n = this.buf.write(value, this.pos + 5, 'utf8');
    this.buf.writeInt32BE(n + 1, this.pos);
    this.buf[this.pos + 4] = 1;
    this.pos += 5 + n;
  }

  int2(value: number): void {
    this.pos = this.buf.writeInt16BE(value, this.buf.writeInt32BE(2, this.pos));
  }

  int4(value: number): void {
    this.pos = this.buf.writeInt32BE(value, this.buf.writeInt32BE(4, this.pos));
  }

  int8(value: number): void {
    const hi = Math.floor(value / TWO_32);
    const p = this.buf.writeInt32BE(hi, this.buf.writeInt32BE(8, this.pos));
    this.pos = this.buf.writeUInt32BE(value - hi * TWO_32, p);
  }

  bool(value: boolean): void {
    const p = this.buf.writeInt32BE(1, this.pos);
    this.buf[p] = value ? 1 : 0;
    this.pos = p + 1;
  }

  /** timestamptz: microseconds since 2000-01-01 UTC, as int8. */
  ts(ms: number): void {
    this.int8((Math.floor(ms) - PG_EPOCH_MS) * 1000);
  }

  hex64(row: number, k: number): void {
    let p = this.buf.writeInt32BE(64, this.pos);
    for (let j = 0; j < 8; j++) p += this.buf.write(hex8(bits(row, k + j)), p, 'latin1');
    this.pos = p;
  }
}

/**
 * A binary producer: `row(i, out)` writes the rows of item i (none, one or several, e.g. a ledger
 * walk) and returns how many it wrote.
 */
function binaryProducer(items: number, total: number, row: (i: number, out: BinaryRows) => number): Producer {
  const out = new BinaryRows();
  let i = 0;
  let finished = false;
  const producer: Producer = {
    total,
    done: 0,
    next() {
      if (finished) return null;
      if (i === 0) out.header();
      while (i < items && !out.full) producer.done += row(i++, out);
      if (i >= items) {
        out.trailer();
        finished = true;
      }
      return out.take();
    },
  };
  return producer;
}

type Progress = (p: SeedProgress) => void;

function throttled(onProgress: Progress | undefined): Progress {
  let last = 0;
  return (p) => {
    if (!onProgress) return;
    const t = Date.now();
    if (p.done === 0 || p.done >= p.total || t - last >= 100) {
      last = t;
      onProgress(p);
    }
  };
}

async function copyInto(
  client: pg.Client,
  table: string,
  columns: readonly string[],
  producer: Producer,
  freeze: boolean,
  progress: Progress,
): Promise<number> {
  const sql = `COPY ${table} (${columns.join(', ')}) FROM STDIN WITH (FORMAT binary${freeze ? ', FREEZE' : ''})`;
  progress({ phase: table, done: 0, total: producer.total });
  const source = new Readable({
    highWaterMark: 1,
    read() {
      const batch = producer.next();
      if (batch !== null && producer.done < producer.total) {
        progress({ phase: table, done: producer.done, total: producer.total });
      }
      this.push(batch);
    },
  });
  const sink = client.query(copyFrom(sql));
  await pipeline(source, sink);
  progress({ phase: table, done: producer.total, total: producer.total });
  return sink.rowCount;
}

/**
 * Everything that makes a COPY into `table` maintain an index, with the statements that restore it:
 * foreign keys of other tables that refer to it (they depend on its key), its primary-key and
 * unique constraints, and its other indexes. Dropped in that order, restored in the reverse one.
 */
interface IndexPlan {
  referencing: { drop: string; restore: string }[];
  constraints: { drop: string; restore: string }[];
  indexes: { drop: string; restore: string }[];
}

async function indexPlan(client: pg.Client, table: string): Promise<IndexPlan> {
  const constraint = (kinds: string, column: 'conrelid' | 'confrelid') =>
    client.query<{ drop: string; restore: string }>(
      `SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', conrelid::regclass, conname) AS drop,
              format('ALTER TABLE %s ADD CONSTRAINT %I %s', conrelid::regclass, conname,
                     pg_get_constraintdef(oid)) AS restore
         FROM pg_constraint
        WHERE ${column} = $1::regclass AND contype = ANY($2::char[])
        ORDER BY conname`,
      [table, kinds.split('')],
    );
  const referencing = await constraint('f', 'confrelid');
  const constraints = await constraint('pux', 'conrelid');
  const indexes = await client.query<{ drop: string; restore: string }>(
    `SELECT format('DROP INDEX %s', i.indexrelid::regclass) AS drop, pg_get_indexdef(i.indexrelid) AS restore
       FROM pg_index i
      WHERE i.indrelid = $1::regclass
        AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
      ORDER BY i.indexrelid::regclass::text`,
    [table],
  );
  return { referencing: referencing.rows, constraints: constraints.rows, indexes: indexes.rows };
}

// ---------------------------------------------------------------------------------------------

const ARGON2ID = 2 as Algorithm;

/**
 * Loads `options.users` users, teams, memberships, projects and `options.generations` generations
 * (with media and the credit ledger) into the database at `connectionString`, migrating it first.
 * One transaction with the user triggers off (session_replication_role = replica: needs a
 * superuser), closed by one revision bump announced as an operator flush ('*'); then ANALYZE (or
 * VACUUM ANALYZE) and a refresh of the materialized views. Refuses to add a second copy of the
 * seeded users unless `reset`.
 */
export async function seedData(
  connectionString: string,
  options: SeedOptions,
  onProgress?: (p: SeedProgress) => void,
): Promise<SeedReport> {
  const started = performance.now();
  const seed = (options.seed ?? 1) >>> 0;
  const users = checkCount('users', options.users);
  const generations = checkCount('generations', options.generations);
  const teams = checkCount('teams', options.teams ?? Math.floor(users / 20));
  const projects = checkCount('projects', options.projects ?? users * 2);
  if (generations > 0 && users === 0) throw new Error('generations need at least one user');
  const password = options.password ?? DEFAULT_SEED_PASSWORD;
  const initialCredits = options.initialCredits ?? 1000;
  const withMedia = options.media ?? true;
  const withLedger = options.ledger ?? true;
  const reset = options.reset ?? false;
  const indexMode = options.indexes ?? 'auto';
  const now = (options.now ?? new Date()).getTime();
  const progress = throttled(onProgress);
  const phases: PhaseReport[] = [];
  const phase = async <T>(name: string, rows: (result: T) => number, run: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const result = await run();
    const ms = performance.now() - t0;
    const n = rows(result);
    phases.push({
      phase: name,
      rows: n,
      ms: Math.round(ms),
      rowsPerSecond: ms > 0 ? Math.round((n * 1000) / ms) : 0,
    });
    return result;
  };
  const simple = (name: string, run: () => Promise<unknown>) =>
    phase(
      name,
      () => 0,
      async () => {
        progress({ phase: name, done: 0, total: 1 });
        await run();
        progress({ phase: name, done: 1, total: 1 });
      },
    );

  await simple('migrate', () => migrate(connectionString));
  const passwordHash = await phase(
    'hash_password',
    () => 1,
    () =>
      argon2Hash(password, {
        algorithm: ARGON2ID,
        memoryCost: options.argon2?.memoryKib ?? 19_456,
        timeCost: options.argon2?.timeCost ?? 2,
      }),
  );

  const client = new pg.Client({ connectionString, application_name: 'velro_seed_data' });
  await client.connect();
  try {
    const models = await loadModels(client);
    if (generations > 0 && models.length === 0) throw new Error('no active image model in the models table');

    const world = await phase(
      'plan_world',
      (w) => w.users + w.teams + w.members + w.projects,
      async () => buildWorld({ users, teams, projects, seed }, now, models),
    );

    // A dry walk over the generations gives every user's final balance (users are written first),
    // the exact row counts (progress totals) and the most active users.
    const balances = new Int32Array(users).fill(initialCredits);
    const perUser = new Int32Array(users);
    const plan = await phase(
      'plan_generations',
      () => generations,
      async () => {
        const draw = newDraw(world);
        let ledgerRows = users;
        let mediaRows = 0;
        const slice = 500_000;
        progress({ phase: 'plan_generations', done: 0, total: generations });
        for (let from = 0; from < generations; from += slice) {
          const to = Math.min(generations, from + slice);
          for (let i = from; i < to; i++) {
            drawGeneration(world, generations, i, draw);
            perUser[draw.user]! += 1;
            if (draw.status === STATUS_COMPLETED) mediaRows++;
            ledgerRows += ledgerStep(draw, balances, null);
          }
          progress({ phase: 'plan_generations', done: to, total: generations });
          // Let the event loop breathe (progress output, signals) between slices.
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
        return { ledgerRows, mediaRows };
      },
    );

    await client.query('BEGIN');
    let frozen = false;
    let revision = 0;
    let loadedRows = 0;
    try {
      await client.query("SET LOCAL statement_timeout = '0'");
      await client.query("SET LOCAL maintenance_work_mem = '512MB'");
      try {
        // Also skips the foreign-key triggers: the rows are consistent by construction.
        await client.query("SET LOCAL session_replication_role = 'replica'");
      } catch (error) {
        throw new Error(
          `seed-data needs a role allowed to set session_replication_role (a superuser): ${errorMessage(error)}`,
        );
      }
      const truncatable = [...SEEDED_TABLES, 'sessions', 'refresh_tokens', 'service_keys'].join(', ');
      if (reset) {
        await simple('reset', () => client.query(`TRUNCATE ${truncatable} RESTART IDENTITY CASCADE`));
        // Truncated in this transaction: COPY may write the rows frozen and all-visible, so no
        // reader (nor VACUUM) has to set hint bits on them afterwards.
        frozen = true;
      } else {
        const taken = await client.query('SELECT 1 FROM users WHERE email = $1', [seedEmail(0)]);
        if ((taken.rowCount ?? 0) > 0) {
          throw new Error(
            `${seedEmail(0)} already exists: seed with reset (--reset) to replace the seeded data`,
          );
        }
        // A new database: truncating its empty tables loses nothing and allows FREEZE as well.
        // Without CASCADE, and undone if refused (a table we do not know refers to one of them).
        const { rows } = await client.query<{ empty: boolean }>(
          `SELECT ${truncatable
            .split(', ')
            .map((t) => `NOT EXISTS (SELECT 1 FROM ${t})`)
            .join(' AND ')} AS empty`,
        );
        if (rows[0]?.empty === true) {
          await client.query('SAVEPOINT seed_truncate');
          try {
            await client.query(`TRUNCATE ${truncatable}`);
            await client.query('RELEASE SAVEPOINT seed_truncate');
            frozen = true;
          } catch {
            await client.query('ROLLBACK TO SAVEPOINT seed_truncate');
          }
        }
      }

      const copy = async (table: string, columns: readonly string[], producer: Producer): Promise<void> => {
        // Into an empty table, one sorted build per index after the load beats keeping each index
        // up to date row by row, the primary key above all: random uuids land on random leaves, and
        // past shared_buffers every insert is a page miss (see this file's header for figures).
        // The foreign keys that refer to the table go too (they depend on its key); put back right
        // after this COPY, they are checked against tables that are loaded later, so still empty.
        let plan: IndexPlan | null = null;
        if (indexMode !== 'keep') {
          const empty =
            indexMode === 'rebuild' ||
            (await client.query(`SELECT NOT EXISTS (SELECT 1 FROM ${table}) AS empty`)).rows[0]?.empty ===
              true;
          if (empty) {
            plan = await indexPlan(client, table);
            for (const step of [...plan.referencing, ...plan.constraints, ...plan.indexes]) {
              await client.query(step.drop);
            }
          }
        }
        const n = await phase(
          table,
          (rows: number) => rows,
          () => copyInto(client, table, columns, producer, frozen, progress),
        );
        loadedRows += n;
        if (plan) {
          const steps = [...plan.constraints, ...plan.indexes, ...plan.referencing];
          const name = `${table} indexes`;
          await phase(
            name,
            () => n,
            async () => {
              for (let done = 0; done < steps.length; done++) {
                progress({ phase: name, done, total: steps.length });
                await client.query(steps[done]!.restore);
              }
              progress({ phase: name, done: steps.length, total: steps.length });
            },
          );
        }
      };

      await copy(
        'users',
        [
          'id',
          'email',
          'password_hash',
          'display_name',
          'role',
          'credits_balance',
          'is_active',
          'created_at',
          'updated_at',
        ],
        binaryProducer(users, users, (u, out) => {
          const r = rowKey(world.keys.user, u);
          const created = userCreated(world, u) + unit(r, 3) * 3_600_000;
          out.row(9);
          out.uuid(world.keys.user, u);
          out.text(seedEmail(u));
          out.text(passwordHash);
          out.text(`${pick(FIRST, r, 4)} ${pick(LAST, r, 5)}`);
          out.text(world.userAdmin[u] ? 'admin' : 'user');
          out.int4(balances[u]!);
          out.bool(world.userActive[u] === 1);
          out.ts(created);
          out.ts(created);
          return 1;
        }),
      );

      await copy(
        'teams',
        ['id', 'name', 'owner_id', 'created_at', 'updated_at'],
        binaryProducer(world.teams, world.teams, (t, out) => {
          const r = rowKey(world.keys.team, t);
          out.row(5);
          out.uuid(world.keys.team, t);
          out.text(`${pick(TEAM_ADJ, r, 20)} ${pick(TEAM_NOUN, r, 21)} ${pick(TEAM_KIND, r, 22)}`);
          out.uuid(world.keys.user, world.teamOwner[t]!);
          out.ts(world.teamCreated[t]!);
          out.ts(world.teamCreated[t]!);
          return 1;
        }),
      );

      await copy(
        'team_members',
        ['team_id', 'user_id', 'role', 'is_active', 'created_at', 'updated_at'],
        binaryProducer(world.members, world.members, (m, out) => {
          const t = world.memberTeam[m]!;
          const u = world.memberUser[m]!;
          const r = rowKey(world.keys.team ^ 0x6d656d62, m);
          const teamSince = world.teamCreated[t]!;
          const since = Math.max(teamSince, userCreated(world, u));
          const created =
            u === world.teamOwner[t] ? teamSince : since + unit(r, 50) * (world.windowStart - since);
          const active = world.memberActive[m] === 1;
          out.row(6);
          out.uuid(world.keys.team, t);
          out.uuid(world.keys.user, u);
          out.text(ROLE_NAMES[world.memberRole[m]!]!);
          out.bool(active);
          out.ts(created);
          // An inactive membership was switched off some time after it began.
          out.ts(active ? created : created + unit(r, 51) * (world.now - created));
          return 1;
        }),
      );

      await copy(
        'projects',
        [
          'id',
          'owner_id',
          'team_id',
          'name',
          'description',
          'visibility',
          'created_at',
          'updated_at',
          'deleted_at',
        ],
        binaryProducer(world.projects, world.projects, (p, out) => {
          const r = rowKey(world.keys.project, p);
          const team = world.projectTeam[p]!;
          const deletedAt = world.projectDeleted[p]!;
          out.row(9);
          out.uuid(world.keys.project, p);
          out.uuid(world.keys.user, world.projectOwner[p]!);
          if (team >= 0) out.uuid(world.keys.team, team);
          else out.nul();
          out.text(`${pick(PROJECT_WORDS, r, 33)} ${p}`);
          out.text(unit(r, 30) < 0.4 ? `${pick(SUBJECTS, r, 31)} ${pick(SETTINGS, r, 32)}` : '');
          out.text(VISIBILITIES[world.projectVisibility[p]!]!);
          out.ts(world.projectCreated[p]!);
          out.ts(deletedAt > 0 ? deletedAt : world.projectCreated[p]!);
          if (deletedAt > 0) out.ts(deletedAt);
          else out.nul();
          return 1;
        }),
      );

      const draw = newDraw(world);
      await copy(
        'generations',
        GENERATION_COLUMNS,
        binaryProducer(generations, generations, (i, out) => {
          writeGeneration(world, i, drawGeneration(world, generations, i, draw), seed, out);
          return 1;
        }),
      );

      if (withMedia) {
        await copy(
          'media',
          ['id', 'generation_id', 'mime', 'width', 'height', 'bytes', 'sha256', 'storage_key', 'created_at'],
          binaryProducer(generations, plan.mediaRows, (i, out) => {
            const d = drawGeneration(world, generations, i, draw);
            if (d.status !== STATUS_COMPLETED) return 0;
            writeMedia(world, i, d, out);
            return 1;
          }),
        );
      }

      if (withLedger) {
        const walk = new Int32Array(users).fill(initialCredits);
        let out: BinaryRows | null = null;
        let generation = 0;
        const emit: LedgerEmit = (u, amount, balance, reason, at) => {
          const o = out!;
          o.row(6);
          o.uuid(world.keys.user, u);
          o.int4(amount);
          o.int4(balance);
          o.text(reason);
          if (reason === 'admin_grant') o.nul();
          else o.uuid(world.keys.generation, generation);
          o.ts(at);
        };
        // Items 0‥users-1 are the signups, then one item per generation, in generation order.
        const producer = binaryProducer(users + generations, plan.ledgerRows, (item, o) => {
          out = o;
          if (item < users) {
            const r = rowKey(world.keys.user, item);
            o.row(6);
            o.uuid(world.keys.user, item);
            o.int4(initialCredits);
            o.int4(initialCredits);
            o.text('signup');
            o.nul();
            o.ts(userCreated(world, item) + unit(r, 3) * 3_600_000);
            return 1;
          }
          generation = item - users;
          return ledgerStep(drawGeneration(world, generations, generation, draw), walk, emit);
        });
        await copy(
          'credit_transactions',
          ['user_id', 'amount', 'balance_after', 'reason', 'generation_id', 'created_at'],
          producer,
        );
      }

      // One revision for the whole load, announced as an operator flush, exactly as
      // POST /admin/cache/flush does it: running instances drop everything cached before it, and
      // the floor makes instances started later ignore older shared (L2) entries too.
      revision = await phase(
        'revision',
        () => 1,
        () => flushEverywhere(client),
      );
      await simple('commit', () => client.query('COMMIT'));
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    }

    const tables = SEEDED_TABLES.join(', ');
    // Without FREEZE the new rows have no hint bits and no visibility-map bits: the first readers
    // (the benchmark) would pay for writing them, and index-only scans would visit the heap.
    if (!frozen && (options.vacuum ?? true)) {
      await simple('vacuum_analyze', () => client.query(`VACUUM (ANALYZE) ${tables}`));
    } else {
      await simple('analyze', () => client.query(`ANALYZE ${tables}`));
    }
    await simple('refresh_views', () => refreshViews(client));

    const counts = await countWorld(client);
    const totalMs = performance.now() - started;
    return {
      seed,
      password,
      emailPattern: `user<N>@${SEED_EMAIL_DOMAIN}`,
      counts,
      topUsers: topUserCounts(perUser, 10),
      phases,
      rows: loadedRows,
      totalMs: Math.round(totalMs),
      rowsPerSecond: Math.round((loadedRows * 1000) / totalMs),
      revision,
      frozen,
    };
  } finally {
    await client.end();
  }
}

/**
 * mv_user_authorization_context asks, per user, for max(created_at) of their generations with no
 * filter on deleted_at, so none of generations' (partial) indexes serves it: as defined in migration
 * 004 its refresh scans the whole table once per user (10k users × 100k generations took 380 s
 * here). A throw-away index that exists only inside this transaction turns each probe into one
 * index lookup.
 */
async function refreshViews(client: pg.Client): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query("SET LOCAL maintenance_work_mem = '512MB'");
    await client.query("SET LOCAL work_mem = '256MB'");
    await client.query('SET LOCAL jit = off');
    await client.query('CREATE INDEX seed_data_refresh_tmp ON generations (user_id, created_at)');
    await client.query('REFRESH MATERIALIZED VIEW mv_user_authorization_context');
    await client.query('DROP INDEX seed_data_refresh_tmp');
    await client.query('REFRESH MATERIALIZED VIEW mv_generation_access_patterns');
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

const GENERATION_COLUMNS = [
  'id',
  'user_id',
  'project_id',
  'model_id',
  'prompt',
  'negative_prompt',
  'parameters',
  'status',
  'progress',
  'error',
  'cost_credits',
  'is_favorite',
  'idempotency_key',
  'idempotency_hash',
  'created_at',
  'updated_at',
  'started_at',
  'completed_at',
  'deleted_at',
  'attempt',
  'failures',
  'job_id',
  'heartbeat_at',
  'worker_id',
] as const;

function writeGeneration(world: World, i: number, d: Draw, seed: number, out: BinaryRows): void {
  const x = rowKey(world.keys.draw, i);
  const key = world.keys.generation;
  out.row(GENERATION_COLUMNS.length);
  out.uuid(key, i);
  out.uuid(world.keys.user, d.user);
  if (d.project >= 0) out.uuid(world.keys.project, d.project);
  else out.nul();
  out.text(d.model.id);
  let prompt = `${pick(SUBJECTS, x, 1)} ${pick(SETTINGS, x, 2)}, ${pick(STYLES, x, 3)}`;
  if (unit(x, 4) < 0.5) prompt += `, ${pick(MODIFIERS, x, 5)}`;
  out.text(prompt);
  if (unit(x, 6) < 0.3) out.text(pick(NEGATIVES, x, 7));
  else out.nul();
  const guidance = unit(x, 8) < 0.8 ? 7 : 4 + (bits(x, 9) % 9);
  out.jsonb(
    `{"width": ${d.width}, "height": ${d.height}, "seed": ${bits(x, 10)}, "steps": ${d.model.defaultSteps}, "guidance_scale": ${guidance}}`,
  );
  out.text(STATUS_NAMES[d.status]!);
  let progress = 100;
  let error: string | null = null;
  let attempt = 1;
  let failures = 0;
  if (d.status === STATUS_COMPLETED) {
    if (unit(x, 12) < 0.05) {
      attempt = 2;
      failures = 1;
    }
  } else if (d.status === STATUS_FAILED) {
    progress = bits(x, 13) % 90;
    error = pick(FAILURES, x, 14);
    attempt = 3;
    failures = 3;
  } else {
    progress = d.started > 0 ? bits(x, 13) % 95 : 0;
    error = 'cancelled by user';
    attempt = d.started > 0 ? 1 : 0;
  }
  out.int2(progress);
  if (error === null) out.nul();
  else out.text(error);
  out.int4(d.model.cost);
  out.bool(d.status === STATUS_COMPLETED && unit(x, 15) < 0.06);
  if (unit(x, 11) < 0.1) {
    out.text(`seed-${seed}-${i}`);
    out.hex64(x, 20);
  } else {
    out.nul();
    out.nul();
  }
  out.ts(d.created);
  out.ts(d.deleted > 0 ? d.deleted : d.finished);
  if (d.started > 0) out.ts(d.started);
  else out.nul();
  out.ts(d.finished);
  if (d.deleted > 0) out.ts(d.deleted);
  else out.nul();
  out.int4(attempt);
  out.int4(failures);
  // The first job takes the generation's id, as in generations/create.ts.
  out.uuid(key, i);
  if (d.started > 0) {
    out.ts(d.finished);
    out.text(pick(WORKERS, x, 16));
  } else {
    out.nul();
    out.nul();
  }
}

/** One image per completed generation; storage keys as the local storage names them (sha256.ext). */
function writeMedia(world: World, i: number, d: Draw, out: BinaryRows): void {
  const r = rowKey(world.keys.media, i);
  const webp = unit(r, 1) < 0.2;
  const pixels = d.width * d.height;
  const sha = hexDigest(r, 10);
  out.row(9);
  out.uuid(world.keys.media, i);
  out.uuid(world.keys.generation, i);
  out.text(webp ? 'image/webp' : 'image/png');
  out.int4(d.width);
  out.int4(d.height);
  out.int8(Math.round(pixels * (webp ? 0.15 + unit(r, 2) * 0.3 : 0.8 + unit(r, 2) * 1.2)));
  out.text(sha);
  out.text(`${sha}.${webp ? 'webp' : 'png'}`);
  out.ts(d.finished);
}

async function loadModels(client: pg.Client): Promise<Model[]> {
  const { rows } = await client.query<{
    id: string;
    cost_credits: number;
    default_width: number;
    default_height: number;
    min_width: number;
    max_width: number;
    min_height: number;
    max_height: number;
    default_steps: number;
  }>(
    `SELECT id, cost_credits, default_width, default_height, min_width, max_width, min_height, max_height,
            default_steps
       FROM models WHERE is_active AND kind = 'image' ORDER BY sort_order, id`,
  );
  // Cheap models are used most: 35/40/18/7 for the four of the catalogue, 1/(k+1) otherwise.
  const weights = rows.length === 4 ? [0.35, 0.4, 0.18, 0.07] : rows.map((_, k) => 1 / (k + 1));
  const sum = weights.reduce((a, b) => a + b, 0);
  let acc = 0;
  return rows.map((row, k) => {
    acc += (weights[k] ?? 0) / sum;
    return {
      id: row.id,
      cost: row.cost_credits,
      defaultWidth: row.default_width,
      defaultHeight: row.default_height,
      minWidth: row.min_width,
      maxWidth: row.max_width,
      minHeight: row.min_height,
      maxHeight: row.max_height,
      defaultSteps: row.default_steps,
      weight: k === rows.length - 1 ? 1 : acc,
    };
  });
}

async function countWorld(client: pg.Client): Promise<SeedCounts> {
  const like = `%@${SEED_EMAIL_DOMAIN}`;
  const { rows } = await client.query<Record<string, string>>(
    `SELECT u.*, t.*, m.*, p.*, g.*,
            (SELECT count(*) FROM media) AS media,
            (SELECT count(*) FROM credit_transactions) AS credit_transactions
       FROM (SELECT count(*) AS users, count(*) FILTER (WHERE NOT is_active) AS inactive_users
               FROM users WHERE email LIKE $1) u,
            (SELECT count(*) AS teams FROM teams) t,
            (SELECT count(*) AS team_members, count(*) FILTER (WHERE NOT is_active) AS inactive_members
               FROM team_members) m,
            (SELECT count(*) AS projects,
                    count(*) FILTER (WHERE team_id IS NOT NULL) AS projects_in_teams,
                    count(*) FILTER (WHERE visibility = 'private') AS vis_private,
                    count(*) FILTER (WHERE visibility = 'team') AS vis_team,
                    count(*) FILTER (WHERE visibility = 'public') AS vis_public
               FROM projects) p,
            (SELECT count(*) AS generations,
                    count(*) FILTER (WHERE status = 'completed') AS completed,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                    count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted
               FROM generations) g`,
    [like],
  );
  const r = rows[0] ?? {};
  const n = (key: string) => Number(r[key] ?? 0);
  return {
    users: n('users'),
    inactiveUsers: n('inactive_users'),
    teams: n('teams'),
    teamMembers: n('team_members'),
    inactiveMembers: n('inactive_members'),
    projects: n('projects'),
    projectsInTeams: n('projects_in_teams'),
    projectsByVisibility: { private: n('vis_private'), team: n('vis_team'), public: n('vis_public') },
    generations: n('generations'),
    generationsByStatus: { completed: n('completed'), failed: n('failed'), cancelled: n('cancelled') },
    deletedGenerations: n('deleted'),
    media: n('media'),
    creditTransactions: n('credit_transactions'),
  };
}

/** The k users with most generations (counted while planning), most active first. */
function topUserCounts(
  perUser: Int32Array,
  k: number,
): { index: number; email: string; generations: number }[] {
  const top: number[] = [];
  for (let u = 0; u < perUser.length; u++) {
    if (top.length === k && perUser[u]! <= perUser[top[k - 1]!]!) continue;
    let at = top.length;
    while (at > 0 && perUser[top[at - 1]!]! < perUser[u]!) at--;
    top.splice(at, 0, u);
    if (top.length > k) top.pop();
  }
  return top.map((index) => ({ index, email: seedEmail(index), generations: perUser[index]! }));
}

function checkCount(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer`);
  if (value >= 2 ** 31) throw new Error(`${name} must be below 2^31`);
  return value;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
