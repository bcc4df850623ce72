import { EventEmitter, once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  createHttpProvider,
  type HttpProvider,
  type HttpProviderOptions,
  ProviderUnavailableError,
  TransientProviderError,
} from './http.js';
import { type GeneratedMedia, type GenerationJob, PermanentProviderError } from './types.js';

const KEY = 'sk-test-SECRET-7f3a9c1e5b';
const PNG = Buffer.concat([
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  Buffer.from('not really the rest of a png'),
]);

/** Knobs of the fake remote; reset before every test. */
interface RemoteBehaviour {
  /** Progress sent by the polls before the final one, in order. */
  progress: number[];
  outcome: 'succeeded' | 'failed';
  failure: string;
  /** Answer the next N submits with 500. */
  submitErrors: number;
  retryAfter: string | null;
  /** Answer every submit with this status and `{ error: submitError }`. */
  submitStatus: number | null;
  submitError: string;
  /** Answer the next N submits / polls with a body that is not JSON. */
  malformedSubmits: number;
  malformedPolls: number;
  hangSubmits: boolean;
  hangPolls: boolean;
}

const defaults = (): RemoteBehaviour => ({
  progress: [0, 25, 50, 75],
  outcome: 'succeeded',
  failure: 'content policy violation',
  submitErrors: 0,
  retryAfter: null,
  submitStatus: null,
  submitError: 'bad request',
  malformedSubmits: 0,
  malformedPolls: 0,
  hangSubmits: false,
  hangPolls: false,
});

interface Seen {
  method: string;
  path: string;
  authorization: string | undefined;
  idempotencyKey: string | undefined;
  body: string;
  /** Resolves when the connection closes, answered or not — for a hung request, when the client gives up. */
  closed: Promise<void>;
}

let server: Server;
let baseUrl: string;
let remote: RemoteBehaviour;
const seen: Seen[] = [];
const arrivals = new EventEmitter();
const polls = new Map<string, number>();
const providers: HttpProvider[] = [];

const posts = () => seen.filter((r) => r.method === 'POST');
const gets = () => seen.filter((r) => r.method === 'GET');

function respond(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

function handle(req: IncomingMessage, res: ServerResponse) {
  const path = req.url ?? '';
  if (req.method === 'POST' && path === '/v1/images') {
    if (remote.hangSubmits) return;
    if (remote.submitStatus !== null) return respond(res, remote.submitStatus, { error: remote.submitError });
    if (remote.submitErrors > 0) {
      remote.submitErrors--;
      const headers: Record<string, string> = remote.retryAfter ? { 'retry-after': remote.retryAfter } : {};
      return respond(res, 500, { error: 'overloaded' }, headers);
    }
    if (remote.malformedSubmits > 0) {
      remote.malformedSubmits--;
      return respond(res, 202, '{"id": "trunc');
    }
    const id = `img_${polls.size + 1}`;
    polls.set(id, 0);
    return respond(res, 202, { id });
  }
  const match = /^\/v1\/images\/([^/]+)$/.exec(path);
  if (req.method === 'GET' && match) {
    const id = decodeURIComponent(match[1]!);
    const done = polls.get(id);
    if (done === undefined) return respond(res, 404, { error: 'no such job' });
    if (remote.hangPolls) return;
    if (remote.malformedPolls > 0) {
      remote.malformedPolls--;
      return respond(res, 200, { status: 'finished?', progress: 'lots' });
    }
    polls.set(id, done + 1);
    if (done < remote.progress.length) {
      const progress = remote.progress[done]!;
      return respond(res, 200, { status: progress === 0 ? 'queued' : 'running', progress });
    }
    if (remote.outcome === 'failed') return respond(res, 200, { status: 'failed', error: remote.failure });
    return respond(res, 200, {
      status: 'succeeded',
      progress: 100,
      images: [{ mime: 'image/png', width: 64, height: 32, data_base64: PNG.toString('base64') }],
    });
  }
  respond(res, 404, { error: 'not found' });
}

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => {
      body += chunk;
    });
    req.on('end', () => {
      const record: Seen = {
        method: req.method ?? '',
        path: req.url ?? '',
        authorization: req.headers.authorization,
        idempotencyKey: req.headers['idempotency-key'] as string | undefined,
        body,
        closed: new Promise((resolve) => res.on('close', () => resolve())),
      };
      seen.push(record);
      arrivals.emit('request', record);
      handle(req, res);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  server.close();
  await once(server, 'close');
});

beforeEach(() => {
  remote = defaults();
  seen.length = 0;
});

afterEach(() => {
  // Connections stay up: killing the client's pooled keep-alive sockets here would make the next test's
  // first request fail with a reset and use up a retry.
  for (const provider of providers.splice(0)) provider.close();
});

function makeProvider(options: Partial<HttpProviderOptions> = {}): HttpProvider {
  const provider = createHttpProvider({
    baseUrl,
    apiKey: KEY,
    requestTimeoutMs: 1_000,
    pollIntervalMs: 5,
    baseDelayMs: 1,
    ...options,
    breaker: { resetTimeoutMs: 300, ...options.breaker },
  });
  providers.push(provider);
  return provider;
}

const job = (overrides: Partial<GenerationJob> = {}): GenerationJob => ({
  generationId: 'gen_1',
  modelId: 'model_1',
  providerModel: 'remote-xl',
  prompt: 'a lighthouse at dusk',
  negativePrompt: 'fog',
  width: 64,
  height: 32,
  seed: 42,
  steps: 20,
  referenceImage: null,
  parameters: {},
  ...overrides,
});

/** The rejection of `promise`, after checking the API key leaked into neither its message nor its stack. */
async function rejection(promise: Promise<unknown>): Promise<Error> {
  const err = await promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Error);
  const error = err as Error;
  expect(error.message).not.toContain(KEY);
  expect(error.stack ?? '').not.toContain(KEY);
  return error;
}

/** The next request the server receives that matches. */
function nextArrival(method: string): Promise<Seen> {
  return new Promise((resolve) => {
    const listener = (record: Seen) => {
      if (record.method !== method) return;
      arrivals.off('request', listener);
      resolve(record);
    };
    arrivals.on('request', listener);
  });
}

/**
 * Runs `scenario` with the global setTimeout/clearTimeout wrapped, and returns how many ref'd timers it
 * created that are still pending when it settles (opossum's rolling-window intervals are unref'd).
 */
async function timersLeftBy(scenario: () => Promise<void>): Promise<number> {
  const pending = new Set<NodeJS.Timeout>();
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const wrapped = (callback: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    const timer = realSet(() => {
      pending.delete(timer);
      callback(...args);
    }, ms);
    pending.add(timer);
    return timer;
  };
  const setSpy = vi
    .spyOn(globalThis, 'setTimeout')
    .mockImplementation(wrapped as unknown as typeof setTimeout);
  const clearSpy = vi.spyOn(globalThis, 'clearTimeout').mockImplementation((timer) => {
    pending.delete(timer as NodeJS.Timeout);
    realClear(timer);
  });
  try {
    await scenario();
  } finally {
    setSpy.mockRestore();
    clearSpy.mockRestore();
  }
  return [...pending].filter((timer) => timer.hasRef()).length;
}

async function waitForState(provider: HttpProvider, state: string, withinMs: number) {
  const until = Date.now() + withinMs;
  while (provider.breakerState() !== state) {
    if (Date.now() > until) throw new Error(`breaker still ${provider.breakerState()}, wanted ${state}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('http provider', () => {
  it('submits the job, polls with progress and returns the decoded images', async () => {
    const provider = makeProvider();
    const progress: number[] = [];
    let media: GeneratedMedia[] = [];
    const leftover = await timersLeftBy(async () => {
      media = await provider.generate(
        job({ referenceImage: { mime: 'image/png', data: PNG } }),
        new AbortController().signal,
        (p) => progress.push(p),
      );
    });
    expect(leftover).toBe(0);

    expect(provider.name).toBe('http');
    expect(media).toEqual([{ mime: 'image/png', width: 64, height: 32, data: PNG }]);
    expect(progress).toEqual([0, 25, 50, 75, 100]);
    expect(posts()).toHaveLength(1);
    expect(gets()).toHaveLength(5);
    expect(gets()[0]!.path).toBe('/v1/images/img_1');
    for (const request of seen) expect(request.authorization).toBe(`Bearer ${KEY}`);
    expect(JSON.parse(posts()[0]!.body)).toEqual({
      model: 'remote-xl',
      prompt: 'a lighthouse at dusk',
      negative_prompt: 'fog',
      width: 64,
      height: 32,
      seed: 42,
      steps: 20,
      reference_image: PNG.toString('base64'),
      reference_image_mime: 'image/png',
    });
  });

  it('keeps reported progress non-decreasing when the remote goes backwards', async () => {
    remote.progress = [10, 60, 40, 60, 90];
    const progress: number[] = [];
    await makeProvider().generate(job(), new AbortController().signal, (p) => progress.push(p));
    expect(progress).toEqual([0, 10, 60, 90, 100]);
  });

  it('turns a failed remote job into a PermanentProviderError carrying the remote reason', async () => {
    remote.outcome = 'failed';
    const provider = makeProvider();
    const err = await rejection(provider.generate(job(), new AbortController().signal, () => {}));
    expect(err).toBeInstanceOf(PermanentProviderError);
    expect(err.message).toBe('content policy violation');
    expect(provider.breakerState()).toBe('closed');
  });

  it('retries 500s, honouring Retry-After, and reuses the idempotency key', async () => {
    remote.submitErrors = 2;
    remote.retryAfter = '0.15';
    const started = Date.now();
    await makeProvider({ retries: 3 }).generate(job(), new AbortController().signal, () => {});
    // Two waits of 150 ms; backoff alone (baseDelayMs 1) would be a few ms.
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(posts()).toHaveLength(3);
    const keys = new Set(posts().map((r) => r.idempotencyKey));
    expect(keys.size).toBe(1);
    expect([...keys][0]).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('gives up after the retry budget with a transient error', async () => {
    remote.submitErrors = 100;
    const err = await rejection(
      makeProvider({ retries: 2 }).generate(job(), new AbortController().signal, () => {}),
    );
    expect(err).toBeInstanceOf(TransientProviderError);
    expect((err as TransientProviderError).status).toBe(500);
    expect(err.message).toContain('overloaded');
    expect(posts()).toHaveLength(3);
  });

  it('treats a hung remote as timeouts, opens the breaker, fails fast, then recovers after the reset timeout', async () => {
    remote.hangSubmits = true;
    const provider = makeProvider({ requestTimeoutMs: 100, retries: 1, breaker: { volumeThreshold: 2 } });

    const first = await rejection(provider.generate(job(), new AbortController().signal, () => {}));
    expect(first).toBeInstanceOf(TransientProviderError);
    expect(first.message).toMatch(/no response within 100 ms/);
    expect(posts()).toHaveLength(2);
    // The client gave up on both: the server sees the connections close.
    await Promise.all(posts().map((r) => r.closed));
    expect(provider.breakerState()).toBe('open');

    const started = performance.now();
    const fast = await rejection(provider.generate(job(), new AbortController().signal, () => {}));
    expect(performance.now() - started).toBeLessThan(50);
    expect(fast.name).toBe('ProviderUnavailableError');
    expect(fast).toBeInstanceOf(ProviderUnavailableError);
    expect(posts()).toHaveLength(2);

    remote.hangSubmits = false;
    await waitForState(provider, 'half_open', 2_000);
    const media = await provider.generate(job(), new AbortController().signal, () => {});
    expect(media).toHaveLength(1);
    expect(provider.breakerState()).toBe('closed');
  });

  it('does not retry a 400 and does not count it against the breaker', async () => {
    remote.submitStatus = 400;
    remote.submitError = 'width must be a multiple of 8';
    const provider = makeProvider({ breaker: { volumeThreshold: 2 } });
    for (let i = 0; i < 4; i++) {
      const err = await rejection(provider.generate(job(), new AbortController().signal, () => {}));
      expect(err).toBeInstanceOf(PermanentProviderError);
      expect(err.message).toBe('POST /v1/images: HTTP 400 — width must be a multiple of 8');
    }
    expect(posts()).toHaveLength(4);
    expect(provider.breakerState()).toBe('closed');
  });

  it('retries 408 and 429 like 5xx', async () => {
    remote.submitStatus = 429;
    const err = await rejection(
      makeProvider({ retries: 1 }).generate(job(), new AbortController().signal, () => {}),
    );
    expect(err).toBeInstanceOf(TransientProviderError);
    expect(posts()).toHaveLength(2);
  });

  it('treats malformed bodies as transient: retried, then surfaced as TransientProviderError', async () => {
    remote.malformedSubmits = 1;
    remote.malformedPolls = 1;
    await makeProvider().generate(job(), new AbortController().signal, () => {});
    expect(posts()).toHaveLength(2);

    remote.malformedPolls = 100;
    const err = await rejection(
      makeProvider({ retries: 2 }).generate(job(), new AbortController().signal, () => {}),
    );
    expect(err).toBeInstanceOf(TransientProviderError);
    expect(err.message).toMatch(/malformed response/);
  });

  it('stops promptly when cancelled between polls, and polls no more', async () => {
    remote.progress = [0, 25, 50, 75, 80, 85, 90, 95];
    const controller = new AbortController();
    const reason = new Error('cancelled by user');
    let sawProgress!: () => void;
    const progressed = new Promise<void>((resolve) => {
      sawProgress = resolve;
    });
    const provider = makeProvider({ pollIntervalMs: 20 });
    const leftover = await timersLeftBy(async () => {
      const pending = provider.generate(job(), controller.signal, (p) => {
        if (p >= 25) sawProgress();
      });
      await progressed;
      const started = performance.now();
      controller.abort(reason);
      await expect(pending).rejects.toBe(reason);
      expect(performance.now() - started).toBeLessThan(50);
    });
    expect(leftover).toBe(0);

    const pollsAtCancel = gets().length;
    // Absence can only be observed by waiting: several poll intervals.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(gets()).toHaveLength(pollsAtCancel);
  });

  it('aborts an in-flight request when cancelled', async () => {
    remote.hangPolls = true;
    const controller = new AbortController();
    const pending = makeProvider().generate(job(), controller.signal, () => {});
    const poll = await nextArrival('GET');

    const started = performance.now();
    controller.abort();
    const err = await rejection(pending);
    expect(performance.now() - started).toBeLessThan(50);
    expect(err.name).toBe('AbortError');
    await poll.closed;
    expect(gets()).toHaveLength(1);
  });

  it('rejects at once when the signal is already aborted', async () => {
    const controller = new AbortController();
    const reason = new Error('shutting down');
    controller.abort(reason);
    await expect(makeProvider().generate(job(), controller.signal, () => {})).rejects.toBe(reason);
    expect(seen).toHaveLength(0);
  });

  it('enforces overallTimeoutMs across polling', async () => {
    remote.hangPolls = true;
    const err = await rejection(
      makeProvider({ overallTimeoutMs: 150 }).generate(job(), new AbortController().signal, () => {}),
    );
    expect(err).toBeInstanceOf(TransientProviderError);
    expect(err.message).toMatch(/overallTimeoutMs/);
  });

  it('keeps the key out of errors even when the remote echoes it back', async () => {
    remote.submitStatus = 401;
    remote.submitError = `invalid api key ${KEY}`;
    const err = await rejection(makeProvider().generate(job(), new AbortController().signal, () => {}));
    expect(err).toBeInstanceOf(PermanentProviderError);
    expect(err.message).toContain('[redacted]');
  });

  it('reports network errors as transient, with the cause but not the key', async () => {
    const closed = createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const port = (closed.address() as AddressInfo).port;
    closed.close();
    await once(closed, 'close');

    const provider = makeProvider({ baseUrl: `http://127.0.0.1:${port}`, retries: 1 });
    const err = await rejection(provider.generate(job(), new AbortController().signal, () => {}));
    expect(err).toBeInstanceOf(TransientProviderError);
    expect(err.message).toMatch(/network error .*ECONNREFUSED/);
  });

  it('fails with ProviderUnavailableError once closed', async () => {
    const provider = makeProvider();
    provider.close();
    const err = await rejection(provider.generate(job(), new AbortController().signal, () => {}));
    expect(err).toBeInstanceOf(ProviderUnavailableError);
    expect(seen).toHaveLength(0);
  });
});
