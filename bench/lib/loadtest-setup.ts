import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { ConnectionTracker, type Reply, VuHttp } from './loadtest-http.js';
import { bar, duration, type ProgressLine } from './loadtest-progress.js';
import { Recorder } from './loadtest-stats.js';

export const API = '/api/v1';
/** The cheapest model (5 credits): new users get 1,000, so 200 creates each. */
export const MODEL_ID = 'velro-sketch';
/** Small and few steps: the in-process worker renders every one of them. */
export const GENERATION_PARAMETERS = { width: 128, height: 128, steps: 4 } as const;

export interface TeamFixture {
  teamId: string;
  projectId: string;
  /** Created by the owner in the team project: every member may view and download it. */
  generationId: string;
  ownerIndex: number;
  memberIndexes: number[];
}

export interface Account {
  index: number;
  id: string;
  email: string;
  password: string;
  access: string;
  refresh: string;
  team: TeamFixture | null;
}

export interface Admin {
  http: VuHttp;
  token: string;
}

export interface World {
  runId: string;
  accounts: Account[];
  teams: TeamFixture[];
  /** Every fixture generation id, for "someone else's generation" (denied) checks. */
  generationIds: string[];
  admin: Admin | null;
}

export interface SetupSummary {
  users: number;
  teams: number;
  generations: number;
  registerSeconds: number;
  registerPerSecond: number;
  fixtureSeconds: number;
  drainSeconds: number;
  /** Generation queue depth when the timed phase started (null: not reported). */
  queueDepthAtStart: number | null;
  requests: number;
  retries: number;
  admin: 'sql' | 'none';
}

interface SetupDeps {
  origin: string;
  users: number;
  teamSize: number;
  concurrency: number;
  timeoutMs: number;
  drainSeconds: number;
  databaseUrl: string | undefined;
  progress: ProgressLine;
}

const ATTEMPTS = 4;

/**
 * Accounts and fixtures, through the public API only (plus one SQL statement to make an admin when
 * the database is ours to reach via DATABASE_URL): users registered in parallel with bounded
 * concurrency, then teams of `teamSize` (an owner, members by email or id, a team-visible project,
 * one generation in it), then a bounded wait for the worker to render those generations.
 */
export async function buildWorld(deps: SetupDeps): Promise<{ world: World; summary: SetupSummary }> {
  const runId = randomBytes(4).toString('hex');
  const recorder = new Recorder();
  recorder.start(performance.now());
  const tracker = new ConnectionTracker();
  const workers = Array.from(
    { length: deps.concurrency },
    () => new VuHttp(deps.origin, recorder, tracker, deps.timeoutMs),
  );
  let retries = 0;

  /** Retries network errors and 5xx (setup must be complete); a 4xx is a bug and stops the run. */
  async function must(worker: VuHttp, call: Parameters<VuHttp['call']>[0], want: number): Promise<Reply> {
    let last = 'no answer';
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      const reply = await worker.call(call);
      if (reply && reply.status === want) return reply;
      last = reply
        ? `${reply.status} ${JSON.stringify(reply.body).slice(0, 300)}`
        : 'network error or timeout';
      if (reply && reply.status < 500) break;
      retries += 1;
      await sleep(200 * attempt);
    }
    throw new Error(`setup: ${call.method} ${call.path} failed: ${last}`);
  }

  const password = `Lt-${randomBytes(9).toString('base64url')}`;
  const accounts: Account[] = new Array(deps.users);
  const total = deps.users + (deps.databaseUrl ? 1 : 0);
  let registered = 0;
  const registerStart = performance.now();
  const showRegister = (force = false) => {
    const seconds = (performance.now() - registerStart) / 1000;
    const rate = registered / Math.max(seconds, 0.001);
    deps.progress.update(
      `[setup] registering ${bar(registered / total)} ${registered}/${total} users, ` +
        `${rate.toFixed(0)}/s, ETA ${duration((total - registered) / Math.max(rate, 0.001))}`,
      force,
    );
  };
  const ticker = setInterval(showRegister, 250);
  const register = async (worker: VuHttp, index: number): Promise<Account> => {
    const email = `lt-${runId}-${index}@example.com`;
    const reply = await must(
      worker,
      {
        endpoint: `POST ${API}/auth/register`,
        method: 'POST',
        path: `${API}/auth/register`,
        body: { email, password, display_name: `Load ${index}` },
      },
      201,
    );
    const body = reply.body as { user: { id: string }; access_token: string; refresh_token: string };
    registered += 1;
    return {
      index,
      id: body.user.id,
      email,
      password,
      access: body.access_token,
      refresh: body.refresh_token,
      team: null,
    };
  };
  let adminAccount: Account | null = null;
  try {
    await runPool(workers, deps.users, async (worker, index) => {
      accounts[index] = await register(worker, index);
    });
    if (deps.databaseUrl) adminAccount = await register(workers[0]!, deps.users);
  } finally {
    clearInterval(ticker);
  }
  showRegister(true);
  deps.progress.done();
  const registerSeconds = (performance.now() - registerStart) / 1000;

  // Teams: consecutive accounts, so each team mixes users of every scenario (they are shuffled).
  const groups: number[][] = [];
  for (let i = 0; i < deps.users; i += deps.teamSize) {
    groups.push(Array.from({ length: Math.min(deps.teamSize, deps.users - i) }, (_, k) => i + k));
  }
  const teams: TeamFixture[] = new Array(groups.length);
  let built = 0;
  const fixtureStart = performance.now();
  const showTeams = (force = false) =>
    deps.progress.update(
      `[setup] teams ${bar(built / groups.length)} ${built}/${groups.length} ` +
        `(team, members, team project, one generation each)`,
      force,
    );
  const teamTicker = setInterval(showTeams, 250);
  try {
    await runPool(workers, groups.length, async (worker, g) => {
      const group = groups[g]!;
      const owner = accounts[group[0]!]!;
      const team = await must(
        worker,
        {
          endpoint: `POST ${API}/teams`,
          method: 'POST',
          path: `${API}/teams`,
          token: owner.access,
          body: { name: `Load team ${g}` },
        },
        201,
      );
      const teamId = (team.body as { id: string }).id;
      for (const [k, memberIndex] of group.slice(1).entries()) {
        const member = accounts[memberIndex]!;
        await must(
          worker,
          {
            endpoint: `POST ${API}/teams/:id/members`,
            method: 'POST',
            path: `${API}/teams/${teamId}/members`,
            token: owner.access,
            body: {
              ...(k % 2 === 0 ? { email: member.email } : { user_id: member.id }),
              role: k % 2 === 0 ? 'editor' : 'viewer',
            },
          },
          201,
        );
      }
      const project = await must(
        worker,
        {
          endpoint: `POST ${API}/projects`,
          method: 'POST',
          path: `${API}/projects`,
          token: owner.access,
          body: { name: `Load project ${g}`, visibility: 'team', team_id: teamId },
        },
        201,
      );
      const projectId = (project.body as { id: string }).id;
      const generation = await must(
        worker,
        {
          endpoint: `POST ${API}/generations`,
          method: 'POST',
          path: `${API}/generations`,
          token: owner.access,
          body: {
            model_id: MODEL_ID,
            prompt: `team ${g} moodboard, misty hills at dawn`,
            project_id: projectId,
            parameters: { ...GENERATION_PARAMETERS, seed: g },
          },
        },
        202,
      );
      const fixture: TeamFixture = {
        teamId,
        projectId,
        generationId: (generation.body as { id: string }).id,
        ownerIndex: group[0]!,
        memberIndexes: group.slice(1),
      };
      teams[g] = fixture;
      for (const index of group) accounts[index]!.team = fixture;
      built += 1;
    });
  } finally {
    clearInterval(teamTicker);
  }
  showTeams(true);
  deps.progress.done();
  const fixtureSeconds = (performance.now() - fixtureStart) / 1000;

  let admin: Admin | null = null;
  if (adminAccount && deps.databaseUrl) {
    admin = await makeAdmin(
      deps.databaseUrl,
      adminAccount,
      workers[0]!,
      deps.origin,
      recorder,
      tracker,
      deps,
    );
  }

  const drainStart = performance.now();
  const queueDepthAtStart = await waitForQueue(deps.origin, deps.drainSeconds, deps.progress);
  const drainSeconds = (performance.now() - drainStart) / 1000;

  await Promise.all(workers.map((w) => w.close()));
  const world: World = {
    runId,
    accounts,
    teams,
    generationIds: teams.map((t) => t.generationId),
    admin,
  };
  return {
    world,
    summary: {
      users: deps.users,
      teams: teams.length,
      generations: teams.length,
      registerSeconds: round1(registerSeconds),
      registerPerSecond: round1(deps.users / Math.max(registerSeconds, 0.001)),
      fixtureSeconds: round1(fixtureSeconds),
      drainSeconds: round1(drainSeconds),
      queueDepthAtStart,
      requests: recorder.total,
      retries,
      admin: admin ? 'sql' : 'none',
    },
  };
}

/** DATABASE_URL only: one UPDATE makes the extra account an admin, which then signs in afresh. */
async function makeAdmin(
  databaseUrl: string,
  account: Account,
  worker: VuHttp,
  origin: string,
  recorder: Recorder,
  tracker: ConnectionTracker,
  deps: SetupDeps,
): Promise<Admin> {
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'velro_loadtest' });
  await client.connect();
  try {
    await client.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [account.id]);
  } finally {
    await client.end();
  }
  const reply = await worker.call({
    endpoint: `POST ${API}/auth/login`,
    method: 'POST',
    path: `${API}/auth/login`,
    body: { email: account.email, password: account.password },
  });
  const token = (reply?.body as { access_token?: string } | null)?.access_token;
  if (reply?.status !== 200 || !token) throw new Error(`setup: admin sign-in answered ${reply?.status}`);
  deps.progress.log(`[setup] admin ${account.email} (role set by SQL) grants credits on 402`);
  return { http: new VuHttp(origin, recorder, tracker, deps.timeoutMs), token };
}

/** Waits (bounded) until the worker has rendered the fixtures, so setup work does not skew the run. */
async function waitForQueue(origin: string, seconds: number, progress: ProgressLine): Promise<number | null> {
  const deadline = performance.now() + seconds * 1000;
  let depth: number | null = null;
  for (;;) {
    depth = await queueDepth(origin);
    progress.update(`[setup] waiting for the generation queue to drain: ${depth ?? '?'} queued`);
    if (depth === null || depth === 0 || performance.now() >= deadline) break;
    await sleep(1_000);
  }
  progress.done();
  return depth;
}

export async function queueDepth(origin: string): Promise<number | null> {
  try {
    const response = await fetch(`${origin}${API}/performance/dashboard`, {
      signal: AbortSignal.timeout(5_000),
    });
    const body = (await response.json()) as { queue_depth?: unknown };
    return typeof body.queue_depth === 'number' ? body.queue_depth : null;
  } catch {
    return null;
  }
}

/** `count` tasks over the workers, each worker one at a time: bounded concurrency. */
async function runPool<W>(
  workers: W[],
  count: number,
  task: (worker: W, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: unknown = null;
  await Promise.all(
    workers.map(async (worker) => {
      while (failure === null) {
        const index = next++;
        if (index >= count) return;
        try {
          await task(worker, index);
        } catch (error) {
          failure ??= error;
        }
      }
    }),
  );
  if (failure !== null) throw failure;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const round1 = (n: number) => Math.round(n * 10) / 10;
