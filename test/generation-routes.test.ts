import { randomBytes } from 'node:crypto';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { bearer, errorOf, type SignedUp, signUp, startTestApp, type TestApp } from './helpers/app.js';
import { callApi, type Method, useTestApp } from './helpers/fixture.js';

// Two databases: `fx` has no worker, so generations stay `pending` until a test moves them; `wk` runs a
// worker (in its own database, so it never picks up `fx`'s jobs) for the end-to-end multipart case.
const fx = useTestApp({ listen: true });
const wk = useTestApp({ worker: true, listen: true });
const extraApps: TestApp[] = [];

afterAll(async () => {
  for (const app of extraApps) await app.close();
});

async function listen(app: TestApp): Promise<string> {
  await app.app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.app.server.address();
  return `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
}

const call = (who: SignedUp, method: Method, url: string, payload?: object, app: TestApp = fx.t) =>
  callApi(app, who, method, url, payload);

interface GenerationBody {
  id: string;
  user_id: string;
  project_id: string | null;
  status: string;
  cost_credits: number;
  is_favorite: boolean;
}

async function createGeneration(
  who: SignedUp,
  body: { model_id?: string; prompt?: string; project_id?: string } = {},
  app: TestApp = fx.t,
): Promise<GenerationBody> {
  const res = await call(
    who,
    'POST',
    '/generations',
    { model_id: 'velro-sketch', prompt: `prompt ${randomBytes(3).toString('hex')}`, ...body },
    app,
  );
  expect(res.statusCode, res.body).toBe(202);
  return res.json();
}

/** A PNG made with sharp; `noise` makes it incompressible, so its size is about width × height × 3. */
async function png(width: number, height: number, noise = false): Promise<Buffer> {
  const image = noise
    ? sharp(randomBytes(width * height * 3), { raw: { width, height, channels: 3 } })
    : sharp({ create: { width, height, channels: 3, background: { r: 200, g: 80, b: 40 } } });
  return image.png().toBuffer();
}

/** POST /generations as multipart/form-data over a real connection. */
async function postMultipart(baseUrl: string, who: SignedUp, fields: Record<string, string>, file?: Blob) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  if (file) form.append('reference_image', file, file.type.startsWith('image/') ? 'ref.png' : 'notes.txt');
  const res = await fetch(`${baseUrl}/api/v1/generations`, {
    method: 'POST',
    headers: bearer(who.accessToken),
    body: form,
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  return {
    status: res.status,
    headers: res.headers,
    text,
    json: () =>
      JSON.parse(text) as GenerationBody & {
        error: { code: string; request_id: string; message: string; details?: { field: string }[] };
      },
  };
}

const fieldsOf = (details: unknown) => ((details ?? []) as { field: string }[]).map((d) => d.field);

async function balanceOf(userId: string): Promise<number> {
  const res = await fx.sql.query<{ credits_balance: number }>(
    'SELECT credits_balance FROM users WHERE id = $1',
    [userId],
  );
  return res.rows[0]!.credits_balance;
}

describe('POST /generations as multipart/form-data', () => {
  it('accepts a PNG reference image for velro-studio (202) and the generation completes', async () => {
    const user = await signUp(wk.app);
    const image = await png(64, 48);
    const res = await postMultipart(
      wk.baseUrl,
      user,
      {
        model_id: 'velro-studio',
        prompt: 'a harbour in the style of the reference',
        negative_prompt: 'fog',
        parameters: JSON.stringify({ width: 128, height: 96, steps: 2, seed: 7 }),
      },
      new Blob([new Uint8Array(image)], { type: 'image/png' }),
    );
    expect(res.status, res.text).toBe(202);
    const created = res.json();
    expect(created).toMatchObject({
      status: 'pending',
      model_id: 'velro-studio',
      negative_prompt: 'fog',
      cost_credits: 20,
      parameters: { width: 128, height: 96, steps: 2, seed: 7 },
    });
    expect(res.headers.get('location')).toBe(`/api/v1/generations/${created.id}`);

    // the reference is stored with the generation
    const row = await wk.sql.query<{ reference_key: string | null; reference_mime: string | null }>(
      'SELECT reference_key, reference_mime FROM generations WHERE id = $1',
      [created.id],
    );
    expect(row.rows[0]).toMatchObject({ reference_mime: 'image/png', reference_key: expect.any(String) });
    expect(await wk.t.pipeline.storage.read(row.rows[0]!.reference_key!)).toEqual(image);

    // a bounded poll of GET /generations/:id until it is terminal
    let status = 'pending';
    for (let i = 0; i < 200 && (status === 'pending' || status === 'processing'); i++) {
      await new Promise((r) => setTimeout(r, 50));
      status = (await call(user, 'GET', `/generations/${created.id}`, undefined, wk.t)).json().status;
    }
    expect(status).toBe('completed');
    const urls = await call(user, 'GET', `/generations/${created.id}/media-urls`, undefined, wk.t);
    expect(urls.json().items[0]).toMatchObject({ mime: 'image/png', width: 128, height: 96 });
  });

  it('refuses a reference_image that is not an image with 415, charging nothing', async () => {
    const user = await signUp(fx.app);
    const res = await postMultipart(
      fx.baseUrl,
      user,
      { model_id: 'velro-studio', prompt: 'from my notes' },
      new Blob(['just some text, not an image'], { type: 'text/plain' }),
    );
    expect(res.status, res.text).toBe(415);
    expect(res.json().error.code).toBe('unsupported_media_type');
    expect(res.headers.get('x-request-id')).toBe(res.json().error.request_id);
    expect(await balanceOf(user.id)).toBe(1000);
  });

  it('refuses a reference image over REFERENCE_IMAGE_MAX_BYTES with 413', async () => {
    const small = await startTestApp({ databaseUrl: fx.db.url, env: { REFERENCE_IMAGE_MAX_BYTES: '2048' } });
    extraApps.push(small);
    const smallBase = await listen(small);
    const user = await signUp(small.app);
    const image = await png(36, 36, true);
    expect(image.length).toBeGreaterThan(2048);
    expect(image.length).toBeLessThan(8192);
    const res = await postMultipart(
      smallBase,
      user,
      { model_id: 'velro-studio', prompt: 'too big a reference' },
      new Blob([new Uint8Array(image)], { type: 'image/png' }),
    );
    expect(res.status, res.text).toBe(413);
    expect(res.json().error.code).toBe('payload_too_large');
    expect(await balanceOf(user.id)).toBe(1000);
    const count = await fx.sql.query('SELECT count(*)::int AS n FROM generations WHERE user_id = $1', [
      user.id,
    ]);
    expect(count.rows[0].n).toBe(0);

    // a small enough image on the same app is fine
    const ok = await postMultipart(
      smallBase,
      user,
      { model_id: 'velro-studio', prompt: 'a small reference' },
      new Blob([new Uint8Array(await png(8, 8))], { type: 'image/png' }),
    );
    expect(ok.status, ok.text).toBe(202);
  });

  it('refuses a reference image for a model that does not take one (400, body.reference_image)', async () => {
    const user = await signUp(fx.app);
    const res = await postMultipart(
      fx.baseUrl,
      user,
      { model_id: 'velro-sketch', prompt: 'sketch from a photo' },
      new Blob([new Uint8Array(await png(16, 16))], { type: 'image/png' }),
    );
    expect(res.status, res.text).toBe(400);
    expect(res.json().error.code).toBe('validation_error');
    expect(fieldsOf(res.json().error.details)).toContain('body.reference_image');
    expect(await balanceOf(user.id)).toBe(1000);
  });

  it('refuses parameters that are not JSON (400, body.parameters) or outside the model', async () => {
    const user = await signUp(fx.app);
    const badJson = await postMultipart(fx.baseUrl, user, {
      model_id: 'velro-sketch',
      prompt: 'x',
      parameters: '{width: 64',
    });
    expect(badJson.status, badJson.text).toBe(400);
    expect(fieldsOf(badJson.json().error.details)).toContain('body.parameters');

    const notAnObject = await postMultipart(fx.baseUrl, user, {
      model_id: 'velro-sketch',
      prompt: 'x',
      parameters: '[1, 2]',
    });
    expect(notAnObject.status, notAnObject.text).toBe(400);
    expect(fieldsOf(notAnObject.json().error.details)).toContain('body.parameters');

    const outOfRange = await postMultipart(fx.baseUrl, user, {
      model_id: 'velro-sketch',
      prompt: 'x',
      parameters: JSON.stringify({ width: 4096 }),
    });
    expect(outOfRange.status, outOfRange.text).toBe(400);
    expect(fieldsOf(outOfRange.json().error.details)).toContain('body.parameters.width');
    expect(await balanceOf(user.id)).toBe(1000);
  });

  it('refuses a multipart body without a prompt, or with a blank one (400), charging nothing', async () => {
    const user = await signUp(fx.app);
    const bodies: Record<string, string>[] = [
      { model_id: 'velro-sketch' },
      { model_id: 'velro-sketch', prompt: '   ' },
    ];
    for (const fields of bodies) {
      const res = await postMultipart(fx.baseUrl, user, fields);
      expect(res.status, res.text).toBe(400);
      expect(res.json().error.code).toBe('validation_error');
      expect(res.headers.get('x-request-id')).toBe(res.json().error.request_id);
    }
    expect(await balanceOf(user.id)).toBe(1000);
    const count = await fx.sql.query('SELECT count(*)::int AS n FROM generations WHERE user_id = $1', [
      user.id,
    ]);
    expect(count.rows[0].n).toBe(0);
  });

  it('names the missing field of a multipart body exactly as the JSON body does', async () => {
    const user = await signUp(fx.app);
    const json = await call(user, 'POST', '/generations', { model_id: 'velro-sketch' });
    expect(fieldsOf(errorOf(json).details)).toContain('body.prompt');
    const multipart = await postMultipart(fx.baseUrl, user, { model_id: 'velro-sketch' });
    expect(fieldsOf(multipart.json().error.details)).toContain('body.prompt');
    const blank = await postMultipart(fx.baseUrl, user, { model_id: 'velro-sketch', prompt: '   ' });
    expect(fieldsOf(blank.json().error.details)).toContain('body.prompt');
  });
});

describe('GET /generations', () => {
  it('lists only my own generations, newest first', async () => {
    const [me, other] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const mine = [];
    for (let i = 0; i < 3; i++) mine.push((await createGeneration(me)).id);
    const theirs = (await createGeneration(other)).id;
    const res = await call(me, 'GET', '/generations');
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body.items.map((g: GenerationBody) => g.id)).toEqual([...mine].reverse());
    expect(body.items.every((g: GenerationBody) => g.user_id === me.id)).toBe(true);
    expect(body.next_cursor).toBeNull();
    expect(JSON.stringify(body)).not.toContain(theirs);
  });

  it('filters by status and favorite', async () => {
    const me = await signUp(fx.app);
    const [a, b, c, d] = [
      await createGeneration(me),
      await createGeneration(me),
      await createGeneration(me),
      await createGeneration(me),
    ] as [GenerationBody, GenerationBody, GenerationBody, GenerationBody];
    expect((await call(me, 'POST', `/generations/${a.id}/cancel`)).statusCode).toBe(200);
    await fx.sql.query(`UPDATE generations SET status = 'completed', progress = 100 WHERE id = $1`, [b.id]);
    expect((await call(me, 'POST', `/generations/${b.id}/favorite`, { favorite: true })).statusCode).toBe(
      200,
    );
    expect((await call(me, 'POST', `/generations/${d.id}/favorite`, { favorite: true })).statusCode).toBe(
      200,
    );

    const ids = async (query: string) => {
      const res = await call(me, 'GET', `/generations?${query}`);
      expect(res.statusCode, `${query}: ${res.body}`).toBe(200);
      return res.json().items.map((g: GenerationBody) => g.id);
    };
    expect(await ids('status=cancelled')).toEqual([a.id]);
    expect(await ids('status=completed')).toEqual([b.id]);
    expect(await ids('status=pending')).toEqual([d.id, c.id]);
    expect(await ids('status=failed')).toEqual([]);
    expect(await ids('favorite=true')).toEqual([d.id, b.id]);
    expect(await ids('favorite=false')).toEqual([c.id, a.id]);
    expect(await ids('favorite=true&status=pending')).toEqual([d.id]);

    const bad = await call(me, 'GET', '/generations?status=done');
    expect(bad.statusCode).toBe(400);
    expect(fieldsOf(errorOf(bad).details)).toContain('query.status');
  });

  it('with project_id lists every generation of a project I can view, and 404s one I cannot', async () => {
    const [owner, editor, viewer, stranger] = await Promise.all([
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
      signUp(fx.app),
    ]);
    const team = await call(owner, 'POST', '/teams', { name: 'Harbour crew' });
    const teamId = team.json().id as string;
    for (const [who, role] of [
      [editor, 'editor'],
      [viewer, 'viewer'],
    ] as const) {
      const res = await call(owner, 'POST', `/teams/${teamId}/members`, { email: who.email, role });
      expect(res.statusCode, res.body).toBe(201);
    }
    const project = await call(owner, 'POST', '/projects', {
      name: 'Harbour',
      team_id: teamId,
      visibility: 'team',
    });
    expect(project.statusCode, project.body).toBe(201);
    const projectId = project.json().id as string;
    const byOwner = await createGeneration(owner, { project_id: projectId });
    const byEditor = await createGeneration(editor, { project_id: projectId });
    const outside = await createGeneration(owner);
    // a viewer cannot add work to the project
    const refused = await call(viewer, 'POST', '/generations', {
      model_id: 'velro-sketch',
      prompt: 'not mine to add',
      project_id: projectId,
    });
    expect(refused.statusCode).toBe(403);

    for (const who of [owner, editor, viewer]) {
      const res = await call(who, 'GET', `/generations?project_id=${projectId}`);
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().items.map((g: GenerationBody) => g.id)).toEqual([byEditor.id, byOwner.id]);
    }
    // without project_id, still only my own
    const ownerOwn = (await call(owner, 'GET', '/generations')).json().items.map((g: GenerationBody) => g.id);
    expect(ownerOwn).toEqual([outside.id, byOwner.id]);

    // filters combine with project_id
    await call(owner, 'POST', `/generations/${byEditor.id}/favorite`, { favorite: true });
    const favorites = await call(viewer, 'GET', `/generations?project_id=${projectId}&favorite=true`);
    expect(favorites.json().items.map((g: GenerationBody) => g.id)).toEqual([byEditor.id]);

    const denied = await call(stranger, 'GET', `/generations?project_id=${projectId}`);
    expect(denied.statusCode).toBe(404);
    expect(errorOf(denied).code).toBe('not_found');
    const missing = await call(
      stranger,
      'GET',
      '/generations?project_id=00000000-0000-4000-8000-000000000000',
    );
    expect(missing.statusCode).toBe(404);

    // a private project of someone else: 404 too
    const privateProject = await call(owner, 'POST', '/projects', { name: 'Private' });
    const hidden = await call(viewer, 'GET', `/generations?project_id=${privateProject.json().id}`);
    expect(hidden.statusCode).toBe(404);
  });

  it('pages with limit=2 through every generation once, newest first; a bad cursor is 400', async () => {
    const me = await signUp(fx.app);
    const created: string[] = [];
    for (let i = 0; i < 5; i++) created.push((await createGeneration(me)).id);
    // one deleted: it must not appear
    const deleted = await createGeneration(me);
    expect((await call(me, 'DELETE', `/generations/${deleted.id}`)).statusCode).toBe(204);

    const seen: string[] = [];
    const pageSizes: number[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 10; i++) {
      const query: string = cursor ? `limit=2&cursor=${encodeURIComponent(cursor)}` : 'limit=2';
      const res = await call(me, 'GET', `/generations?${query}`);
      expect(res.statusCode, res.body).toBe(200);
      const body = res.json() as { items: GenerationBody[]; next_cursor: string | null };
      pageSizes.push(body.items.length);
      seen.push(...body.items.map((g) => g.id));
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    expect(pageSizes).toEqual([2, 2, 1]);
    expect(seen).toEqual([...created].reverse());
    expect(new Set(seen).size).toBe(seen.length);

    const badCursors = [
      'abc',
      'not a cursor',
      Buffer.from('[1]').toString('base64url'),
      Buffer.from('["yesterday","x"]').toString('base64url'),
      Buffer.from('{"at":1}').toString('base64url'),
      Buffer.from('["2024-01-01 00:00:00+00","not-a-uuid"]').toString('base64url'),
    ];
    for (const bad of badCursors) {
      const res = await call(me, 'GET', `/generations?limit=2&cursor=${encodeURIComponent(bad)}`);
      expect(res.statusCode, bad).toBe(400);
      expect(fieldsOf(errorOf(res).details), bad).toContain('query.cursor');
    }
    for (const limit of ['0', '101', 'two']) {
      const res = await call(me, 'GET', `/generations?limit=${limit}`);
      expect(res.statusCode, limit).toBe(400);
    }
  });
});

describe('POST /generations/:id/favorite', () => {
  async function sharedGeneration() {
    const [owner, viewer, stranger] = await Promise.all([signUp(fx.app), signUp(fx.app), signUp(fx.app)]);
    const team = await call(owner, 'POST', '/teams', { name: 'Favourites' });
    const teamId = team.json().id as string;
    await call(owner, 'POST', `/teams/${teamId}/members`, { email: viewer.email, role: 'viewer' });
    const project = await call(owner, 'POST', '/projects', {
      name: 'Shared',
      team_id: teamId,
      visibility: 'team',
    });
    const generation = await createGeneration(owner, { project_id: project.json().id });
    expect(generation.is_favorite).toBe(false);
    const favorite = (payload?: object, who: SignedUp = owner) =>
      call(who, 'POST', `/generations/${generation.id}/favorite`, payload);
    return { owner, viewer, stranger, generation, favorite };
  }

  it('sets it with {favorite}; a team viewer (no edit) gets 403, a stranger 404', async () => {
    const { owner, viewer, stranger, generation, favorite } = await sharedGeneration();
    const set = await favorite({ favorite: true });
    expect(set.statusCode, set.body).toBe(200);
    expect(set.json()).toMatchObject({ id: generation.id, is_favorite: true });
    expect((await favorite({ favorite: true })).json().is_favorite).toBe(true);
    expect((await favorite({ favorite: false })).json().is_favorite).toBe(false);
    expect((await call(owner, 'GET', `/generations/${generation.id}`)).json().is_favorite).toBe(false);

    const wrong = await favorite({ favorite: 'yes' });
    expect(wrong.statusCode).toBe(400);

    // the viewer can see it but may not edit it
    expect((await call(viewer, 'GET', `/generations/${generation.id}`)).statusCode).toBe(200);
    const viewerTry = await favorite({ favorite: true }, viewer);
    expect(viewerTry.statusCode).toBe(403);
    expect(errorOf(viewerTry).code).toBe('forbidden');

    const strangerTry = await favorite({ favorite: true }, stranger);
    expect(strangerTry.statusCode).toBe(404);
    expect(errorOf(strangerTry).code).toBe('not_found');
    const missing = await call(
      stranger,
      'POST',
      '/generations/00000000-0000-4000-8000-000000000000/favorite',
      {
        favorite: true,
      },
    );
    expect(missing.statusCode).toBe(404);
    const row = await fx.sql.query('SELECT is_favorite FROM generations WHERE id = $1', [generation.id]);
    expect(row.rows[0].is_favorite).toBe(false);
  });

  it('flips it when sent without a body; the viewer still gets 403', async () => {
    const { owner, viewer, generation, favorite } = await sharedGeneration();
    const first = await favorite();
    expect(first.statusCode, first.body).toBe(200);
    expect(first.json().is_favorite).toBe(true);
    expect((await favorite()).json().is_favorite).toBe(false);
    expect((await favorite()).json().is_favorite).toBe(true);
    expect((await call(owner, 'GET', `/generations/${generation.id}`)).json().is_favorite).toBe(true);
    expect((await favorite(undefined, viewer)).statusCode).toBe(403);
  });
});

describe('GET /generations/stats', () => {
  it('counts my generations by status and the credits actually spent', async () => {
    const [me, other] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const pending = await createGeneration(me); // 5
    const completed = await createGeneration(me, { model_id: 'velro-studio' }); // 20
    const processing = await createGeneration(me); // 5
    const failed = await createGeneration(me, { model_id: 'velro-photon' }); // 50, refunded
    const cancelled = await createGeneration(me, { model_id: 'velro-studio' }); // 20, refunded
    const deleted = await createGeneration(me, { model_id: 'velro-ultra' }); // 120, deleted and refunded
    await createGeneration(other, { model_id: 'velro-ultra' });

    expect((await call(me, 'POST', `/generations/${cancelled.id}/cancel`)).statusCode).toBe(200);
    expect((await call(me, 'DELETE', `/generations/${deleted.id}`)).statusCode).toBe(204);
    await fx.sql.query(`UPDATE generations SET status = 'completed', progress = 100 WHERE id = $1`, [
      completed.id,
    ]);
    await fx.sql.query(`UPDATE generations SET status = 'processing', progress = 40 WHERE id = $1`, [
      processing.id,
    ]);
    await fx.sql.query(`UPDATE generations SET status = 'failed', error = 'provider failed' WHERE id = $1`, [
      failed.id,
    ]);
    await call(me, 'POST', `/generations/${completed.id}/favorite`, { favorite: true });
    await call(me, 'POST', `/generations/${pending.id}/favorite`, { favorite: true });

    const res = await call(me, 'GET', '/generations/stats');
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toEqual({
      total: 5,
      by_status: { pending: 1, processing: 1, completed: 1, failed: 1, cancelled: 1 },
      favorites: 2,
      credits_spent: 5 + 20 + 5,
    });

    const fresh = await signUp(fx.app);
    expect((await call(fresh, 'GET', '/generations/stats')).json()).toEqual({
      total: 0,
      by_status: { pending: 0, processing: 0, completed: 0, failed: 0, cancelled: 0 },
      favorites: 0,
      credits_spent: 0,
    });
  });
});

describe('credits', () => {
  interface Tx {
    id: number;
    amount: number;
    balance_after: number;
    reason: string;
    generation_id: string | null;
  }

  it('shows the balance and the ledger (signup, charge, refund), newest first, page by page', async () => {
    const me = await signUp(fx.app);
    const balance = await call(me, 'GET', '/credits/balance');
    expect(balance.statusCode).toBe(200);
    expect(balance.json()).toEqual({ credits_balance: 1000 });

    const kept = await createGeneration(me); // -5
    const refunded = await createGeneration(me, { model_id: 'velro-studio' }); // -20
    expect((await call(me, 'POST', `/generations/${refunded.id}/cancel`)).statusCode).toBe(200); // +20
    expect((await call(me, 'GET', '/credits/balance')).json()).toEqual({ credits_balance: 995 });

    const all = await call(me, 'GET', '/credits/transactions');
    expect(all.statusCode).toBe(200);
    const items = all.json().items as Tx[];
    expect(items.map((r) => [r.reason, r.amount, r.balance_after, r.generation_id])).toEqual([
      ['generation_refund', 20, 995, refunded.id],
      ['generation_charge', -20, 975, refunded.id],
      ['generation_charge', -5, 995, kept.id],
      ['signup', 1000, 1000, null],
    ]);
    expect(all.json().next_cursor).toBeNull();

    const seen: Tx[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 10; i++) {
      const query: string = cursor ? `limit=1&cursor=${encodeURIComponent(cursor)}` : 'limit=1';
      const res = await call(me, 'GET', `/credits/transactions?${query}`);
      expect(res.statusCode, res.body).toBe(200);
      const body = res.json() as { items: Tx[]; next_cursor: string | null };
      expect(body.items).toHaveLength(1);
      seen.push(...body.items);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    expect(seen).toEqual(items);
    expect(seen.map((r) => r.id)).toEqual([...seen.map((r) => r.id)].sort((a, b) => b - a));

    // someone else's ledger never shows up
    const other = await signUp(fx.app);
    const theirs = (await call(other, 'GET', '/credits/transactions')).json().items as Tx[];
    expect(theirs.map((r) => r.reason)).toEqual(['signup']);

    for (const bad of [
      'abc',
      Buffer.from('["x"]').toString('base64url'),
      Buffer.from('[1,2]').toString('base64url'),
    ]) {
      const res = await call(me, 'GET', `/credits/transactions?cursor=${encodeURIComponent(bad)}`);
      expect(res.statusCode, bad).toBe(400);
      expect(fieldsOf(errorOf(res).details)).toContain('query.cursor');
    }
  });

  it('POST /admin/credits/grant: administrators only, by email or user_id, ledgered and audited', async () => {
    const [user, target] = await Promise.all([signUp(fx.app), signUp(fx.app)]);
    const grant = (who: SignedUp, payload: object) => call(who, 'POST', '/admin/credits/grant', payload);

    const refused = await grant(user, { email: target.email, amount: 50 });
    expect(refused.statusCode).toBe(403);
    expect(errorOf(refused).code).toBe('admin_required');
    expect(await balanceOf(target.id)).toBe(1000);

    // The same token works once the user is an admin. A role changed in SQL reaches a cached role within
    // the propagation bound (SPEC §6), so wait for it, boundedly, with a probe that changes nothing: an
    // administrator's body-less grant is a 400, anyone else's a 403.
    const roleSeen = async (who: SignedUp, status: number) => {
      for (let i = 0; i < 200; i++) {
        if ((await grant(who, { amount: 1 })).statusCode === status) return true;
        await new Promise((r) => setTimeout(r, 10));
      }
      return false;
    };
    await fx.sql.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [user.id]);
    expect(await roleSeen(user, 400)).toBe(true);
    const admin = user;

    const byEmail = await grant(admin, {
      email: target.email.toUpperCase(),
      amount: 50,
      note: 'welcome back',
    });
    expect(byEmail.statusCode, byEmail.body).toBe(200);
    expect(byEmail.json()).toEqual({ user_id: target.id, credits_balance: 1050 });
    const byId = await grant(admin, { user_id: target.id, amount: 25 });
    expect(byId.statusCode, byId.body).toBe(200);
    expect(byId.json()).toEqual({ user_id: target.id, credits_balance: 1075 });
    expect((await call(target, 'GET', '/credits/balance')).json()).toEqual({ credits_balance: 1075 });

    const ledger = (await call(target, 'GET', '/credits/transactions')).json().items as Tx[];
    expect(ledger.map((r) => [r.reason, r.amount, r.balance_after])).toEqual([
      ['admin_grant', 25, 1075],
      ['admin_grant', 50, 1050],
      ['signup', 1000, 1000],
    ]);

    const audit = await fx.sql.query<{ actor_id: string; resource_id: string; details: { amount: number } }>(
      `SELECT actor_id, resource_id, details FROM audit_events WHERE action = 'credits.grant' AND resource_id = $1
        ORDER BY id`,
      [target.id],
    );
    expect(audit.rows.map((r) => [r.actor_id, r.details.amount])).toEqual([
      [admin.id, 50],
      [admin.id, 25],
    ]);
    expect(audit.rows[0]!.details).toMatchObject({ note: 'welcome back' });

    const both = await grant(admin, { email: target.email, user_id: target.id, amount: 1 });
    expect(both.statusCode).toBe(400);
    expect(errorOf(both).code).toBe('validation_error');
    const neither = await grant(admin, { amount: 1 });
    expect(neither.statusCode).toBe(400);
    for (const amount of [0, -5, 1.5]) {
      expect((await grant(admin, { user_id: target.id, amount })).statusCode, String(amount)).toBe(400);
    }
    const unknownEmail = await grant(admin, { email: 'nobody-here@example.com', amount: 1 });
    expect(unknownEmail.statusCode).toBe(404);
    expect(errorOf(unknownEmail).code).toBe('user_not_found');
    const unknownId = await grant(admin, { user_id: '00000000-0000-4000-8000-000000000000', amount: 1 });
    expect(unknownId.statusCode).toBe(404);
    expect(await balanceOf(target.id)).toBe(1075);

    // and demoted again, the same token is refused (within the propagation bound)
    await fx.sql.query(`UPDATE users SET role = 'user' WHERE id = $1`, [user.id]);
    expect(await roleSeen(user, 403)).toBe(true);
    const demoted = await grant(user, { user_id: target.id, amount: 1 });
    expect(demoted.statusCode).toBe(403);
    expect(errorOf(demoted).code).toBe('admin_required');
    expect(await balanceOf(target.id)).toBe(1075);
  });
});

describe('per-user creation rate limit', () => {
  it('the 4th create within a minute is 429 with Retry-After, uncharged; another user is unaffected', async () => {
    const limited = await startTestApp({
      databaseUrl: fx.db.url,
      env: { GENERATION_RATE_LIMIT_PER_MINUTE: '3' },
    });
    extraApps.push(limited);
    const [me, other] = await Promise.all([signUp(limited.app), signUp(limited.app)]);
    for (let i = 0; i < 3; i++) await createGeneration(me, {}, limited);
    const fourth = await call(
      me,
      'POST',
      '/generations',
      { model_id: 'velro-sketch', prompt: 'one more' },
      limited,
    );
    expect(fourth.statusCode).toBe(429);
    expect(errorOf(fourth).code).toBe('rate_limited');
    const retryAfter = Number(fourth.headers['retry-after']);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(await balanceOf(me.id)).toBe(1000 - 3 * 5);
    const count = await fx.sql.query('SELECT count(*)::int AS n FROM generations WHERE user_id = $1', [
      me.id,
    ]);
    expect(count.rows[0].n).toBe(3);

    // another user has a budget of their own
    for (let i = 0; i < 3; i++) await createGeneration(other, {}, limited);
    // reads are not creates
    expect((await call(me, 'GET', '/generations', undefined, limited)).statusCode).toBe(200);
  });
});
