import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { bearer, errorOf, type SignedUp, signUp, startTestApp } from './helpers/app.js';
import { callApi, useTestApp } from './helpers/fixture.js';

const fx = useTestApp({ worker: true, listen: true });

const create = (who: SignedUp, body: object, headers: Record<string, string> = {}) =>
  fx.call(who, 'POST', '/generations', body, headers);
const get = (who: SignedUp, url: string) => fx.call(who, 'GET', url);

/** Reads Server-Sent Events until the stream ends; returns every event's data. */
async function readEvents(who: SignedUp, id: string): Promise<{ status: string; progress: number }[]> {
  const res = await fetch(`${fx.baseUrl}/api/v1/generations/${id}/events`, {
    headers: bearer(who.accessToken),
  });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/event-stream');
  const text = await res.text();
  return text
    .split('\n\n')
    .map((block) => block.split('\n').find((line) => line.startsWith('data: ')))
    .filter((line): line is string => line !== undefined)
    .map((line) => JSON.parse(line.slice(6)));
}

async function ledgerOf(userId: string) {
  const rows = await fx.sql.query<{ amount: number; reason: string; generation_id: string | null }>(
    'SELECT amount, reason, generation_id FROM credit_transactions WHERE user_id = $1 ORDER BY id',
    [userId],
  );
  const balance = await fx.sql.query<{ credits_balance: number }>(
    'SELECT credits_balance FROM users WHERE id = $1',
    [userId],
  );
  return {
    rows: rows.rows,
    balance: balance.rows[0]!.credits_balance,
    sum: rows.rows.reduce((a, r) => a + r.amount, 0),
  };
}

describe('models', () => {
  it('lists at least four image models with costs and limits, without authentication', async () => {
    const res = await fx.app.inject({ method: 'GET', url: '/api/v1/models' });
    expect(res.statusCode).toBe(200);
    const items = res.json().items;
    expect(items.length).toBeGreaterThanOrEqual(4);
    expect(new Set(items.map((m: { cost_credits: number }) => m.cost_credits)).size).toBeGreaterThanOrEqual(
      4,
    );
    expect(items[0]).toMatchObject({ kind: 'image', limits: { max_width: expect.any(Number) } });
  });
});

describe('a generation from start to finish', () => {
  it('charges, streams progress to completion, and serves a real PNG of the requested size', async () => {
    const owner = await signUp(fx.app);
    const res = await create(owner, {
      model_id: 'velro-sketch',
      prompt: 'a lighthouse at dusk',
      parameters: { width: 320, height: 200, seed: 42, steps: 12 },
    });
    expect(res.statusCode, res.body).toBe(202);
    const generation = res.json();
    expect(generation).toMatchObject({
      status: 'pending',
      model_id: 'velro-sketch',
      cost_credits: 5,
      progress: 0,
    });
    expect(generation.parameters).toMatchObject({ width: 320, height: 200, seed: 42, steps: 12 });

    const events = await readEvents(owner, generation.id);
    expect(events.at(-1)).toMatchObject({ status: 'completed', progress: 100 });
    const progress = events.map((e) => e.progress);
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);

    const urls = await get(owner, `/generations/${generation.id}/media-urls`);
    expect(urls.statusCode).toBe(200);
    const [media] = urls.json().items;
    expect(media).toMatchObject({ mime: 'image/png', width: 320, height: 200 });
    expect(media.url).toMatch(/^\/api\/v1\/media\/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    const image = await fetch(`${fx.baseUrl}${media.url}`);
    expect(image.status).toBe(200);
    expect(image.headers.get('cache-control')).toMatch(/^private/);
    const bytes = Buffer.from(await image.arrayBuffer());
    expect(bytes.length).toBe(media.bytes);
    const meta = await sharp(bytes).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 320, 200]);

    const ledger = await ledgerOf(owner.id);
    expect(ledger.rows.filter((r) => r.reason === 'generation_charge')).toEqual([
      { amount: -5, reason: 'generation_charge', generation_id: generation.id },
    ]);
    expect(ledger.sum).toBe(ledger.balance);
    expect(ledger.balance).toBe(995);
  });

  it('denies another user the generation, its stream and its media URLs (404)', async () => {
    const owner = await signUp(fx.app);
    const stranger = await signUp(fx.app);
    const id = (await create(owner, { model_id: 'velro-sketch', prompt: 'private thought' })).json().id;
    for (const url of [`/generations/${id}`, `/generations/${id}/events`, `/generations/${id}/media-urls`]) {
      const res = await get(stranger, url);
      expect(res.statusCode, url).toBe(404);
      expect(res.body).not.toContain('private thought');
    }
    const cancel = await fx.call(stranger, 'POST', `/generations/${id}/cancel`);
    expect(cancel.statusCode).toBe(404);
  });
});

describe('credits never go wrong', () => {
  it('50 concurrent creates with credits for exactly 10: 10 accepted, 40 refused with 402, balance 0', async () => {
    const user = await signUp(fx.app);
    // velro-sketch costs 5: leave exactly 50 credits
    await fx.sql.query('UPDATE users SET credits_balance = 50 WHERE id = $1', [user.id]);
    await fx.sql.query(
      `INSERT INTO credit_transactions (user_id, amount, balance_after, reason) VALUES ($1, -950, 50, 'admin_grant')`,
      [user.id],
    );
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => create(user, { model_id: 'velro-sketch', prompt: `race ${i}` })),
    );
    const codes = results.map((r) => r.statusCode);
    expect(codes.filter((c) => c === 202)).toHaveLength(10);
    expect(codes.filter((c) => c === 402)).toHaveLength(40);
    const refused = results.find((r) => r.statusCode === 402)!;
    expect(errorOf(refused).code).toBe('insufficient_credits');
    const ledger = await ledgerOf(user.id);
    expect(ledger.balance).toBe(0);
    expect(ledger.sum).toBe(ledger.balance);
    const generations = await fx.sql.query('SELECT count(*)::int AS n FROM generations WHERE user_id = $1', [
      user.id,
    ]);
    expect(generations.rows[0].n).toBe(10);
  });

  it('an Idempotency-Key replays the first generation without a second charge', async () => {
    const user = await signUp(fx.app);
    const body = { model_id: 'velro-studio', prompt: 'same thing twice' };
    const first = await create(user, body, { 'idempotency-key': 'order-123' });
    const again = await create(user, body, { 'idempotency-key': 'order-123' });
    expect(first.statusCode).toBe(202);
    expect(again.statusCode).toBe(202);
    expect(again.json().id).toBe(first.json().id);
    expect(again.headers['idempotent-replayed']).toBe('true');
    const different = await create(
      user,
      { ...body, prompt: 'something else' },
      { 'idempotency-key': 'order-123' },
    );
    expect(different.statusCode).toBe(422);
    expect(errorOf(different).code).toBe('idempotency_key_reused');
    const racing = await Promise.all(
      Array.from({ length: 8 }, () =>
        create(user, { ...body, prompt: 'raced' }, { 'idempotency-key': 'race-1' }),
      ),
    );
    expect(new Set(racing.map((r) => r.json().id)).size).toBe(1);
    const ledger = await ledgerOf(user.id);
    expect(ledger.rows.filter((r) => r.reason === 'generation_charge')).toHaveLength(2);
    expect(ledger.sum).toBe(ledger.balance);
  });
});

describe('cancellation and failure refund exactly once', () => {
  it('cancelling refunds once; a second cancel is 409', async () => {
    const local = await startTestApp({ databaseUrl: fx.db.url }); // no worker: the job stays pending
    try {
      const user = await signUp(local.app);
      const id = (
        await callApi(local, user, 'POST', '/generations', { model_id: 'velro-photon', prompt: 'never mind' })
      ).json().id;
      const cancels = await Promise.all(
        Array.from({ length: 4 }, () => callApi(local, user, 'POST', `/generations/${id}/cancel`)),
      );
      expect(cancels.map((c) => c.statusCode).sort()).toEqual([200, 409, 409, 409]);
      const ledger = await ledgerOf(user.id);
      expect(ledger.rows.filter((r) => r.generation_id === id).map((r) => [r.reason, r.amount])).toEqual([
        ['generation_charge', -50],
        ['generation_refund', 50],
      ]);
      expect(ledger.balance).toBe(1000);
    } finally {
      await local.close();
    }
  });

  it('a permanent provider failure fails the generation and refunds it once', async () => {
    await fx.sql.query(
      `INSERT INTO models (id, name, kind, provider, provider_model, cost_credits, max_width, max_height,
                           default_width, default_height, max_steps, default_steps)
       VALUES ('broken-model', 'Broken', 'image', 'nowhere', 'x', 7, 256, 256, 64, 64, 4, 2)
       ON CONFLICT (id) DO NOTHING`,
    );
    await fx.t.pipeline.catalogue.load();
    const user = await signUp(fx.app);
    const res = await create(user, { model_id: 'broken-model', prompt: 'doomed' });
    expect(res.statusCode).toBe(202);
    const events = await readEvents(user, res.json().id);
    expect(events.at(-1)).toMatchObject({ status: 'failed' });
    const ledger = await ledgerOf(user.id);
    expect(ledger.rows.filter((r) => r.generation_id === res.json().id).map((r) => r.amount)).toEqual([
      -7, 7,
    ]);
    expect(ledger.balance).toBe(1000);
  });
});

describe('validation', () => {
  it('refuses unknown models, parameters outside the model, and unknown parameters with field details', async () => {
    const user = await signUp(fx.app);
    const cases: [object, string][] = [
      [{ model_id: 'nope', prompt: 'x' }, 'body.model_id'],
      [{ model_id: 'velro-sketch', prompt: 'x', parameters: { width: 4096 } }, 'body.parameters.width'],
      [{ model_id: 'velro-sketch', prompt: 'x', parameters: { width: 513 } }, 'body.parameters.width'],
      [{ model_id: 'velro-sketch', prompt: 'x', parameters: { widht: 512 } }, 'body.parameters.widht'],
      [{ model_id: 'velro-sketch', prompt: 'x', parameters: { steps: 0 } }, 'body.parameters.steps'],
      [{ model_id: 'velro-sketch', prompt: 'x'.repeat(4001) }, 'body.prompt'],
      [{ model_id: 'velro-sketch', prompt: '' }, 'body.prompt'],
    ];
    for (const [body, field] of cases) {
      const res = await create(user, body);
      expect(res.statusCode, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect((errorOf(res).details as { field: string }[]).map((d) => d.field)).toContain(field);
    }
    const ledger = await ledgerOf(user.id);
    expect(ledger.balance).toBe(1000);
  });
});
