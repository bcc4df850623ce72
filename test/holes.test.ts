import { randomBytes } from 'node:crypto';
import { describe, expect, inject, it } from 'vitest';
import { MediaSigner } from '../src/modules/media/signing.js';
import { errorOf, settle, signUp, startTestApp, type TestApp } from './helpers/app.js';
import { callApi, useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

/**
 * The holes an adversarial audit found beside the cache (issue: "the oracles closed"): each test
 * here failed before its fix.
 */

const API = '/api/v1';
const redisUrl = inject('redisUrl');

const fx = useTestApp({ redis: Boolean(redisUrl) });

describe('a deleted project hides its generations from their creator too (SPEC §3 rule 1)', () => {
  it('in GET /generations and in GET /generations/stats', async () => {
    const owner = await signUp(fx.app);
    const project = await fx.call(owner, 'POST', '/projects', { name: 'Doomed' });
    expect(project.statusCode).toBe(201);
    const projectId = project.json().id as string;
    const inside = await insertGeneration(fx.sql, { userId: owner.id, projectId, prompt: 'secret prompt' });
    const outside = await insertGeneration(fx.sql, { userId: owner.id });
    const listed = async () =>
      ((await fx.call(owner, 'GET', '/generations')).json().items as { id: string }[]).map((g) => g.id);
    expect(await listed()).toEqual(expect.arrayContaining([inside, outside]));
    expect((await fx.call(owner, 'GET', '/generations/stats')).json().total).toBe(2);

    expect((await fx.call(owner, 'DELETE', `/projects/${projectId}`)).statusCode).toBe(204);
    const after = await fx.call(owner, 'GET', '/generations');
    expect(after.json().items.map((g: { id: string }) => g.id)).toEqual([outside]);
    expect(after.body).not.toContain('secret prompt');
    expect((await fx.call(owner, 'GET', '/generations/stats')).json().total).toBe(1);
  });
});

describe('media tokens are decoded strictly', () => {
  const signer = new MediaSigner(new TextEncoder().encode('media-secret-for-this-test-0123456789'));
  const { token } = signer.sign('6f1c1c3e-0a4e-4b8e-9d7a-2f1e5c6b7a8d', 3600);
  const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

  it('accepts the token it signed', () => {
    expect(signer.verify(token).ok).toBe(true);
  });

  it('refuses every one-character change, insertion and the reported tails', () => {
    const mutants = new Set<string>();
    for (let i = 0; i < token.length; i++) {
      for (const c of `${ALPHABET}.=!~+/ `) {
        if (c !== token[i]) mutants.add(token.slice(0, i) + c + token.slice(i + 1));
        mutants.add(token.slice(0, i) + c + token.slice(i));
      }
      mutants.add(token.slice(0, i) + token.slice(i + 1));
    }
    for (const tail of ['~~', '=', '==', '!', '.', ' ']) mutants.add(token + tail);
    mutants.delete(token);
    const accepted = [...mutants].filter((m) => signer.verify(m).ok);
    expect(accepted).toEqual([]);
    expect(mutants.size).toBeGreaterThan(5_000);
  });

  it('answers 403 over HTTP for a flipped low bit in the last character', async () => {
    const owner = await signUp(fx.app);
    const generation = await insertGeneration(fx.sql, { userId: owner.id });
    const stored = await fx.t.pipeline.storage.put(randomBytes(32), 'image/png');
    const media = await fx.sql.query<{ id: string }>(
      `INSERT INTO media (generation_id, mime, width, height, bytes, sha256, storage_key)
       VALUES ($1, 'image/png', 8, 8, $2, $3, $4) RETURNING id`,
      [generation, stored.bytes, stored.sha256, stored.key],
    );
    const mediaId = media.rows[0]?.id as string;
    const secret = new TextEncoder().encode(fx.t.config.MEDIA_SIGNING_SECRET);
    const real = new MediaSigner(secret).sign(mediaId, 3600).token;
    const last = real.at(-1) as string;
    // The last of 43 characters carries 2 unused bits: flipping the lowest still decodes the same MAC.
    const flipped = real.slice(0, -1) + ALPHABET[ALPHABET.indexOf(last) ^ 1];
    const get = (tok: string) =>
      fx.app.inject({ method: 'GET', url: `${API}/media/${encodeURIComponent(tok)}` });
    expect((await get(real)).statusCode).toBe(200);
    for (const bad of [flipped, `${real}~~`, `${real}=`, `${real.slice(0, 10)}!${real.slice(10)}`]) {
      const res = await get(bad);
      expect(res.statusCode, bad).toBe(403);
    }
  });
});

describe('POST /auth/password is throttled like a login', () => {
  it('counts wrong current passwords per account, shared by every instance, then refuses even the right one', async () => {
    const prefix = `velro-test:${randomBytes(4).toString('hex')}:`;
    const env = { LOGIN_RATE_LIMIT_PER_ACCOUNT: '3' };
    const one = await startTestApp({ databaseUrl: fx.db.url, redis: redisUrl ? { prefix } : false, env });
    const two = await startTestApp({ databaseUrl: fx.db.url, redis: redisUrl ? { prefix } : false, env });
    try {
      const victim = await signUp(one.app);
      const change = (app: TestApp, current: string) =>
        callApi(app, victim, 'POST', '/auth/password', {
          current_password: current,
          new_password: 'a new long password',
        });
      // Three wrong guesses, spread over both instances when Redis shares the counters.
      expect((await change(one, 'wrong guess 1')).statusCode).toBe(403);
      expect((await change(redisUrl ? two : one, 'wrong guess 2')).statusCode).toBe(403);
      expect((await change(one, 'wrong guess 3')).statusCode).toBe(403);
      for (const app of redisUrl ? [one, two] : [one]) {
        const refused = await change(app, victim.password);
        expect(refused.statusCode).toBe(429);
        expect(errorOf(refused).code).toBe('rate_limited');
        expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      }
      // Nothing changed: the old password still signs in.
      const login = await one.app.inject({
        method: 'POST',
        url: `${API}/auth/login`,
        payload: { email: victim.email, password: victim.password },
      });
      expect(login.statusCode).toBe(200);
    } finally {
      await one.close();
      await two.close();
    }
  });
});

describe('the self-test and the operational routes', () => {
  it('/performance/test grows neither L1 nor Redis, however often it is called', async () => {
    const entries = () => fx.t.pipeline.cache.snapshot().l1.entries;
    const redisKeys = async () =>
      fx.t.redis ? (await fx.t.redis.keys(`${fx.t.config.REDIS_KEY_PREFIX}*`)).length : 0;
    await fx.app.inject({ method: 'GET', url: `${API}/performance/test` });
    const before = { l1: entries(), redis: await redisKeys() };
    for (let i = 0; i < 30; i++) {
      const res = await fx.app.inject({ method: 'GET', url: `${API}/performance/test` });
      expect(res.statusCode).toBe(200);
    }
    expect(entries()).toBe(before.l1);
    expect(await redisKeys()).toBe(before.redis);
  });

  it('in production without OPS_TOKEN they answer loopback peers only', async () => {
    const prod = await startTestApp({ databaseUrl: fx.db.url, env: { NODE_ENV: 'production' } });
    try {
      const get = (url: string, remoteAddress: string, headers: Record<string, string> = {}) =>
        prod.app.inject({ method: 'GET', url, remoteAddress, headers });
      // (The /dashboard page itself holds no data: it fetches these.)
      for (const url of ['/metrics', `${API}/performance/test`, `${API}/performance/dashboard`]) {
        expect((await get(url, '127.0.0.1')).statusCode, url).toBe(200);
        const remote = await get(url, '203.0.113.7');
        expect(remote.statusCode, url).toBe(403);
        expect(errorOf(remote).code).toBe('ops_token_required');
        // A local proxy relaying someone else's request is not the machine itself.
        expect((await get(url, '127.0.0.1', { 'x-forwarded-for': '203.0.113.7' })).statusCode, url).toBe(403);
      }
      // Liveness and readiness stay open for load balancers.
      expect((await get('/health', '203.0.113.7')).statusCode).toBe(200);
    } finally {
      await prod.close();
    }
  });
});

describe('adding team members by email is no free account oracle', () => {
  it('limits adds by email per actor (429 beyond), leaving adds by user id alone', async () => {
    const limited = await startTestApp({
      databaseUrl: fx.db.url,
      env: { MEMBER_ADDS_BY_EMAIL_PER_HOUR: '3' },
    });
    try {
      const owner = await signUp(limited.app);
      const known = await signUp(limited.app);
      const team = await callApi(limited, owner, 'POST', '/teams', { name: 'Probe' });
      const teamId = team.json().id as string;
      const add = (body: object) =>
        callApi(limited, owner, 'POST', `/teams/${teamId}/members`, { role: 'viewer', ...body });
      const guesses: number[] = [];
      for (let i = 0; i < 5; i++) guesses.push((await add({ email: `nobody-${i}@example.com` })).statusCode);
      expect(guesses).toEqual([404, 404, 404, 429, 429]);
      const refused = await add({ email: known.email });
      expect(refused.statusCode).toBe(429);
      expect(Number(refused.headers['retry-after'])).toBeGreaterThan(0);
      expect((await add({ user_id: known.id })).statusCode).toBe(201);
    } finally {
      await limited.close();
    }
  });
});

describe('POST /batch', () => {
  it('refuses an event stream among its sub-requests, however it is spelled', async () => {
    const user = await signUp(fx.app);
    const generation = await insertGeneration(fx.sql, { userId: user.id });
    for (const url of [
      `${API}/generations/${generation}/events`,
      `${API}/generations/${generation}/%65vents`,
    ]) {
      const res = await fx.call(user, 'POST', '/batch', { requests: [{ method: 'GET', url }] });
      expect(res.statusCode, url).toBe(400);
      expect(errorOf(res).details).toEqual([
        { field: 'body.requests.0.url', message: 'streams; open it on its own' },
      ]);
    }
  });
});

describe('Idempotency-Key compares requests in a canonical form', () => {
  it('the same request with its parameters in another order is a replay, not a 422', async () => {
    const user = await signUp(fx.app);
    const key = `k-${randomBytes(6).toString('hex')}`;
    const create = (parameters: object) =>
      fx.call(
        user,
        'POST',
        '/generations',
        { model_id: 'velro-sketch', prompt: 'a red kite', parameters },
        { 'idempotency-key': key },
      );
    const first = await create({ width: 256, height: 256, seed: 7 });
    expect(first.statusCode).toBe(202);
    const again = await create({ seed: 7, height: 256, width: 256 });
    expect(again.statusCode).toBe(202);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.json().id).toBe(first.json().id);
    // A different request under the same key is still refused.
    const other = await create({ seed: 8, height: 256, width: 256 });
    expect(other.statusCode).toBe(422);
    const charged = await fx.sql.query(
      `SELECT count(*)::int AS n FROM credit_transactions WHERE user_id = $1 AND reason = 'generation_charge'`,
      [user.id],
    );
    expect(charged.rows[0].n).toBe(1);
    await settle(fx.t);
  });
});
