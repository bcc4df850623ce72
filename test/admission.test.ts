/**
 * Admission control (src/platform/http/admission.ts): each class of work has its own adaptive
 * budget of requests in flight; the excess is refused at once with 503 overloaded + Retry-After,
 * and one class at its limit never holds back another.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import {
  ADMISSION_POLICIES,
  AdaptiveLimit,
  admissionClassOf,
  admissionEnabled,
  CHECK_ROUTES,
  HASHING_ROUTES,
} from '../src/platform/http/admission.js';
import { LoopShedder } from '../src/platform/http/loop-shedding.js';
import { bearer, type SignedUp, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';
import { insertGeneration } from './helpers/fixtures.js';

describe('AdaptiveLimit', () => {
  const policy = { targetMs: 50, initial: 100, min: 10, max: 400 };

  it('falls to just under the concurrency that made the class slow, never below its minimum', () => {
    const limit = new AdaptiveLimit(policy);
    for (let i = 0; i < 60; i++) expect(limit.tryAcquire()).toBe(true);
    for (let i = 0; i < 60; i++) limit.release(120);
    expect(limit.adjust()).toBe(120);
    // 60 in flight were too slow: the limit drops to 90 % of 60, not of the 100 nobody reached.
    expect(limit.limit).toBe(54);
    // Saturated and slow, round after round: down to the floor, never below.
    for (let round = 0; round < 50; round++) {
      let held = 0;
      while (limit.tryAcquire()) held += 1;
      for (let i = 0; i < held; i++) limit.release(500);
      limit.adjust();
    }
    expect(limit.limit).toBe(policy.min);
  });

  it('does not cut a limit for slowness with few in flight: a pause is not queueing', () => {
    const limit = new AdaptiveLimit(policy);
    for (let round = 0; round < 10; round++) {
      for (let i = 0; i < 30; i++) limit.tryAcquire();
      for (let i = 0; i < 30; i++) limit.release(400);
      limit.adjust();
    }
    expect(limit.limit).toBe(100);
  });

  it('refuses beyond the limit, and grows while the limit is what holds requests back within target', () => {
    const limit = new AdaptiveLimit(policy);
    for (let i = 0; i < 100; i++) expect(limit.tryAcquire()).toBe(true);
    expect(limit.tryAcquire()).toBe(false);
    expect(limit.rejected).toBe(1);
    for (let i = 0; i < 100; i++) limit.release(5);
    limit.adjust();
    expect(limit.limit).toBe(105);
    for (let round = 0; round < 100; round++) {
      while (limit.tryAcquire()) {}
      for (let i = limit.inflight; i > 0; i--) limit.release(5);
      limit.adjust();
    }
    expect(limit.limit).toBe(policy.max);
  });

  it('stays put when quiet: few answers say nothing, and an unreached limit within target does not grow', () => {
    const limit = new AdaptiveLimit(policy);
    for (let i = 0; i < 3; i++) limit.tryAcquire();
    for (let i = 0; i < 3; i++) limit.release(10_000);
    limit.adjust();
    expect(limit.limit).toBe(100);
    for (let i = 0; i < 20; i++) limit.tryAcquire();
    for (let i = 0; i < 20; i++) limit.release(1);
    limit.adjust();
    expect(limit.limit).toBe(100);
  });
});

describe('classes', () => {
  it('maps checks, hashing, auth, reads and writes; liveness, readiness and metrics are never refused', () => {
    expect(admissionClassOf('/api/v1/authz/check', 'POST', 'ultra_fast')).toBe('checks');
    expect(admissionClassOf('/api/v1/generations/:id/authorize', 'GET', 'critical_auth')).toBe('checks');
    expect(admissionClassOf('/api/v1/auth/login', 'POST', 'critical_auth')).toBe('hashing');
    expect(admissionClassOf('/api/v1/auth/refresh', 'POST', 'critical_auth')).toBe('auth');
    expect(admissionClassOf('/api/v1/projects', 'GET', undefined)).toBe('reads');
    expect(admissionClassOf('/api/v1/projects', 'POST', undefined)).toBe('writes');
    for (const url of ['/health', '/ready', '/metrics', '/docs/json', '/dashboard']) {
      expect(admissionClassOf(url, 'GET', 'ultra_fast')).toBeNull();
    }
    expect(admissionEnabled({ NODE_ENV: 'production' })).toBe(true);
    expect(admissionEnabled({ NODE_ENV: 'development' })).toBe(false);
    expect(admissionEnabled({ NODE_ENV: 'production', ADMISSION_CONTROL: false })).toBe(false);
  });
});

describe('a service at its write limit', () => {
  // Pool waits longer than the test: only admission control may refuse here.
  const fixture = useTestApp({
    env: {
      ADMISSION_CONTROL: 'true',
      // Only the class limits are under test here, not the event loop's lateness.
      ADMISSION_LOOP_DELAY_TARGET_MS: '0',
      DB_CONNECT_TIMEOUT_MS: '60000',
      DB_POOL_WRITE_HEAVY_STATEMENT_TIMEOUT_MS: '60000',
    },
    hookTimeoutMs: 60_000,
  });
  let user: SignedUp;
  let generationId: string;

  beforeAll(async () => {
    user = await signUp(fixture.app);
    generationId = await insertGeneration(fixture.sql, { userId: user.id });
  }, 60_000);

  it('every route it names exists', () => {
    for (const url of [...CHECK_ROUTES, ...HASHING_ROUTES]) {
      const exists = ['GET', 'POST'].some((method) =>
        fixture.app.hasRoute({ method: method as 'GET' | 'POST', url }),
      );
      expect(exists, url).toBe(true);
    }
  });

  it('refuses the excess writes at once with Retry-After, while checks and reads still answer', async () => {
    const writes = ADMISSION_POLICIES.writes.initial;
    // Every write waits on a lock the test holds (SHARE: inserts wait, reads do not): they stay in flight.
    await fixture.sql.query('BEGIN');
    await fixture.sql.query('LOCK TABLE projects IN SHARE MODE');
    let released = false;
    const answers = Array.from({ length: writes + 20 }, (_, i) =>
      fixture.app
        .inject({
          method: 'POST',
          url: '/api/v1/projects',
          headers: bearer(user.accessToken),
          payload: { name: `held-${i}` },
        })
        .then((res) => ({ res, whileHeld: !released })),
    );
    const refused = await Promise.all(
      answers.map((answer) =>
        Promise.race([answer, new Promise<null>((resolve) => setTimeout(() => resolve(null), 3_000))]),
      ),
    );
    const early = refused.filter((a) => a !== null);
    // The 20 over the limit were answered while the others still waited on the lock.
    expect(early).toHaveLength(20);
    for (const answer of early) {
      expect(answer?.whileHeld).toBe(true);
      expect(answer?.res.statusCode).toBe(503);
      expect(answer?.res.json().error.code).toBe('overloaded');
      expect(answer?.res.headers['retry-after']).toBe('1');
    }
    // Writes at their limit hold back neither checks nor reads.
    const check = await fixture.app.inject({
      method: 'POST',
      url: '/api/v1/authz/check',
      headers: bearer(user.accessToken),
      payload: { resource: { type: 'generation', id: generationId }, permission: 'view' },
    });
    expect(check.statusCode, check.body).toBe(200);
    expect(check.json().allowed).toBe(true);
    const me = await fixture.app.inject({
      method: 'GET',
      url: '/api/v1/auth/me',
      headers: bearer(user.accessToken),
    });
    expect(me.statusCode).toBe(200);
    const health = await fixture.app.inject({ method: 'GET', url: '/health' });
    expect(health.statusCode).toBe(200);

    released = true;
    await fixture.sql.query('COMMIT');
    const all = await Promise.all(answers);
    expect(all.filter((a) => a.res.statusCode === 201)).toHaveLength(writes);
    expect(all.filter((a) => a.res.statusCode === 503)).toHaveLength(20);

    // The slow window cut the writes' limit; the metrics show it and the refusals.
    const metricValue = async (line: string) => {
      const res = await fixture.app.inject({ method: 'GET', url: '/metrics' });
      const found = res.body.split('\n').find((l) => l.startsWith(line));
      return Number(found?.split(' ').pop());
    };
    let limit = writes;
    for (let i = 0; i < 100 && limit >= writes; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      limit = await metricValue('velro_admission_limit{class="writes"}');
    }
    expect(limit).toBeLessThan(writes);
    expect(limit).toBeGreaterThanOrEqual(ADMISSION_POLICIES.writes.min);
    expect(await metricValue('velro_admission_rejected_total{class="writes"}')).toBe(20);
    expect(await metricValue('velro_admission_inflight{class="writes"}')).toBe(0);
  }, 60_000);
});

/** Keeps the event loop busy: `busyMs` of synchronous work every `everyMs`, until stopped. */
function hogLoop(busyMs: number, everyMs: number): () => void {
  const timer = setInterval(() => {
    const until = performance.now() + busyMs;
    while (performance.now() < until) {
      // the CPU work of a crowded loop
    }
  }, everyMs);
  return () => clearInterval(timer);
}

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('LoopShedder', () => {
  it('refuses a growing share while the loop is late and busy, and none once it is on time', async () => {
    const shedder = new LoopShedder({ targetMs: 10 });
    shedder.start();
    try {
      expect(shedder.refuse()).toBe(false);
      const stop = hogLoop(45, 47);
      for (let window = 0; window < 7; window++) {
        await tick(250);
        shedder.adjust();
      }
      // Seven late windows (under 2 s) are a burst, not yet overload.
      expect(shedder.share).toBe(0);
      for (let window = 0; window < 3; window++) {
        await tick(250);
        shedder.adjust();
      }
      stop();
      expect(shedder.lastDelayP99Ms).toBeGreaterThan(10);
      expect(shedder.lastUtilization).toBeGreaterThanOrEqual(0.85);
      // A step per late, busy window from the eighth in a row (the first window may start before
      // the loop is crowded).
      expect(shedder.share).toBeGreaterThanOrEqual(0.05);
      expect(shedder.share).toBeLessThanOrEqual(0.15 + 1e-9);
      const share = shedder.share;
      let refused = 0;
      for (let i = 0; i < 2_000; i++) if (shedder.refuse()) refused += 1;
      // The share of 2,000, give or take what chance allows (6 standard deviations).
      const spread = 6 * Math.sqrt(2_000 * share * (1 - share));
      expect(Math.abs(refused - 2_000 * share)).toBeLessThan(spread);
      for (let window = 0; window < 4; window++) {
        await tick(250);
        shedder.adjust();
      }
      expect(shedder.share).toBe(0);
      expect(shedder.refuse()).toBe(false);
    } finally {
      shedder.stop();
    }
  });

  it('does not shed for a late loop that is mostly idle (pauses, a noisy neighbour: not overload)', async () => {
    const shedder = new LoopShedder({ targetMs: 10 });
    shedder.start();
    try {
      // 30 ms of work every 100 ms: the loop is late by 30 ms, but idle two thirds of the time.
      const stop = hogLoop(30, 100);
      try {
        for (let window = 0; window < 4; window++) {
          await tick(250);
          shedder.adjust();
          expect(shedder.lastDelayP99Ms).toBeGreaterThan(10);
          expect(shedder.lastUtilization).toBeLessThan(0.85);
        }
      } finally {
        stop();
      }
      expect(shedder.share).toBe(0);
    } finally {
      shedder.stop();
    }
  });
});

describe('a service whose event loop is overloaded', () => {
  const fixture = useTestApp({
    env: { ADMISSION_CONTROL: 'true', ADMISSION_LOOP_DELAY_TARGET_MS: '10' },
    hookTimeoutMs: 60_000,
  });
  let user: SignedUp;

  beforeAll(async () => {
    user = await signUp(fixture.app);
  });

  const metric = async (name: string) => {
    const res = await fixture.app.inject({ method: 'GET', url: '/metrics' });
    const found = res.body.split('\n').find((l) => l.startsWith(`${name} `));
    return Number(found?.split(' ').pop());
  };
  const me = () =>
    fixture.app.inject({ method: 'GET', url: '/api/v1/auth/me', headers: bearer(user.accessToken) });

  it('refuses a share of requests at once while the loop is crowded, and admits all once it is not', async () => {
    const stop = hogLoop(45, 47);
    const statuses: number[] = [];
    let overloaded: Awaited<ReturnType<typeof me>> | undefined;
    try {
      // Until the share has grown and requests are being refused (bounded: 10 s).
      for (let i = 0; i < 400 && (overloaded === undefined || statuses.length < 40); i++) {
        const res = await me();
        statuses.push(res.statusCode);
        if (res.statusCode === 503) overloaded = res;
      }
      expect(await metric('velro_admission_loop_shed_share')).toBeGreaterThan(0);
    } finally {
      stop();
    }
    expect(overloaded, 'no request was refused while the loop was crowded').toBeDefined();
    expect(overloaded?.json().error.code).toBe('overloaded');
    expect(overloaded?.headers['retry-after']).toBe('1');
    // Nothing but answers and refusals: no other error while shedding.
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    expect(await metric('velro_admission_loop_shed_total')).toBeGreaterThan(0);

    // On time again: the share falls a step per window, back to none.
    let share = 1;
    for (let i = 0; i < 100 && share > 0; i++) {
      await tick(100);
      share = await metric('velro_admission_loop_shed_share');
    }
    expect(share).toBe(0);
    const after = await Promise.all(Array.from({ length: 20 }, () => me()));
    expect(after.map((res) => res.statusCode)).toEqual(Array(20).fill(200));
  }, 30_000);
});

describe('event streams and admission', () => {
  // A stream takes its response over (reply.hijack()): no hook runs after that, so the stream must
  // give its place back itself. Before it did, every stream held a read's place for good; a
  // 30-minute soak of 400 users reached 1,212 reads "in flight" and refused reads for it.
  const fixture = useTestApp({
    env: { ADMISSION_CONTROL: 'true', ADMISSION_LOOP_DELAY_TARGET_MS: '0' },
    listen: true,
    hookTimeoutMs: 60_000,
  });
  let user: SignedUp;

  beforeAll(async () => {
    user = await signUp(fixture.app);
  }, 60_000);

  const readsInFlight = async () => {
    const res = await fixture.app.inject({ method: 'GET', url: '/metrics' });
    const found = res.body.split('\n').find((l) => l.startsWith('velro_admission_inflight{class="reads"}'));
    return Number(found?.split(' ').pop());
  };

  it('a stream that ends (its generation finished) holds no read place afterwards', async () => {
    const done = await insertGeneration(fixture.sql, { userId: user.id });
    await fixture.sql.query(`UPDATE generations SET status = 'completed', progress = 100 WHERE id = $1`, [
      done,
    ]);
    const streams = ADMISSION_POLICIES.reads.initial + 10;
    for (let i = 0; i < streams; i++) {
      const res = await fixture.app.inject({
        method: 'GET',
        url: `/api/v1/generations/${done}/events`,
        headers: bearer(user.accessToken),
      });
      expect(res.statusCode).toBe(200);
      expect(res.body).toContain('"status":"completed"');
    }
    expect(await readsInFlight()).toBe(0);
    // More streams than the reads' budget have come and gone: reads are still admitted.
    const me = await fixture.app.inject({
      method: 'GET',
      url: '/api/v1/generations?limit=1',
      headers: bearer(user.accessToken),
    });
    expect(me.statusCode).toBe(200);
  }, 60_000);

  it('a stream still open, and one its reader closed, hold no read place either', async () => {
    const pending = await insertGeneration(fixture.sql, { userId: user.id });
    const controller = new AbortController();
    const res = await fetch(`${fixture.baseUrl}/api/v1/generations/${pending}/events`, {
      headers: bearer(user.accessToken),
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    const reader = res.body?.getReader();
    const first = new TextDecoder().decode((await reader?.read())?.value);
    expect(first).toContain('"status":"pending"');
    // Open and streaming: not counted as a read in flight.
    expect(await readsInFlight()).toBe(0);
    controller.abort();
    await reader?.cancel().catch(() => {});
    expect(await readsInFlight()).toBe(0);
  }, 60_000);

  it('a stream is answered like any request: request id, timing and route class headers, and observed', async () => {
    const eventsSamples = async () => {
      const res = await fixture.app.inject({ method: 'GET', url: '/metrics' });
      const line = res.body
        .split('\n')
        .find(
          (l) =>
            l.startsWith('velro_http_request_duration_seconds_count{') &&
            l.includes('route="/api/v1/generations/:id/events"') &&
            l.includes('status="200"'),
        );
      return Number(line?.split(' ').pop() ?? 0);
    };
    const before = await eventsSamples();
    const done = await insertGeneration(fixture.sql, { userId: user.id });
    await fixture.sql.query(`UPDATE generations SET status = 'completed', progress = 100 WHERE id = $1`, [
      done,
    ]);
    const res = await fixture.app.inject({
      method: 'GET',
      url: `/api/v1/generations/${done}/events`,
      headers: { ...bearer(user.accessToken), 'x-request-id': 'stream-req-1' },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(res.headers['x-request-id']).toBe('stream-req-1');
    expect(res.headers['x-route-class']).toBe('fast');
    expect(Number(res.headers['x-response-time'])).toBeGreaterThanOrEqual(0);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    // Counted once, as opened: before, no hook ran after the hijack and streams were never observed.
    expect(await eventsSamples()).toBe(before + 1);
  }, 60_000);
});
