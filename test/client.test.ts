import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { example } from '../client/example.js';
import {
  CONSISTENCY_HEADER,
  createVelroClient,
  type GenerationEvent,
  readServerSentEvents,
  type Tokens,
  unwrap,
  VelroApiError,
} from '../client/index.js';
import { useTestApp } from './helpers/fixture.js';

/** The server's clock: tests move it to expire access tokens. */
let offsetMs = 0;

const email = () => `client-${randomBytes(4).toString('hex')}@example.com`;
const password = 'correct horse battery';

/** The requests a client sent, with the headers they carried, and the answers' statuses. */
function recorder() {
  const sent: { method: string; path: string; headers: Headers; status: number }[] = [];
  const fetch = async (request: Request) => {
    const headers = new Headers(request.headers);
    const response = await globalThis.fetch(request);
    sent.push({
      method: request.method,
      path: new URL(request.url).pathname,
      headers,
      status: response.status,
    });
    return response;
  };
  return { sent, fetch };
}

const fx = useTestApp({
  worker: true,
  listen: true,
  now: () => Date.now() + offsetMs,
  // Slow enough that a generation reports progress steps and can be cancelled midway.
  env: { LOCAL_PROVIDER_STEP_DELAY_MS: '30' },
});

describe('the client README example', () => {
  it('is example.ts, word for word', async () => {
    const readme = await readFile(new URL('../client/README.md', import.meta.url), 'utf8');
    const block = /<!-- example:start -->\n```ts\n([\s\S]*?)```\n<!-- example:end -->/.exec(readme)?.[1];
    const source = await readFile(new URL('../client/example.ts', import.meta.url), 'utf8');
    expect(block).toBe(source.replace("from './index.js';", "from '@velro/client';"));
  });

  it('runs against a real server: register → project → team → generation → progress → media URL', async () => {
    const result = await example(fx.baseUrl, email());

    expect(result.user.credits_balance).toBe(1000);
    expect(result.tokens?.accessToken).toBeTruthy();
    expect(result.project.visibility).toBe('private');
    expect(result.team.owner_id).toBe(result.user.id);
    expect(result.generation).toMatchObject({ status: 'pending', project_id: result.project.id });

    const statuses = result.events.map((e) => e.status);
    expect(statuses.at(-1)).toBe('completed');
    expect(result.events.at(-1)?.progress).toBe(100);
    for (let i = 1; i < result.events.length; i++) {
      const [before, after] = [result.events[i - 1] as GenerationEvent, result.events[i] as GenerationEvent];
      if (before.status === after.status) expect(after.progress).toBeGreaterThan(before.progress);
    }

    expect(result.media).toMatchObject({ mime: 'image/png', width: 256, height: 256 });
    expect(result.media.url).toMatch(/^\/api\/v1\/media\//);
    expect(result.image.status).toBe(200);
    expect(result.image.headers.get('content-type')).toBe('image/png');
    const bytes = Buffer.from(await result.image.arrayBuffer());
    expect(bytes.length).toBe(result.media.bytes);
    expect(bytes.subarray(1, 4).toString('ascii')).toBe('PNG');
  });
});

describe('sessions', () => {
  it('refreshes an expired access token once, retries, and hands the new pair to onTokens', async () => {
    const saved: (Tokens | null)[] = [];
    const { sent, fetch } = recorder();
    const client = createVelroClient({
      baseUrl: fx.baseUrl,
      fetch,
      onTokens: (tokens) => void saved.push(tokens),
    });
    unwrap(await client.POST('/api/v1/auth/register', { body: { email: email(), password } }));
    expect(saved).toHaveLength(1);
    const first = saved[0] as Tokens;

    offsetMs += 16 * 60_000; // past the 15-minute access token
    try {
      // Three requests at once: one refresh between them, each answered.
      const [me, balance, generations] = await Promise.all([
        client.GET('/api/v1/auth/me'),
        client.GET('/api/v1/credits/balance'),
        client.GET('/api/v1/generations'),
      ]);
      expect(unwrap(me).email).toContain('@example.com');
      expect(unwrap(balance).credits_balance).toBe(1000);
      expect(unwrap(generations).items).toEqual([]);
    } finally {
      offsetMs -= 16 * 60_000;
    }

    expect(sent.filter((r) => r.path === '/api/v1/auth/refresh')).toHaveLength(1);
    expect(sent.filter((r) => r.status === 401).length).toBeGreaterThanOrEqual(1);
    expect(saved).toHaveLength(2);
    const second = saved[1] as Tokens;
    expect(second.refreshToken).not.toBe(first.refreshToken);
    expect(second.accessToken).not.toBe(first.accessToken);
    expect(client.tokens).toEqual(second);

    // The rotated-out refresh token is spent: the server treats a second use as theft and revokes
    // the session, the client's newest refresh token included.
    const refreshWith = (refreshToken: string) =>
      globalThis.fetch(`${fx.baseUrl}/api/v1/auth/refresh`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ refresh_token: refreshToken }),
      });
    const replay = await refreshWith(first.refreshToken);
    expect(replay.status).toBe(401);
    expect(((await replay.json()) as { error: { code: string } }).error.code).toBe('refresh_token_reused');
    expect((await refreshWith(second.refreshToken)).status).toBe(401);
  });

  it('gives up when the refresh is refused: the 401 comes back and onTokens hears null', async () => {
    const saved: (Tokens | null)[] = [];
    const client = createVelroClient({ baseUrl: fx.baseUrl, onTokens: (tokens) => void saved.push(tokens) });
    unwrap(await client.POST('/api/v1/auth/register', { body: { email: email(), password } }));
    const tokens = client.tokens as Tokens;
    // Another device signs everyone out; this client's session is over.
    const other = createVelroClient({ baseUrl: fx.baseUrl, tokens });
    unwrap(await other.POST('/api/v1/auth/logout-all'));

    const result = await client.GET('/api/v1/auth/me');
    expect(result.response.status).toBe(401);
    expect(() => unwrap(result)).toThrow(VelroApiError);
    expect(saved.at(-1)).toBeNull();
    expect(client.tokens).toBeNull();
  });

  it('sends a service key as the bearer token and never tries to refresh it', async () => {
    const owner = createVelroClient({ baseUrl: fx.baseUrl });
    unwrap(await owner.POST('/api/v1/auth/register', { body: { email: email(), password } }));
    const key = unwrap(
      await owner.POST('/api/v1/service-keys', { body: { name: 'ci', scopes: ['generations:read'] } }),
    );
    const { sent, fetch } = recorder();
    const client = createVelroClient({ baseUrl: fx.baseUrl, serviceKey: key.key, fetch });
    expect(unwrap(await client.GET('/api/v1/generations')).items).toEqual([]);
    expect(sent[0]?.headers.get('authorization')).toBe(`Bearer ${key.key}`);

    unwrap(await owner.DELETE('/api/v1/service-keys/{id}', { params: { path: { id: key.id } } }));
    // The owner's consistency token makes the revocation visible at once to this client too.
    const revoked = createVelroClient({
      baseUrl: fx.baseUrl,
      serviceKey: key.key,
      fetch,
      consistencyToken: owner.consistencyToken,
    });
    const refused = await revoked.GET('/api/v1/generations');
    expect(refused.response.status).toBe(401);
    expect(sent.some((r) => r.path === '/api/v1/auth/refresh')).toBe(false);
  });
});

describe('consistency tokens', () => {
  it('sends the highest token seen on every later request', async () => {
    const { sent, fetch } = recorder();
    const client = createVelroClient({ baseUrl: fx.baseUrl, fetch });
    unwrap(await client.POST('/api/v1/auth/register', { body: { email: email(), password } }));
    expect(client.consistencyToken).toBe(0);
    expect(sent[0]?.headers.has(CONSISTENCY_HEADER)).toBe(false);

    const team = unwrap(await client.POST('/api/v1/teams', { body: { name: 'Consistency' } }));
    const afterTeam = client.consistencyToken;
    expect(afterTeam).toBeGreaterThan(0);
    unwrap(await client.GET('/api/v1/teams/{id}', { params: { path: { id: team.id } } }));
    expect(sent.at(-1)?.headers.get(CONSISTENCY_HEADER)).toBe(String(afterTeam));

    const project = unwrap(
      await client.POST('/api/v1/projects', { body: { name: 'p', team_id: team.id, visibility: 'team' } }),
    );
    // Making it public changes who may see it: a new revision.
    unwrap(
      await client.PATCH('/api/v1/projects/{id}', {
        params: { path: { id: project.id } },
        body: { visibility: 'public' },
      }),
    );
    const afterProject = client.consistencyToken;
    expect(afterProject).toBeGreaterThan(afterTeam);
    unwrap(await client.GET('/api/v1/projects'));
    expect(sent.at(-1)?.headers.get(CONSISTENCY_HEADER)).toBe(String(afterProject));
  });

  it('never goes back to a lower token', async () => {
    const seen: (string | null)[] = [];
    const answers = [7, 3, null];
    const client = createVelroClient({
      baseUrl: 'http://velro.invalid',
      fetch: async (request) => {
        seen.push(request.headers.get(CONSISTENCY_HEADER));
        const token = answers.shift();
        return Response.json(
          { items: [], next_cursor: null },
          {
            headers: token ? { [CONSISTENCY_HEADER]: String(token) } : {},
          },
        );
      },
    });
    await client.GET('/api/v1/projects');
    await client.GET('/api/v1/projects');
    await client.GET('/api/v1/projects');
    expect(seen).toEqual([null, '7', '7']);
    expect(client.consistencyToken).toBe(7);
  });
});

describe('generation events', () => {
  it('ends with cancelled when the generation is cancelled, and 404s an unknown one', async () => {
    const client = createVelroClient({ baseUrl: fx.baseUrl });
    unwrap(await client.POST('/api/v1/auth/register', { body: { email: email(), password } }));
    // 20 steps of 30 ms: cancelled long before it could complete.
    const generation = unwrap(
      await client.POST('/api/v1/generations', {
        body: { model_id: 'velro-sketch', prompt: 'to be cancelled', parameters: { steps: 20 } },
      }),
    );
    const events: GenerationEvent[] = [];
    for await (const event of client.generationEvents(generation.id)) {
      events.push(event);
      if (events.length === 1) {
        unwrap(
          await client.POST('/api/v1/generations/{id}/cancel', { params: { path: { id: generation.id } } }),
        );
      }
    }
    expect(['pending', 'processing']).toContain(events[0]?.status);
    expect(events.at(-1)?.status).toBe('cancelled');
    expect(events.map((e) => e.status)).not.toContain('completed');

    const missing = client.generationEvents('00000000-0000-4000-8000-000000000000');
    await expect(missing.next()).rejects.toMatchObject({
      name: 'VelroApiError',
      status: 404,
      code: 'not_found',
    });
  });

  it('stops when the consumer breaks out of the loop, and when its signal aborts', async () => {
    const client = createVelroClient({ baseUrl: fx.baseUrl });
    unwrap(await client.POST('/api/v1/auth/register', { body: { email: email(), password } }));
    const generation = unwrap(
      await client.POST('/api/v1/generations', {
        body: { model_id: 'velro-sketch', prompt: 'watched', parameters: { steps: 20 } },
      }),
    );
    let first: GenerationEvent | undefined;
    for await (const event of client.generationEvents(generation.id)) {
      first = event;
      break;
    }
    expect(['pending', 'processing']).toContain(first?.status);
    const controller = new AbortController();
    const seen: GenerationEvent[] = [];
    const consumed = (async () => {
      for await (const event of client.generationEvents(generation.id, { signal: controller.signal })) {
        seen.push(event);
        controller.abort();
      }
    })();
    await expect(consumed).rejects.toThrow();
    expect(seen).toHaveLength(1);
  });

  it('parses text/event-stream in any chunking: CRLF, comments, multi-line data, split lines', async () => {
    const text =
      ': keep-alive\r\n\r\nid: 1\r\nevent: status\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: other\ndata: x\n\ndata: plain\r\rdata: cut';
    const bytes = new TextEncoder().encode(text);
    for (const size of [1, 2, 3, 7, bytes.length]) {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          for (let i = 0; i < bytes.length; i += size) controller.enqueue(bytes.slice(i, i + size));
          controller.close();
        },
      });
      const events = [];
      for await (const event of readServerSentEvents(body)) events.push(event);
      expect(events, `chunks of ${size}`).toEqual([
        { event: 'status', data: '{"a":\n1}', id: '1' },
        { event: 'other', data: 'x', id: '1' },
        { event: 'message', data: 'plain', id: '1' },
      ]);
    }
  });

  it('decodes a character whose bytes arrive in different chunks', async () => {
    const bytes = new TextEncoder().encode('event: status\ndata: {"prompt":"phare à l’aube 🌅"}\n\n');
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const byte of bytes) controller.enqueue(Uint8Array.of(byte));
        controller.close();
      },
    });
    const events = [];
    for await (const event of readServerSentEvents(body)) events.push(event);
    expect(events).toEqual([{ event: 'status', data: '{"prompt":"phare à l’aube 🌅"}', id: null }]);
  });
});
