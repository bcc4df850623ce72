import { randomUUID } from 'node:crypto';
import type { Call, Reply, VuHttp } from './loadtest-http.js';
import type { ScenarioName } from './loadtest-options.js';
import { type Account, API, GENERATION_PARAMETERS, MODEL_ID, type World } from './loadtest-setup.js';
import { type GenerationCounters, type Recorder, recordMs, type ScenarioCounters } from './loadtest-stats.js';

/** A global budget per second (logins, creates), shared by every virtual user. */
export class TokenBucket {
  private tokens: number;
  private last = performance.now();

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst = Math.max(1, ratePerSecond),
  ) {
    this.tokens = this.burst;
  }

  take(): boolean {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.ratePerSecond);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** mulberry32: a small seeded PRNG, so a run's choices can be repeated with `--seed`. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

export interface RunContext {
  origin: string;
  world: World;
  recorder: Recorder;
  generations: GenerationCounters;
  scenarios: ScenarioCounters;
  random: () => number;
  thinkMinMs: number;
  thinkMaxMs: number;
  sseMaxMs: number;
  sseShare: number;
  logins: TokenBucket;
  creates: TokenBucket;
  /** performance.now() after which no new request starts. */
  deadline: number;
}

interface OwnGeneration {
  id: string;
  createdAt: number;
  status: string;
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const OWN_KEPT = 8;

/** One simulated person: one account, one keep-alive connection, one scenario, think time between steps. */
export class VirtualUser {
  readonly http: VuHttp;
  iteration = 0;
  private readonly own: OwnGeneration[] = [];
  /** Set by a 503 or 429 with Retry-After: the next pause lasts at least this long, as a client would. */
  private backoffMs = 0;
  /** Teams this user created during the run (collaboration), with their team project. */
  private readonly createdTeams: { teamId: string; projectId: string | null }[] = [];

  constructor(
    readonly account: Account,
    readonly scenario: ScenarioName,
    private readonly ctx: RunContext,
    http: VuHttp,
  ) {
    this.http = http;
  }

  async run(): Promise<void> {
    const run = SCENARIO_STEPS[this.scenario];
    while (!this.stopped()) {
      this.iteration += 1;
      await run(this, this.ctx);
      this.ctx.scenarios.addIteration(this.scenario);
      if (await this.think()) return;
    }
  }

  /**
   * True on every n-th iteration, offset by the user's index: occasional steps (writes, refreshes,
   * bulk checks) are spread evenly over time instead of every user doing them in the same second.
   */
  every(n: number): boolean {
    return (this.iteration + this.account.index) % n === 0;
  }

  stopped(): boolean {
    return performance.now() >= this.ctx.deadline;
  }

  /** Think time; true when the run is over (the pause is cut short at the deadline). */
  async think(minMs = this.ctx.thinkMinMs, maxMs = this.ctx.thinkMaxMs): Promise<boolean> {
    const wanted = Math.max(this.backoffMs, minMs + this.ctx.random() * (maxMs - minMs));
    this.backoffMs = 0;
    const left = this.ctx.deadline - performance.now();
    if (left <= 0) return true;
    await sleep(Math.min(wanted, left));
    return this.stopped();
  }

  async call(call: Omit<Call, 'token'> & { token?: string | null }): Promise<Reply | null> {
    const reply = await this.http.call({ token: this.account.access, ...call });
    if (reply?.retryAfterS) this.backoffMs = Math.min(reply.retryAfterS, 30) * 1000;
    return reply;
  }

  /** Someone else's generation (denied: answers like a missing one) or an id that never existed. */
  foreignGenerationId(): string {
    const ids = this.ctx.world.generationIds;
    const mine = this.account.team?.generationId;
    if (ids.length > 1 && this.ctx.random() < 0.5) {
      for (let tries = 0; tries < 4; tries++) {
        const id = ids[Math.floor(this.ctx.random() * ids.length)]!;
        if (id !== mine) return id;
      }
    }
    return randomUUID();
  }

  otherAccount(): Account {
    const accounts = this.ctx.world.accounts;
    for (;;) {
      const other = accounts[Math.floor(this.ctx.random() * accounts.length)]!;
      if (other.index !== this.account.index || accounts.length === 1) return other;
    }
  }

  adopt(tokens: unknown): void {
    const body = tokens as { access_token?: unknown; refresh_token?: unknown } | null;
    if (typeof body?.access_token === 'string') this.account.access = body.access_token;
    if (typeof body?.refresh_token === 'string') this.account.refresh = body.refresh_token;
  }

  remember(generation: OwnGeneration): void {
    this.own.push(generation);
    if (this.own.length > OWN_KEPT) this.own.shift();
  }

  latestCompleted(): OwnGeneration | undefined {
    for (let i = this.own.length - 1; i >= 0; i--)
      if (this.own[i]!.status === 'completed') return this.own[i];
    return undefined;
  }

  latestOwn(): OwnGeneration | undefined {
    return this.own[this.own.length - 1];
  }

  get teams() {
    return this.createdTeams;
  }
}

type Steps = (vu: VirtualUser, ctx: RunContext) => Promise<void>;

/**
 * auth_heavy (seed 002: login, authorization check, profile access): sign-ins are rare and
 * globally budgeted (--login-rate: argon2id is deliberately expensive), token use is frequent.
 * Allowed and denied checks are mixed 50/50, denied ones half on ids that never existed.
 */
const authHeavy: Steps = async (vu, ctx) => {
  const team = vu.account.team;
  if (ctx.logins.take()) {
    // Sign in again (a new session and token pair), then end the old session with its own token:
    // in this order a failed sign-in never leaves the user without a working session.
    const login = await vu.call({
      endpoint: `POST ${API}/auth/login`,
      method: 'POST',
      path: `${API}/auth/login`,
      token: null,
      body: { email: vu.account.email, password: vu.account.password },
    });
    if (await vu.think()) return;
    if (login?.status === 200) {
      await vu.call({ endpoint: `POST ${API}/auth/logout`, method: 'POST', path: `${API}/auth/logout` });
      vu.adopt(login.body);
      if (await vu.think()) return;
    }
  }
  await vu.call({ endpoint: `GET ${API}/auth/me`, method: 'GET', path: `${API}/auth/me` });
  if (await vu.think()) return;
  if (team) {
    const onProject = vu.every(2);
    await vu.call({
      endpoint: `POST ${API}/authz/check`,
      method: 'POST',
      path: `${API}/authz/check`,
      body: onProject
        ? { resource: { type: 'project', id: team.projectId }, permission: 'view' }
        : { resource: { type: 'generation', id: team.generationId }, permission: 'download' },
    });
    if (await vu.think()) return;
    await vu.call({
      endpoint: `GET ${API}/generations/:id/authorize`,
      method: 'GET',
      path: `${API}/generations/${team.generationId}/authorize`,
    });
    if (await vu.think()) return;
  }
  await vu.call({
    endpoint: `POST ${API}/authz/check`,
    method: 'POST',
    path: `${API}/authz/check`,
    body: { resource: { type: 'generation', id: vu.foreignGenerationId() }, permission: 'view' },
  });
  if (await vu.think()) return;
  await vu.call({
    endpoint: `GET ${API}/generations/:id/authorize`,
    method: 'GET',
    path: `${API}/generations/${vu.foreignGenerationId()}/authorize`,
    expect: [404],
  });
  if (vu.every(3)) {
    if (await vu.think()) return;
    const checks = Array.from({ length: 20 }, (_, i) =>
      i % 2 === 0 && team
        ? { resource: { type: 'generation', id: team.generationId }, permission: 'view' }
        : { resource: { type: 'generation', id: vu.foreignGenerationId() }, permission: 'view' },
    );
    await vu.call({
      endpoint: `POST ${API}/authz/check-bulk`,
      method: 'POST',
      path: `${API}/authz/check-bulk`,
      body: { checks },
    });
  }
  if (vu.every(5)) {
    if (await vu.think()) return;
    const refreshed = await vu.call({
      endpoint: `POST ${API}/auth/refresh`,
      method: 'POST',
      path: `${API}/auth/refresh`,
      token: null,
      body: { refresh_token: vu.account.refresh },
    });
    if (refreshed?.status === 200) vu.adopt(refreshed.body);
  }
};

/**
 * generation_workflow (seed 002: create generation, access media): create (globally budgeted by
 * --create-rate; 402 when credits are short is an outcome), follow it by polling or by the event
 * stream, signed media URLs, the image itself, the list.
 */
const generationWorkflow: Steps = async (vu, ctx) => {
  let current: OwnGeneration | null = null;
  if (ctx.creates.take()) {
    const reply = await vu.call({
      endpoint: `POST ${API}/generations`,
      method: 'POST',
      path: `${API}/generations`,
      body: {
        model_id: MODEL_ID,
        prompt: `load test ${vu.account.index}-${vu.iteration}: a lighthouse in fog`,
        parameters: { ...GENERATION_PARAMETERS, seed: vu.iteration },
      },
      expect: [402, 429],
    });
    if (reply?.status === 202) {
      const body = reply.body as { id: string; status: string };
      current = { id: body.id, status: body.status, createdAt: performance.now() };
      vu.remember(current);
      ctx.generations.created += 1;
    } else if (reply?.status === 402) {
      ctx.generations.insufficientCredits += 1;
      await grantCredits(vu, ctx);
    }
    // A user who just started a generation watches it at once; otherwise they think first.
    if (!current && (await vu.think())) return;
  } else {
    ctx.generations.createsThrottled += 1;
  }

  if (current) {
    if (ctx.random() < ctx.sseShare) await followByStream(vu, ctx, current);
    else await followByPolling(vu, ctx, current);
    if (vu.stopped()) return;
  } else {
    // Nothing new: look at the latest one again (generation access).
    const id = vu.latestOwn()?.id ?? vu.account.team?.generationId;
    if (id) {
      await vu.call({
        endpoint: `GET ${API}/generations/:id`,
        method: 'GET',
        path: `${API}/generations/${id}`,
      });
      if (await vu.think()) return;
    }
  }

  const target = vu.latestCompleted()?.id ?? vu.account.team?.generationId;
  if (target) {
    const urls = await vu.call({
      endpoint: `GET ${API}/generations/:id/media-urls`,
      method: 'GET',
      path: `${API}/generations/${target}/media-urls`,
    });
    if (await vu.think()) return;
    const url = (urls?.body as { items?: { url?: unknown }[] } | null)?.items?.[0]?.url;
    if (typeof url === 'string') {
      // The signed URL needs no bearer: it is what a browser's <img> would fetch.
      const media = await vu.http.download({
        endpoint: `GET ${API}/media/:token`,
        method: 'GET',
        path: url,
      });
      if (media) ctx.generations.mediaBytes += media.bytes;
      if (await vu.think()) return;
    }
  }
  await vu.call({
    endpoint: `GET ${API}/generations`,
    method: 'GET',
    path: `${API}/generations?limit=20`,
  });
};

function settle(ctx: RunContext, generation: OwnGeneration, status: string): boolean {
  generation.status = status;
  if (!TERMINAL.has(status)) return false;
  if (status === 'completed') {
    ctx.generations.completed += 1;
    recordMs(ctx.generations.endToEnd, performance.now() - generation.createdAt);
  } else {
    ctx.generations.failed += 1;
  }
  return true;
}

/** Polls GET /generations/:id every 250–750 ms until a terminal state, for at most --sse-max-ms. */
async function followByPolling(vu: VirtualUser, ctx: RunContext, generation: OwnGeneration): Promise<void> {
  const giveUp = performance.now() + ctx.sseMaxMs;
  while (!vu.stopped()) {
    const reply = await vu.call({
      endpoint: `GET ${API}/generations/:id`,
      method: 'GET',
      path: `${API}/generations/${generation.id}`,
    });
    const status = (reply?.body as { status?: unknown } | null)?.status;
    if (typeof status === 'string' && settle(ctx, generation, status)) break;
    if (performance.now() >= giveUp) {
      ctx.generations.unfinished += 1;
      break;
    }
    if (await vu.think(250, 750)) return;
  }
  await vu.think();
}

/** Reads the event stream until a terminal status, for at most --sse-max-ms. */
async function followByStream(vu: VirtualUser, ctx: RunContext, generation: OwnGeneration): Promise<void> {
  ctx.generations.streamsOpened += 1;
  let terminal = false;
  const result = await vu.http.stream(
    {
      endpoint: `GET ${API}/generations/:id/events`,
      method: 'GET',
      path: `${API}/generations/${generation.id}/events`,
      token: vu.account.access,
      headers: { accept: 'text/event-stream' },
    },
    Math.max(0, Math.min(ctx.sseMaxMs, ctx.deadline - performance.now() + 1_000)),
    (data) => {
      const status = (data as { status?: unknown } | null)?.status;
      if (typeof status === 'string' && settle(ctx, generation, status)) terminal = true;
      return terminal;
    },
  );
  if (result?.ended === 'capped') ctx.generations.streamsCapped += 1;
  else if (result) ctx.generations.streamsEnded += 1;
  if (!terminal) ctx.generations.unfinished += 1;
  await vu.think();
}

/** With an admin (DATABASE_URL runs only), a user who ran out of credits is topped up. */
async function grantCredits(vu: VirtualUser, ctx: RunContext): Promise<void> {
  const admin = ctx.world.admin;
  if (!admin) return;
  const reply = await admin.http.call({
    endpoint: `POST ${API}/admin/credits/grant`,
    method: 'POST',
    path: `${API}/admin/credits/grant`,
    token: admin.token,
    body: { user_id: vu.account.id, amount: 1_000, note: 'load test top-up' },
  });
  if (reply?.status === 200) ctx.generations.creditGrants += 1;
}

/**
 * collaboration (seed 002: team access, project sharing): list teams and projects, now and then a
 * new team with members added (by email and by id), a role change and a team-visible project;
 * a teammate's generation (allowed through the team), someone else's (404), lookup.
 */
const collaboration: Steps = async (vu) => {
  const team = vu.account.team;
  await vu.call({ endpoint: `GET ${API}/teams`, method: 'GET', path: `${API}/teams?limit=20` });
  if (await vu.think()) return;

  if (vu.every(4)) {
    const created = await vu.call({
      endpoint: `POST ${API}/teams`,
      method: 'POST',
      path: `${API}/teams`,
      body: { name: `Crew ${vu.account.index}-${vu.iteration}` },
    });
    const teamId = (created?.body as { id?: unknown } | null)?.id;
    if (await vu.think()) return;
    if (created?.status === 201 && typeof teamId === 'string') {
      const first = vu.otherAccount();
      let second = vu.otherAccount();
      if (second.index === first.index) second = vu.otherAccount();
      const added = await vu.call({
        endpoint: `POST ${API}/teams/:id/members`,
        method: 'POST',
        path: `${API}/teams/${teamId}/members`,
        body: { email: first.email, role: 'editor' },
        expect: [409],
      });
      if (await vu.think()) return;
      if (second.index !== first.index) {
        await vu.call({
          endpoint: `POST ${API}/teams/:id/members`,
          method: 'POST',
          path: `${API}/teams/${teamId}/members`,
          body: { user_id: second.id, role: 'viewer' },
          expect: [409],
        });
        if (await vu.think()) return;
      }
      if (added?.status === 201) {
        await vu.call({
          endpoint: `PATCH ${API}/teams/:id/members/:userId`,
          method: 'PATCH',
          path: `${API}/teams/${teamId}/members/${first.id}`,
          body: { role: 'admin' },
        });
        if (await vu.think()) return;
      }
      const project = await vu.call({
        endpoint: `POST ${API}/projects`,
        method: 'POST',
        path: `${API}/projects`,
        body: { name: `Shared board ${vu.iteration}`, visibility: 'team', team_id: teamId },
      });
      const projectId = (project?.body as { id?: unknown } | null)?.id;
      vu.teams.push({ teamId, projectId: typeof projectId === 'string' ? projectId : null });
      if (await vu.think()) return;
    }
  }

  const teamId = team?.teamId ?? vu.teams[vu.teams.length - 1]?.teamId;
  if (teamId) {
    await vu.call({
      endpoint: `GET ${API}/teams/:id/members`,
      method: 'GET',
      path: `${API}/teams/${teamId}/members?limit=20`,
    });
    if (await vu.think()) return;
  }
  await vu.call({ endpoint: `GET ${API}/projects`, method: 'GET', path: `${API}/projects?limit=20` });
  if (await vu.think()) return;
  if (team) {
    // A teammate's generation, visible through the team project.
    await vu.call({
      endpoint: `GET ${API}/generations/:id`,
      method: 'GET',
      path: `${API}/generations/${team.generationId}`,
    });
    if (await vu.think()) return;
  }
  await vu.call({
    endpoint: `POST ${API}/authz/lookup`,
    method: 'POST',
    path: `${API}/authz/lookup`,
    body: { resource_type: 'project', permission: 'view', limit: 20 },
  });
  if (await vu.think()) return;
  if (team) {
    await vu.call({
      endpoint: `GET ${API}/projects/:id`,
      method: 'GET',
      path: `${API}/projects/${team.projectId}`,
    });
    if (await vu.think()) return;
  }
  if (vu.every(2)) {
    await vu.call({
      endpoint: `GET ${API}/generations/:id`,
      method: 'GET',
      path: `${API}/generations/${vu.foreignGenerationId()}`,
      expect: [404],
    });
  }
};

const SCENARIO_STEPS: Record<ScenarioName, Steps> = {
  auth_heavy: authHeavy,
  generation_workflow: generationWorkflow,
  collaboration,
};

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
