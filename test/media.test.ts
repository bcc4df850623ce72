import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { MediaSigner } from '../src/modules/media/signing.js';
import { bearer, errorOf, type SignedUp, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const TTL_SECONDS = 600;

/** Added to the real time on the app's clock; the expiry tests move it and put it back. */
let clockOffsetMs = 0;

const fx = useTestApp({
  worker: true,
  listen: true,
  env: { MEDIA_URL_TTL_SECONDS: String(TTL_SECONDS) },
  now: () => Date.now() + clockOffsetMs,
});
interface MediaUrl {
  media_id: string;
  url: string;
  mime: string;
  width: number;
  height: number;
  bytes: number;
  expires_at: string;
}

/** Reads the generation's Server-Sent Events until the stream ends (a terminal state); the last status. */
async function waitForEnd(who: SignedUp, id: string): Promise<string> {
  const res = await fetch(`${fx.baseUrl}/api/v1/generations/${id}/events`, {
    headers: bearer(who.accessToken),
    signal: AbortSignal.timeout(20_000),
  });
  expect(res.status).toBe(200);
  const events = (await res.text())
    .split('\n\n')
    .map((block) => block.split('\n').find((line) => line.startsWith('data: ')))
    .filter((line): line is string => line !== undefined)
    .map((line) => JSON.parse(line.slice(6)) as { status: string });
  return events.at(-1)?.status ?? 'none';
}

/** Creates a small generation, waits until it is completed and returns its id. */
async function completedGeneration(who: SignedUp, prompt: string, projectId?: string): Promise<string> {
  const res = await fx.call(who, 'POST', '/generations', {
    model_id: 'velro-sketch',
    prompt,
    parameters: { width: 96, height: 64, steps: 2 },
    ...(projectId ? { project_id: projectId } : {}),
  });
  expect(res.statusCode, res.body).toBe(202);
  const id = res.json().id as string;
  expect(await waitForEnd(who, id)).toBe('completed');
  return id;
}

async function mediaUrls(who: SignedUp, id: string): Promise<MediaUrl[]> {
  const res = await fx.call(who, 'GET', `/generations/${id}/media-urls`);
  expect(res.statusCode, res.body).toBe(200);
  const items = res.json().items as MediaUrl[];
  expect(items.length).toBeGreaterThanOrEqual(1);
  return items;
}

/** Fetches a media path over real HTTP, with no Authorization header at all. */
const fetchMedia = (path: string, headers: Record<string, string> = {}) =>
  fetch(`${fx.baseUrl}${path}`, { headers, signal: AbortSignal.timeout(10_000) });

/** The error envelope of a fetch answer: its code, after checking the shape. */
async function codeOf(res: Response): Promise<string> {
  const body = (await res.json()) as { error?: { code?: unknown; request_id?: unknown } };
  expect(typeof body.error?.request_id).toBe('string');
  expect(res.headers.get('x-request-id')).toBe(body.error?.request_id);
  return String(body.error?.code);
}

const tokenOf = (url: string) => url.slice('/api/v1/media/'.length);

let owner: SignedUp;
let generationId: string;
let media: MediaUrl;
let full: Buffer;

beforeAll(async () => {
  owner = await signUp(fx.app);
  generationId = await completedGeneration(owner, 'a quiet harbour at noon');
  [media] = (await mediaUrls(owner, generationId)) as [MediaUrl];
  const res = await fetchMedia(media.url);
  expect(res.status).toBe(200);
  full = Buffer.from(await res.arrayBuffer());
});

describe('a signed media URL', () => {
  it('is served without an Authorization header, with a content ETag and private caching within the TTL', async () => {
    expect(media).toMatchObject({ mime: 'image/png', width: 96, height: 64 });
    expect(media.url).toMatch(/^\/api\/v1\/media\/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    const expiresIn = (Date.parse(media.expires_at) - Date.now()) / 1000;
    expect(expiresIn).toBeGreaterThan(TTL_SECONDS - 30);
    expect(expiresIn).toBeLessThanOrEqual(TTL_SECONDS);

    const res = await fetchMedia(media.url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(bytes.length).toBe(media.bytes);
    expect(bytes.equals(full)).toBe(true);
    expect(bytes.subarray(1, 4).toString('latin1')).toBe('PNG');
    expect(res.headers.get('content-length')).toBe(String(media.bytes));
    expect(res.headers.get('accept-ranges')).toBe('bytes');

    const sha256 = createHash('sha256').update(bytes).digest('hex');
    expect(res.headers.get('etag')).toBe(`"${sha256}"`);
    const row = await fx.sql.query<{ sha256: string }>('SELECT sha256 FROM media WHERE id = $1', [
      media.media_id,
    ]);
    expect(row.rows[0]?.sha256).toBe(sha256);

    const cacheControl = res.headers.get('cache-control') ?? '';
    const match = /^private, max-age=(\d+)$/.exec(cacheControl);
    expect(match, cacheControl).not.toBeNull();
    const maxAge = Number(match![1]);
    expect(maxAge).toBeGreaterThan(0);
    expect(maxAge).toBeLessThanOrEqual(TTL_SECONDS);
  });

  it('answers If-None-Match with the ETag by 304 and no body; another ETag gets the bytes', async () => {
    const etag = `"${createHash('sha256').update(full).digest('hex')}"`;
    const cached = await fetchMedia(media.url, { 'if-none-match': etag });
    expect(cached.status).toBe(304);
    expect(cached.headers.get('etag')).toBe(etag);
    expect((await cached.arrayBuffer()).byteLength).toBe(0);

    const listed = await fetchMedia(media.url, { 'if-none-match': `"other", ${etag}` });
    expect(listed.status).toBe(304);
    await listed.arrayBuffer();

    const stale = await fetchMedia(media.url, { 'if-none-match': '"0000"' });
    expect(stale.status).toBe(200);
    expect(Buffer.from(await stale.arrayBuffer()).equals(full)).toBe(true);
  });

  it('serves byte ranges: a prefix, a suffix, and refuses unsatisfiable or malformed ranges with 416', async () => {
    const size = full.length;
    expect(size).toBeGreaterThan(100);

    const head = await fetchMedia(media.url, { range: 'bytes=0-99' });
    expect(head.status).toBe(206);
    expect(head.headers.get('content-range')).toBe(`bytes 0-99/${size}`);
    expect(head.headers.get('content-length')).toBe('100');
    const first = Buffer.from(await head.arrayBuffer());
    expect(first.length).toBe(100);
    expect(first.equals(full.subarray(0, 100))).toBe(true);

    const middle = await fetchMedia(media.url, { range: 'bytes=10-19' });
    expect(middle.status).toBe(206);
    expect(Buffer.from(await middle.arrayBuffer()).equals(full.subarray(10, 20))).toBe(true);

    const tail = await fetchMedia(media.url, { range: 'bytes=-10' });
    expect(tail.status).toBe(206);
    expect(tail.headers.get('content-range')).toBe(`bytes ${size - 10}-${size - 1}/${size}`);
    const last = Buffer.from(await tail.arrayBuffer());
    expect(last.equals(full.subarray(size - 10))).toBe(true);

    const beyond = await fetchMedia(media.url, { range: `bytes=${size}-` });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${size}`);
    expect(await codeOf(beyond)).toBe('range_not_satisfiable');

    const malformed = await fetchMedia(media.url, { range: 'bytes=abc' });
    expect(malformed.status).toBe(416);
    expect(malformed.headers.get('content-range')).toBe(`bytes */${size}`);
    expect(await codeOf(malformed)).toBe('range_not_satisfiable');
  });
});

describe('tampered tokens', () => {
  const flip = (c: string) => (c === 'A' ? 'B' : 'A');

  it('refuses a flipped signature character, a swapped payload, truncation and garbage with 403', async () => {
    const token = tokenOf(media.url);
    const [payload, mac] = token.split('.') as [string, string];
    // the signature's first character (its last one has padding bits a decoder may ignore)
    const flippedMac = `${payload}.${flip(mac[0]!)}${mac.slice(1)}`;

    // another media's id in the payload, same expiry, the old signature kept
    const otherId = await completedGeneration(owner, 'another harbour, at night');
    const [other] = (await mediaUrls(owner, otherId)) as [MediaUrl];
    expect(other.media_id).not.toBe(media.media_id);
    const bytes = Buffer.from(payload, 'base64url');
    expect(bytes.length).toBe(24);
    Buffer.from(other.media_id.replace(/-/g, ''), 'hex').copy(bytes, 0);
    const swapped = `${bytes.toString('base64url')}.${mac}`;
    // and the same payload with a later expiry, the old signature kept
    const later = Buffer.from(payload, 'base64url');
    later.writeBigUInt64BE(later.readBigUInt64BE(16) + 86_400n, 16);
    const extended = `${later.toString('base64url')}.${mac}`;

    // the other URL itself is fine: the swap is what breaks it
    expect((await fetchMedia(other.url)).status).toBe(200);

    const cases: [string, string][] = [
      ['flipped signature', flippedMac],
      ['flipped payload', `${flip(payload[0]!)}${payload.slice(1)}.${mac}`],
      ['swapped media id', swapped],
      ['extended expiry', extended],
      ['truncated', token.slice(0, -5)],
      ['no signature', `${payload}.`],
      ['no dot', `${payload}${mac}`],
      ['garbage', 'not-a-token'],
      ['garbage with a dot', 'abc.def'],
    ];
    for (const [name, bad] of cases) {
      const res = await fetchMedia(`/api/v1/media/${bad}`);
      expect(res.status, name).toBe(403);
      expect(await codeOf(res), name).toBe('invalid_signature');
      expect(res.headers.get('etag'), name).toBeNull();
    }
  });

  it('refuses a well-formed token signed with another secret (403)', async () => {
    const foreign = new MediaSigner(new TextEncoder().encode('some-other-secret-0123456789abcdef0123'));
    const { token } = foreign.sign(media.media_id, TTL_SECONDS);
    const res = await fetchMedia(`/api/v1/media/${token}`);
    expect(res.status).toBe(403);
    expect(await codeOf(res)).toBe('invalid_signature');

    // the same media signed with the app's own secret works: only the key differs
    const own = new MediaSigner(new TextEncoder().encode(fx.t.config.MEDIA_SIGNING_SECRET));
    const good = await fetchMedia(`/api/v1/media/${own.sign(media.media_id, TTL_SECONDS).token}`);
    expect(good.status).toBe(200);
    await good.arrayBuffer();
  });
});

describe('expiry', () => {
  it('works until MEDIA_URL_TTL_SECONDS have passed on the app clock, then answers 410', async () => {
    const [fresh] = (await mediaUrls(owner, generationId)) as [MediaUrl];
    try {
      clockOffsetMs = (TTL_SECONDS - 60) * 1000;
      const before = await fetchMedia(fresh.url);
      expect(before.status).toBe(200);
      expect(Buffer.from(await before.arrayBuffer()).equals(full)).toBe(true);

      clockOffsetMs = (TTL_SECONDS + 1) * 1000;
      const after = await fetchMedia(fresh.url);
      expect(after.status).toBe(410);
      expect(await codeOf(after)).toBe('expired');
      // expiry is decided before the bytes or their ETag are looked at
      expect(after.headers.get('etag')).toBeNull();
      const ranged = await fetchMedia(fresh.url, { range: 'bytes=0-9' });
      expect(ranged.status).toBe(410);
      await ranged.arrayBuffer();
    } finally {
      clockOffsetMs = 0;
    }
    // back on the real clock the URL is valid again: the expiry is in the token, not in state
    const again = await fetchMedia(fresh.url);
    expect(again.status).toBe(200);
    await again.arrayBuffer();
  });

  it('a URL fetched later on the clock expires later', async () => {
    try {
      // (less than the access token's 15 minutes ahead, so the bearer token still works)
      clockOffsetMs = (TTL_SECONDS + 60) * 1000;
      const [later] = (await mediaUrls(owner, generationId)) as [MediaUrl];
      expect(Date.parse(later.expires_at)).toBeGreaterThan(Date.now() + 2 * TTL_SECONDS * 1000);
      const res = await fetchMedia(later.url);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    } finally {
      clockOffsetMs = 0;
    }
  });

  it('Cache-Control max-age never exceeds what is left of the URL on the app clock', async () => {
    const [fresh] = (await mediaUrls(owner, generationId)) as [MediaUrl];
    try {
      clockOffsetMs = (TTL_SECONDS - 60) * 1000;
      const res = await fetchMedia(fresh.url);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
      const maxAge = Number(/max-age=(\d+)/.exec(res.headers.get('cache-control') ?? '')?.[1]);
      expect(maxAge).toBeLessThanOrEqual(60);
    } finally {
      clockOffsetMs = 0;
    }
  });
});

describe('deletion', () => {
  it('a deleted generation’s previously issued URL answers 404', async () => {
    const id = await completedGeneration(owner, 'to be deleted soon');
    const [doomed] = (await mediaUrls(owner, id)) as [MediaUrl];
    const ok = await fetchMedia(doomed.url);
    expect(ok.status).toBe(200);
    await ok.arrayBuffer();

    const deleted = await fx.call(owner, 'DELETE', `/generations/${id}`);
    expect(deleted.statusCode).toBe(204);
    const variants: Record<string, string>[] = [
      {},
      { range: 'bytes=0-9' },
      { 'if-none-match': ok.headers.get('etag') ?? '' },
    ];
    for (const headers of variants) {
      const gone = await fetchMedia(doomed.url, headers);
      expect(gone.status, JSON.stringify(headers)).toBe(404);
      expect(await codeOf(gone)).toBe('not_found');
    }
    expect((await fx.call(owner, 'GET', `/generations/${id}/media-urls`)).statusCode).toBe(404);
    // other media are untouched
    const still = await fetchMedia(media.url);
    expect(still.status).toBe(200);
    await still.arrayBuffer();
  });

  it('a URL of a generation in a soft-deleted project answers 404', async () => {
    const project = await fx.call(owner, 'POST', '/projects', { name: 'Short-lived' });
    expect(project.statusCode, project.body).toBe(201);
    const projectId = project.json().id as string;
    const id = await completedGeneration(owner, 'inside a project', projectId);
    const [inside] = (await mediaUrls(owner, id)) as [MediaUrl];
    const ok = await fetchMedia(inside.url);
    expect(ok.status).toBe(200);
    await ok.arrayBuffer();

    const removed = await fx.call(owner, 'DELETE', `/projects/${projectId}`);
    expect(removed.statusCode, removed.body).toBe(204);
    const gone = await fetchMedia(inside.url);
    expect(gone.status).toBe(404);
    expect(await codeOf(gone)).toBe('not_found');
    // the generation row itself is not deleted: only its project is
    const row = await fx.sql.query<{ deleted_at: Date | null }>(
      'SELECT deleted_at FROM generations WHERE id = $1',
      [id],
    );
    expect(row.rows[0]?.deleted_at).toBeNull();
  });
});

describe('who may ask for media URLs', () => {
  it('a stranger gets 404; a viewer of the team project gets 200 (download permission)', async () => {
    const [teamOwner, viewer, stranger] = await Promise.all([signUp(fx.app), signUp(fx.app), signUp(fx.app)]);
    const team = await fx.call(teamOwner, 'POST', '/teams', { name: 'Lighthouse keepers' });
    expect(team.statusCode, team.body).toBe(201);
    const teamId = team.json().id as string;
    const member = await fx.call(teamOwner, 'POST', `/teams/${teamId}/members`, {
      email: viewer.email,
      role: 'viewer',
    });
    expect(member.statusCode, member.body).toBe(201);
    const project = await fx.call(teamOwner, 'POST', '/projects', {
      name: 'Shared',
      team_id: teamId,
      visibility: 'team',
    });
    expect(project.statusCode, project.body).toBe(201);
    const id = await completedGeneration(teamOwner, 'a shared harbour', project.json().id);

    const denied = await fx.call(stranger, 'GET', `/generations/${id}/media-urls`);
    expect(denied.statusCode).toBe(404);
    expect(errorOf(denied).code).toBe('not_found');
    // and the stranger's answer is the same as for an id that does not exist
    const missing = await fx.call(
      stranger,
      'GET',
      '/generations/00000000-0000-4000-8000-000000000000/media-urls',
    );
    expect(missing.statusCode).toBe(404);
    expect(errorOf(missing).code).toBe(errorOf(denied).code);

    const allowed = await fx.call(viewer, 'GET', `/generations/${id}/media-urls`);
    expect(allowed.statusCode, allowed.body).toBe(200);
    const [shared] = allowed.json().items as [MediaUrl];
    const res = await fetchMedia(shared.url);
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).length).toBe(shared.bytes);

    const permissions = await fx.call(viewer, 'GET', `/generations/${id}/authorize`);
    expect(permissions.json()).toMatchObject({ can_view: true, can_download: true, can_edit: false });
  });
});
