import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { openMediaStorage } from '../src/modules/media/open-storage.js';
import { MediaSigner } from '../src/modules/media/signing.js';
import type { MediaStorage } from '../src/modules/media/storage.js';
import {
  bearer,
  createTestDatabase,
  type SignedUp,
  signUp,
  startTestApp,
  TEST_ENV,
  type TestApp,
} from './helpers/app.js';
import { callApi, until, useTestDatabase } from './helpers/fixture.js';
import { S3RVER_CREDENTIALS, type S3TestServer, startS3Server } from './helpers/s3.js';

/**
 * Media in an S3-compatible store, against a real S3-protocol server (s3rver) on loopback:
 * instance A renders (its worker writes to the bucket), B serves from the bucket without a local
 * copy, C answers with redirects to presigned GETs. All three share one database and one bucket.
 */
const TTL_SECONDS = 600;
const REDIRECT_TTL_SECONDS = 60;

const fx = useTestDatabase();
let s3: S3TestServer;
let a: TestApp;
let b: TestApp;
let c: TestApp;
const base: Record<'a' | 'b' | 'c', string> = { a: '', b: '', c: '' };
const dataDirs: string[] = [];
/** Added to the real time on C's clock; the expiry tests move it and put it back. */
let clockOffsetMs = 0;

async function listen(t: TestApp): Promise<string> {
  await t.app.listen({ host: '127.0.0.1', port: 0 });
  return `http://127.0.0.1:${(t.app.server.address() as AddressInfo).port}`;
}

beforeAll(async () => {
  s3 = await startS3Server();
  // The store reads its credentials the standard way (the AWS SDK's default chain), as in production.
  Object.assign(process.env, S3RVER_CREDENTIALS);
  for (let i = 0; i < 3; i++) dataDirs.push(await mkdtemp(join(tmpdir(), 'velro-test-s3-data-')));
  const env = { ...s3.env, MEDIA_URL_TTL_SECONDS: String(TTL_SECONDS) };
  a = await startTestApp({ databaseUrl: fx.db.url, worker: true, env, dataDir: dataDirs[0]! });
  b = await startTestApp({ databaseUrl: fx.db.url, env, dataDir: dataDirs[1]! });
  c = await startTestApp({
    databaseUrl: fx.db.url,
    env: { ...env, MEDIA_REDIRECT: 'true', MEDIA_REDIRECT_TTL_SECONDS: String(REDIRECT_TTL_SECONDS) },
    dataDir: dataDirs[2]!,
    now: () => Date.now() + clockOffsetMs,
  });
  base.a = await listen(a);
  base.b = await listen(b);
  base.c = await listen(c);
});

afterAll(async () => {
  await Promise.all([a?.close(), b?.close(), c?.close()]);
  await s3?.close();
  for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
});

interface MediaUrl {
  media_id: string;
  url: string;
  mime: string;
  bytes: number;
  expires_at: string;
}

/** Reads the generation's Server-Sent Events (from any instance) until the stream ends; the last status. */
async function waitForEnd(who: SignedUp, id: string, on = base.a): Promise<string> {
  const res = await fetch(`${on}/api/v1/generations/${id}/events`, {
    headers: bearer(who.accessToken),
    signal: AbortSignal.timeout(30_000),
  });
  expect(res.status).toBe(200);
  const events = (await res.text())
    .split('\n\n')
    .map((block) => block.split('\n').find((line) => line.startsWith('data: ')))
    .filter((line): line is string => line !== undefined)
    .map((line) => JSON.parse(line.slice(6)) as { status: string });
  return events.at(-1)?.status ?? 'none';
}

/** A generation created on A and rendered by A's worker; its id. */
async function completedGeneration(who: SignedUp, prompt: string): Promise<string> {
  const res = await callApi(a, who, 'POST', '/generations', {
    model_id: 'velro-sketch',
    prompt,
    parameters: { width: 96, height: 64, steps: 2 },
  });
  expect(res.statusCode, res.body).toBe(202);
  const id = res.json().id as string;
  expect(await waitForEnd(who, id)).toBe('completed');
  return id;
}

async function mediaUrls(t: TestApp, who: SignedUp, id: string): Promise<MediaUrl[]> {
  const res = await callApi(t, who, 'GET', `/generations/${id}/media-urls`);
  expect(res.statusCode, res.body).toBe(200);
  const items = res.json().items as MediaUrl[];
  expect(items.length).toBeGreaterThanOrEqual(1);
  return items;
}

const get = (url: string, headers: Record<string, string> = {}, redirect: 'manual' | 'follow' = 'manual') =>
  fetch(url, { headers, redirect, signal: AbortSignal.timeout(15_000) });

async function codeOf(res: Response): Promise<string> {
  const body = (await res.json()) as { error?: { code?: unknown } };
  return String(body.error?.code);
}

async function storageKeyOf(mediaId: string): Promise<string> {
  const { rows } = await a.pools.pg.authorization.query<{ storage_key: string }>(
    'SELECT storage_key FROM media WHERE id = $1',
    [mediaId],
  );
  return rows[0]!.storage_key;
}

/** The object's bytes as the S3 server holds them, read with the test's own client. */
async function bucketBytes(key: string): Promise<Buffer> {
  const object = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return Buffer.from(await object.Body!.transformToByteArray());
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => e.name);
}

let owner: SignedUp;
let generationId: string;
let media: MediaUrl;
let key: string;
let full: Buffer;

beforeAll(async () => {
  owner = await signUp(a.app);
  generationId = await completedGeneration(owner, 'a lighthouse in a bucket');
  [media] = (await mediaUrls(a, owner, generationId)) as [MediaUrl];
  key = await storageKeyOf(media.media_id);
  full = await bucketBytes(key);
});

describe('configuration', () => {
  it('refuses MEDIA_STORE=s3 without S3_BUCKET, and redirects without the S3 store, at start-up', () => {
    expect(() => loadConfig({ ...TEST_ENV, MEDIA_STORE: 's3' })).toThrow(/MEDIA_STORE=s3 needs S3_BUCKET/);
    expect(() => loadConfig({ ...TEST_ENV, MEDIA_REDIRECT: 'true' })).toThrow(
      /MEDIA_REDIRECT needs MEDIA_STORE=s3/,
    );
    expect(() => loadConfig({ ...TEST_ENV, MEDIA_STORE: 'ftp' })).toThrow(/MEDIA_STORE/);
    const config = loadConfig({ ...TEST_ENV, ...s3.env });
    expect(config).toMatchObject({
      MEDIA_STORE: 's3',
      S3_BUCKET: s3.bucket,
      S3_FORCE_PATH_STYLE: true,
      MEDIA_REDIRECT: false,
      MEDIA_REDIRECT_TTL_SECONDS: 60,
    });
    expect(loadConfig({ ...TEST_ENV }).MEDIA_STORE).toBe('local');
    expect(a.pipeline.storage.kind).toBe('s3');
    expect(a.pipeline.storage.directUrl).toBeUndefined();
    expect(c.pipeline.storage.directUrl).toBeTypeOf('function');
  });
});

describe('media rendered into the bucket', () => {
  it('lands in the bucket under its content address, and on no instance’s disk', async () => {
    const sha256 = createHash('sha256').update(full).digest('hex');
    expect(key).toBe(`${sha256}.png`);
    expect(full.length).toBe(media.bytes);
    expect(full.subarray(1, 4).toString('latin1')).toBe('PNG');
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    expect(head.ContentType).toBe('image/png');
    expect(head.ContentLength).toBe(media.bytes);
    for (const dir of dataDirs) expect(await filesUnder(join(dir, 'media'))).toEqual([]);
  });

  it('is served by an instance that did not render it (no local copy): full bytes equal the bucket’s', async () => {
    // B never ran a worker and has an empty data directory: the bytes can only come from the bucket.
    for (const [name, t, on] of [
      ['A', a, base.a],
      ['B', b, base.b],
    ] as const) {
      const [url] = (await mediaUrls(t, owner, generationId)) as [MediaUrl];
      const res = await get(`${on}${url.url}`);
      expect(res.status, name).toBe(200);
      expect(res.headers.get('content-type'), name).toBe('image/png');
      expect(res.headers.get('content-length'), name).toBe(String(full.length));
      expect(res.headers.get('accept-ranges'), name).toBe('bytes');
      expect(res.headers.get('etag'), name).toBe(`"${createHash('sha256').update(full).digest('hex')}"`);
      expect(res.headers.get('cache-control'), name).toMatch(/^private, max-age=\d+$/);
      expect(Buffer.from(await res.arrayBuffer()).equals(full), name).toBe(true);
    }
    expect(await filesUnder(join(dataDirs[1]!, 'media'))).toEqual([]);

    // HEAD: the same headers and no body (the store is not asked: see the unreachable store below)
    const head = await fetch(`${base.b}${media.url}`, {
      method: 'HEAD',
      signal: AbortSignal.timeout(15_000),
    });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(full.length));
    expect(head.headers.get('etag')).toBe(`"${createHash('sha256').update(full).digest('hex')}"`);
    expect((await head.arrayBuffer()).byteLength).toBe(0);
    const headRange = await fetch(`${base.b}${media.url}`, {
      method: 'HEAD',
      headers: { range: 'bytes=0-9' },
      signal: AbortSignal.timeout(15_000),
    });
    expect(headRange.status).toBe(206);
    expect(headRange.headers.get('content-range')).toBe(`bytes 0-9/${full.length}`);
    expect(headRange.headers.get('content-length')).toBe('10');
  });

  it('serves byte ranges from the bucket (206 with Content-Range) and refuses unsatisfiable ones (416)', async () => {
    const size = full.length;
    const url = `${base.b}${media.url}`;
    const cases: [string, number, number][] = [
      ['bytes=0-99', 0, 99],
      ['bytes=10-19', 10, 19],
      [`bytes=${size - 10}-`, size - 10, size - 1],
      ['bytes=-7', size - 7, size - 1],
      [`bytes=5-${size + 1000}`, 5, size - 1],
    ];
    for (const [range, start, end] of cases) {
      const res = await get(url, { range });
      expect(res.status, range).toBe(206);
      expect(res.headers.get('content-range'), range).toBe(`bytes ${start}-${end}/${size}`);
      expect(res.headers.get('content-length'), range).toBe(String(end - start + 1));
      expect(Buffer.from(await res.arrayBuffer()).equals(full.subarray(start, end + 1)), range).toBe(true);
    }
    const beyond = await get(url, { range: `bytes=${size}-` });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${size}`);
    expect(await codeOf(beyond)).toBe('range_not_satisfiable');
  });

  it('answers If-None-Match with the ETag by 304 and no body; another ETag gets the bytes', async () => {
    const url = `${base.b}${media.url}`;
    const etag = `"${createHash('sha256').update(full).digest('hex')}"`;
    const cached = await get(url, { 'if-none-match': etag });
    expect(cached.status).toBe(304);
    expect(cached.headers.get('etag')).toBe(etag);
    expect((await cached.arrayBuffer()).byteLength).toBe(0);
    const stale = await get(url, { 'if-none-match': '"0000"' });
    expect(stale.status).toBe(200);
    expect(Buffer.from(await stale.arrayBuffer()).equals(full)).toBe(true);
  });

  it('a reference image uploaded to one instance is read from the bucket by another’s worker', async () => {
    const image = await sharp({
      create: { width: 48, height: 32, channels: 3, background: { r: 20, g: 90, b: 160 } },
    })
      .png()
      .toBuffer();
    const form = new FormData();
    form.append('model_id', 'velro-studio');
    form.append('prompt', 'a harbour like the reference');
    form.append('parameters', JSON.stringify({ width: 64, height: 64, steps: 2 }));
    form.append('reference_image', new Blob([new Uint8Array(image)], { type: 'image/png' }), 'ref.png');
    // Created on B (no worker), rendered by A's worker: the reference only exists in the bucket.
    const res = await fetch(`${base.b}/api/v1/generations`, {
      method: 'POST',
      headers: bearer(owner.accessToken),
      body: form,
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    expect(res.status, text).toBe(202);
    const id = (JSON.parse(text) as { id: string }).id;
    const { rows } = await a.pools.pg.authorization.query<{ reference_key: string }>(
      'SELECT reference_key FROM generations WHERE id = $1',
      [id],
    );
    const referenceKey = rows[0]!.reference_key;
    expect(referenceKey).toBe(`${createHash('sha256').update(image).digest('hex')}.png`);
    expect((await bucketBytes(referenceKey)).equals(image)).toBe(true);
    expect(await waitForEnd(owner, id, base.b)).toBe('completed');
    const [rendered] = (await mediaUrls(b, owner, id)) as [MediaUrl];
    const fetched = await get(`${base.b}${rendered.url}`);
    expect(fetched.status).toBe(200);
    expect(Buffer.from(await fetched.arrayBuffer()).length).toBe(rendered.bytes);
    for (const dir of dataDirs) expect(await filesUnder(join(dir, 'media'))).toEqual([]);
  });
});

describe('checks stay Velro’s with the S3 store', () => {
  it('refuses a tampered token (403), an expired one (410) and another user’s media (404)', async () => {
    const token = media.url.slice('/api/v1/media/'.length);
    const [payload, mac] = token.split('.') as [string, string];
    const flipped = `${payload}.${mac[0] === 'A' ? 'B' : 'A'}${mac.slice(1)}`;
    const tampered = await get(`${base.b}/api/v1/media/${flipped}`);
    expect(tampered.status).toBe(403);
    expect(await codeOf(tampered)).toBe('invalid_signature');

    const signer = new MediaSigner(new TextEncoder().encode(b.config.MEDIA_SIGNING_SECRET));
    const expired = signer.sign(media.media_id, -5).token;
    const late = await get(`${base.b}/api/v1/media/${expired}`);
    expect(late.status).toBe(410);
    expect(await codeOf(late)).toBe('expired');

    const stranger = await signUp(b.app);
    const denied = await callApi(b, stranger, 'GET', `/generations/${generationId}/media-urls`);
    expect(denied.statusCode).toBe(404);
  });

  it('a deleted generation’s media answers 404, though its bytes stay in the bucket', async () => {
    const id = await completedGeneration(owner, 'a lighthouse soon gone');
    const [doomed] = (await mediaUrls(b, owner, id)) as [MediaUrl];
    const doomedKey = await storageKeyOf(doomed.media_id);
    const ok = await get(`${base.b}${doomed.url}`);
    expect(ok.status).toBe(200);
    await ok.arrayBuffer();
    const deleted = await callApi(a, owner, 'DELETE', `/generations/${id}`);
    expect(deleted.statusCode).toBe(204);
    const token = deleted.headers['velro-consistency-token'];
    for (const [name, on] of [
      ['B', base.b],
      ['C (redirect mode)', base.c],
    ] as const) {
      const variants: Record<string, string>[] = [
        {},
        { range: 'bytes=0-9' },
        { 'if-none-match': ok.headers.get('etag') ?? '' },
      ];
      for (const headers of variants) {
        const gone = await get(`${on}${doomed.url}`, {
          ...headers,
          ...(typeof token === 'string' ? { 'velro-consistency-token': token } : {}),
        });
        expect(gone.status, `${name} ${JSON.stringify(headers)}`).toBe(404);
        expect(gone.headers.get('location')).toBeNull();
        expect(await codeOf(gone)).toBe('not_found');
      }
    }
    // the content stays (content-addressed objects may be shared); only Velro's answer changed
    expect((await bucketBytes(doomedKey)).length).toBe(doomed.bytes);
  });
});

describe('redirect mode (MEDIA_REDIRECT)', () => {
  it('answers a valid URL with 302 to a presigned GET that serves the bytes, not cacheable itself', async () => {
    const [url] = (await mediaUrls(c, owner, generationId)) as [MediaUrl];
    const res = await get(`${base.c}${url.url}`);
    expect(res.status).toBe(302);
    expect(res.headers.get('cache-control')).toBe('private, no-store');
    expect(res.headers.get('etag')).toBeNull();
    await res.arrayBuffer();
    const location = res.headers.get('location') ?? '';
    expect(location.startsWith(`${s3.endpoint}/${s3.bucket}/${key}?`)).toBe(true);
    const query = new URL(location).searchParams;
    expect(query.get('X-Amz-Algorithm')).toBe('AWS4-HMAC-SHA256');
    expect(query.get('X-Amz-Expires')).toBe(String(REDIRECT_TTL_SECONDS));
    expect(query.get('X-Amz-Credential')?.startsWith(`${S3RVER_CREDENTIALS.AWS_ACCESS_KEY_ID}/`)).toBe(true);

    const direct = await get(location);
    expect(direct.status).toBe(200);
    expect(Buffer.from(await direct.arrayBuffer()).equals(full)).toBe(true);

    // the presigned URL honours Range itself
    const ranged = await get(location, { range: 'bytes=10-49' });
    expect(ranged.status).toBe(206);
    expect(ranged.headers.get('content-range')).toBe(`bytes 10-49/${full.length}`);
    expect(Buffer.from(await ranged.arrayBuffer()).equals(full.subarray(10, 50))).toBe(true);

    // and a client that follows redirects (a browser, fetch) gets the range end to end (s3rver
    // knows no suffix ranges, `bytes=-n`; S3 does, and Velro's own streaming sends explicit ones)
    const followed = await get(`${base.c}${url.url}`, { range: 'bytes=20-35' }, 'follow');
    expect(followed.status).toBe(206);
    expect(followed.headers.get('content-range')).toBe(`bytes 20-35/${full.length}`);
    expect(Buffer.from(await followed.arrayBuffer()).equals(full.subarray(20, 36))).toBe(true);
  });

  it('still answers a matching If-None-Match with 304 itself (no redirect needed)', async () => {
    const etag = `"${createHash('sha256').update(full).digest('hex')}"`;
    const res = await get(`${base.c}${media.url}`, { 'if-none-match': etag });
    expect(res.status).toBe(304);
    expect(res.headers.get('location')).toBeNull();
    await res.arrayBuffer();
  });

  it('never redirects a tampered or expired token', async () => {
    const token = media.url.slice('/api/v1/media/'.length);
    const [payload, mac] = token.split('.') as [string, string];
    const flipped = `${payload}.${mac[0] === 'A' ? 'B' : 'A'}${mac.slice(1)}`;
    const tampered = await get(`${base.c}/api/v1/media/${flipped}`);
    expect(tampered.status).toBe(403);
    expect(tampered.headers.get('location')).toBeNull();
    expect(await codeOf(tampered)).toBe('invalid_signature');

    const [fresh] = (await mediaUrls(c, owner, generationId)) as [MediaUrl];
    try {
      clockOffsetMs = (TTL_SECONDS + 1) * 1000;
      const expired = await get(`${base.c}${fresh.url}`);
      expect(expired.status).toBe(410);
      expect(expired.headers.get('location')).toBeNull();
      expect(await codeOf(expired)).toBe('expired');
    } finally {
      clockOffsetMs = 0;
    }
  });

  it('a presigned link never outlives the Velro URL it came from', async () => {
    const [fresh] = (await mediaUrls(c, owner, generationId)) as [MediaUrl];
    try {
      // 20 seconds left of the Velro URL on C's clock: the link gets at most 20, not 60
      clockOffsetMs = (TTL_SECONDS - 20) * 1000;
      const res = await get(`${base.c}${fresh.url}`);
      expect(res.status).toBe(302);
      await res.arrayBuffer();
      const expires = Number(new URL(res.headers.get('location') ?? '').searchParams.get('X-Amz-Expires'));
      expect(expires).toBeGreaterThanOrEqual(1);
      expect(expires).toBeLessThanOrEqual(20);
    } finally {
      clockOffsetMs = 0;
    }
  });
});

describe('the S3 store itself', () => {
  let store: MediaStorage;
  beforeAll(() => {
    store = openMediaStorage(loadConfig({ ...TEST_ENV, ...s3.env }));
  });
  afterAll(() => store?.close?.());

  it('writes a key once: a second put of the same bytes uploads nothing', async () => {
    const data = randomBytes(4096);
    const before = s3.puts.length;
    const first = await store.put(data, 'image/webp');
    expect(first).toEqual({
      key: `${createHash('sha256').update(data).digest('hex')}.webp`,
      sha256: createHash('sha256').update(data).digest('hex'),
      bytes: data.length,
    });
    expect(s3.puts.slice(before)).toEqual([first.key]);
    const again = await store.put(data, 'image/webp');
    expect(again).toEqual(first);
    expect(s3.puts.slice(before)).toEqual([first.key]);
    expect((await store.read(first.key)).equals(data)).toBe(true);
  });

  it('reports sizes (null when absent), streams ranges, and fails a stream of a missing object', async () => {
    const data = randomBytes(1000);
    const { key: stored } = await store.put(data, 'image/png');
    expect(await store.size(stored)).toBe(1000);
    const absent = `${'0'.repeat(64)}.png`;
    expect(await store.size(absent)).toBeNull();

    const chunks: Buffer[] = [];
    for await (const chunk of await store.stream(stored, { start: 100, end: 199 }))
      chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(data.subarray(100, 200))).toBe(true);

    // a missing object fails the open itself, before a response could have started
    await expect(store.stream(absent)).rejects.toMatchObject({ name: 'NoSuchKey' });
    await expect(store.stream('../../etc/passwd')).rejects.toThrow(/invalid storage key/);
    await expect(store.size('not-a-key')).rejects.toThrow(/invalid storage key/);
  });
});

describe('a store that cannot be reached', () => {
  it('answers 503 with Retry-After, and no headers of the image that never came', async () => {
    // A port nothing listens on: the connection is refused.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const dir = await mkdtemp(join(tmpdir(), 'velro-test-s3-data-'));
    const d = await startTestApp({
      databaseUrl: fx.db.url,
      env: { ...s3.env, S3_ENDPOINT: `http://127.0.0.1:${port}`, MEDIA_URL_TTL_SECONDS: String(TTL_SECONDS) },
      dataDir: dir,
    });
    try {
      const [url] = (await mediaUrls(d, owner, generationId)) as [MediaUrl];
      for (const headers of [{}, { range: 'bytes=0-9' }] as Record<string, string>[]) {
        const res = await d.app.inject({ method: 'GET', url: url.url, headers });
        expect(res.statusCode, JSON.stringify(headers)).toBe(503);
        expect(res.headers['retry-after']).toBe('2');
        expect(res.json().error.code).toBe('service_unavailable');
        expect(res.headers.etag).toBeUndefined();
        expect(res.headers['content-range']).toBeUndefined();
        expect(String(res.headers['content-type'])).toMatch(/^application\/json/);
      }
      // HEAD is answered from the media row alone: the store is not asked
      const head = await d.app.inject({ method: 'HEAD', url: url.url });
      expect(head.statusCode).toBe(200);
      expect(head.headers['content-length']).toBe(String(url.bytes));
      // the checks still come first: a tampered token is 403 whether or not the store is up
      const bad = await d.app.inject({ method: 'GET', url: `${url.url.slice(0, -3)}AAA` });
      expect(bad.statusCode).toBe(403);
    } finally {
      await d.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a store that is down while a worker renders', () => {
  it('the upload fails, the job is retried, and it completes into the bucket once the store is back', async () => {
    // A bucket and a database of its own: no other instance's worker may take the job.
    const store = await startS3Server();
    const ownDb = await createTestDatabase();
    const dir = await mkdtemp(join(tmpdir(), 'velro-test-s3-data-'));
    let e: TestApp | undefined;
    try {
      await store.stop();
      e = await startTestApp({
        databaseUrl: ownDb.url,
        worker: true,
        env: { ...store.env, JOB_RETRY_DELAY_SECONDS: '1', JOB_RETRY_LIMIT: '10' },
        dataDir: dir,
      });
      const user = await signUp(e.app);
      const created = await callApi(e, user, 'POST', '/generations', {
        model_id: 'velro-sketch',
        prompt: 'a harbour while the store is down',
        parameters: { width: 96, height: 64, steps: 2 },
      });
      expect(created.statusCode, created.body).toBe(202);
      const id = created.json().id as string;
      const row = async () =>
        (
          await e!.pools.pg.authorization.query<{ status: string; attempt: number; error: string | null }>(
            'SELECT status, attempt, error FROM generations WHERE id = $1',
            [id],
          )
        ).rows[0]!;

      // the render succeeds, the upload cannot: the attempt fails and the job goes back to the queue
      const failed = await until(
        async () => ((await row()).error?.startsWith('attempt 1 failed') ? row() : undefined),
        60_000,
        'the first attempt to fail on the upload',
        100,
      );
      expect(['pending', 'processing']).toContain(failed.status);
      expect(store.puts).toEqual([]);

      await store.start();
      const done = await until(
        async () => {
          const current = await row();
          return current.status === 'completed' || current.status === 'failed' ? current : undefined;
        },
        90_000,
        'the generation to end once the store is back',
        100,
      );
      expect(done.status).toBe('completed');
      expect(done.attempt).toBeGreaterThanOrEqual(2);

      const [url] = (await mediaUrls(e, user, id)) as [MediaUrl];
      const storedKey = (
        await e.pools.pg.authorization.query<{ storage_key: string }>(
          'SELECT storage_key FROM media WHERE id = $1',
          [url.media_id],
        )
      ).rows[0]!.storage_key;
      expect(store.puts).toContain(storedKey);
      const res = await e.app.inject({ method: 'GET', url: url.url });
      expect(res.statusCode).toBe(200);
      const object = await store.client.send(new GetObjectCommand({ Bucket: store.bucket, Key: storedKey }));
      expect(res.rawPayload.equals(Buffer.from(await object.Body!.transformToByteArray()))).toBe(true);
    } finally {
      await e?.close();
      await ownDb.drop();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
