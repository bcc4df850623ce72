/**
 * `http` provider: a client for a remote image-generation API.
 *
 * Remote protocol (all JSON, every request carries `Authorization: Bearer <apiKey>`):
 *
 *   POST {baseUrl}/v1/images
 *     headers: Content-Type: application/json, Idempotency-Key: <uuid, same for every retry of one submit>
 *     body:    { model, prompt, negative_prompt: string | null, width, height, seed, steps,
 *                reference_image?: <base64>, reference_image_mime?: 'image/png' | … }
 *     → 202 (any 2xx) { id: string }
 *
 *   GET {baseUrl}/v1/images/{id}
 *     → 200 { status: 'queued' | 'running' | 'succeeded' | 'failed', progress?: 0–100, error?: string,
 *             images?: [{ mime: 'image/png' | 'image/webp' | 'image/jpeg', width, height, data_base64 }] }
 *     polled every `pollIntervalMs` until `succeeded` (images required) or `failed` (`error` is the reason).
 *
 *   Errors: 408, 429 and 5xx are transient (retried; `Retry-After` in seconds — fractions accepted — or as
 *   an HTTP date is honoured); any other 4xx is permanent; `{ error: string }` in an error body is surfaced.
 *
 * Resilience: every HTTP call has its own timeout and retry budget and runs through one circuit breaker per
 * provider instance, so a dead remote makes every job fail fast with ProviderUnavailableError instead of
 * each one waiting out its timeouts. The protocol has no cancel endpoint: a cancelled job stops polling
 * and the remote job is left to finish on its own.
 */
import { randomUUID } from 'node:crypto';
import CircuitBreaker from 'opossum';
import {
  type GeneratedMedia,
  type GenerationJob,
  PermanentProviderError,
  type ProgressCallback,
  type Provider,
} from './types.js';

export interface HttpProviderOptions {
  /** e.g. `https://images.example.com`; a trailing slash is fine. */
  baseUrl: string;
  apiKey: string;
  /** Per HTTP call, including reading the body. Default 10 s. */
  requestTimeoutMs?: number;
  /** Cap on one whole `generate()` (submit + polling). Default: none — the worker's job timeout applies. */
  overallTimeoutMs?: number;
  /** Extra attempts per HTTP call after a transient failure. Default 3. */
  retries?: number;
  /** Backoff base for retries without Retry-After (full jitter, doubling). Default 200 ms. */
  baseDelayMs?: number;
  /** Backoff ceiling. Default 5 s. */
  maxDelayMs?: number;
  /** A Retry-After longer than this ends the retries instead (the worker reschedules). Default 30 s. */
  maxRetryAfterMs?: number;
  /** Default 500 ms. */
  pollIntervalMs?: number;
  /** A bigger body is treated as a transient failure rather than buffered. Default 64 MiB. */
  maxResponseBytes?: number;
  breaker?: {
    /** Failure percentage (strictly above) that opens the breaker. Default 50. */
    errorThresholdPercentage?: number;
    /** How long the breaker stays open before letting one probe through. Default 10 s. */
    resetTimeoutMs?: number;
    /** Calls in the rolling window before the breaker may open at all. Default 5. */
    volumeThreshold?: number;
    /** Rolling statistics window. Default 10 s. */
    rollingCountTimeoutMs?: number;
  };
}

export type BreakerState = 'closed' | 'open' | 'half_open';

export type HttpProvider = Provider & {
  breakerState(): BreakerState;
  /** Stops the breaker's timers; later calls fail with ProviderUnavailableError. */
  close(): void;
};

/** The remote is considered down (breaker open or provider closed): nothing was sent. Transient. */
export class ProviderUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProviderUnavailableError';
  }
}

/** A failure worth retrying: network error, timeout, 408/429/5xx, or a body that does not parse. */
export class TransientProviderError extends Error {
  readonly status: number | null;
  /** From Retry-After, when the remote sent one. */
  readonly retryAfterMs: number | null;
  constructor(message: string, status: number | null = null, retryAfterMs: number | null = null) {
    super(message);
    this.name = 'TransientProviderError';
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * Thrown inside the breaker when our side stopped the call (caller's signal or overall deadline), so the
 * error filter can tell it apart from a remote failure; unwrapped before it reaches the caller.
 */
class StoppedLocally extends Error {
  constructor() {
    super('stopped locally');
    this.name = 'StoppedLocally';
  }
}

const MIMES = ['image/png', 'image/webp', 'image/jpeg'] as const;
type Mime = (typeof MIMES)[number];
const MAX_MESSAGE_CHARS = 300;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

interface CallContext {
  /** Fires on the caller's abort or the overall deadline. */
  stop: AbortSignal;
  /** What to reject with once `stop` has fired. */
  stopError(): unknown;
}

interface RemoteCall<T> {
  method: 'GET' | 'POST';
  path: string;
  /** Path with ids elided, for error messages. */
  label: string;
  body?: string;
  headers?: Record<string, string>;
  /** Turns a 2xx body into a value; throwing TransientProviderError marks the body malformed. */
  parse(status: number, body: unknown): T;
}

type PollResult =
  | { status: 'queued' | 'running'; progress: number | null }
  | { status: 'failed'; error: string | null }
  | { status: 'succeeded'; images: GeneratedMedia[] };

export function createHttpProvider(options: HttpProviderOptions): HttpProvider {
  const baseUrl = options.baseUrl.replace(/\/+$/, '');
  const apiKey = options.apiKey;
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
  const retries = options.retries ?? 3;
  const baseDelayMs = options.baseDelayMs ?? 200;
  const maxDelayMs = options.maxDelayMs ?? 5_000;
  const maxRetryAfterMs = options.maxRetryAfterMs ?? 30_000;
  const pollIntervalMs = options.pollIntervalMs ?? 500;
  const maxResponseBytes = options.maxResponseBytes ?? 64 * 1024 * 1024;

  // Remote text (error bodies, undici messages) ends up in our errors; a remote that echoes the key back
  // must not get it into logs through us.
  const redact = (text: string): string =>
    (apiKey ? text.split(apiKey).join('[redacted]') : text).slice(0, MAX_MESSAGE_CHARS);

  const breaker: CircuitBreaker<[() => Promise<unknown>], unknown> = new CircuitBreaker((task) => task(), {
    name: 'http-provider',
    // Our own per-request timeout aborts the fetch; opossum's would only stop waiting and leave it running.
    timeout: false,
    errorThresholdPercentage: options.breaker?.errorThresholdPercentage ?? 50,
    resetTimeout: options.breaker?.resetTimeoutMs ?? 10_000,
    volumeThreshold: options.breaker?.volumeThreshold ?? 5,
    rollingCountTimeout: options.breaker?.rollingCountTimeoutMs ?? 10_000,
    // Filtered errors count as successes. A permanent error means the remote answered coherently; a local
    // stop says nothing about the remote — except while half-open, where closing on it would be a guess.
    errorFilter: (err: unknown): boolean =>
      err instanceof PermanentProviderError || (err instanceof StoppedLocally && !breaker.halfOpen),
  });

  async function exchange<T>(call: RemoteCall<T>, ctx: CallContext): Promise<T> {
    const timeout = clearableTimeout(requestTimeoutMs);
    try {
      const res = await fetch(`${baseUrl}${call.path}`, {
        method: call.method,
        headers: { authorization: `Bearer ${apiKey}`, accept: 'application/json', ...call.headers },
        body: call.body ?? null,
        // A redirect would either drop the key (cross-origin) or hide a misconfigured base URL.
        redirect: 'manual',
        signal: AbortSignal.any([ctx.stop, timeout.signal]),
      });
      const text = await readText(res, maxResponseBytes);
      const status = res.status;
      if (status >= 200 && status < 300) {
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          throw new TransientProviderError(`${call.label}: response is not JSON (HTTP ${status})`, status);
        }
        return call.parse(status, body);
      }
      const reason = remoteReason(text);
      const message = redact(`${call.label}: HTTP ${status}${reason ? ` — ${reason}` : ''}`);
      if (status === 408 || status === 429 || status >= 500) {
        throw new TransientProviderError(message, status, parseRetryAfter(res.headers.get('retry-after')));
      }
      throw new PermanentProviderError(message);
    } catch (err) {
      if (ctx.stop.aborted) throw new StoppedLocally();
      if (err instanceof TransientProviderError || err instanceof PermanentProviderError) throw err;
      if (timeout.signal.aborted) {
        throw new TransientProviderError(`${call.label}: no response within ${requestTimeoutMs} ms`);
      }
      throw new TransientProviderError(redact(`${call.label}: network error (${describe(err)})`));
    } finally {
      timeout.clear();
    }
  }

  /** One HTTP call through the breaker, retried on transient failures. */
  async function send<T>(call: RemoteCall<T>, ctx: CallContext): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      if (ctx.stop.aborted) throw ctx.stopError();
      try {
        // opossum's fire() is typed by the breaker's action, not by the task we hand it.
        return (await breaker.fire(() => exchange(call, ctx))) as T;
      } catch (err) {
        if (err instanceof StoppedLocally || ctx.stop.aborted) throw ctx.stopError();
        if (err instanceof Error && CircuitBreaker.isOurError(err)) {
          throw new ProviderUnavailableError(
            breaker.isShutdown
              ? 'http provider is closed'
              : `remote image API unavailable: circuit breaker open (${call.label})`,
          );
        }
        if (!(err instanceof TransientProviderError) || attempt >= retries) throw err;
        if (err.retryAfterMs !== null && err.retryAfterMs > maxRetryAfterMs) throw err;
        const delay = err.retryAfterMs ?? Math.random() * Math.min(maxDelayMs, baseDelayMs * 2 ** attempt);
        try {
          await sleep(delay, ctx.stop);
        } catch {
          throw ctx.stopError();
        }
      }
    }
  }

  const parseSubmit = (_status: number, body: unknown): string => {
    if (!isRecord(body) || typeof body.id !== 'string' || body.id.length === 0 || body.id.length > 256) {
      throw new TransientProviderError('POST /v1/images: malformed response (no id)');
    }
    return body.id;
  };

  const parsePoll = (_status: number, body: unknown): PollResult => {
    const bad = (what: string) =>
      new TransientProviderError(`GET /v1/images/{id}: malformed response (${what})`);
    if (!isRecord(body)) throw bad('not an object');
    const { status } = body;
    if (status === 'queued' || status === 'running') {
      const { progress } = body;
      if (progress === undefined || progress === null) return { status, progress: null };
      if (typeof progress !== 'number' || !Number.isFinite(progress)) throw bad('progress');
      return { status, progress };
    }
    if (status === 'failed') {
      return { status, error: typeof body.error === 'string' && body.error ? body.error : null };
    }
    if (status !== 'succeeded') throw bad('status');
    const { images } = body;
    if (!Array.isArray(images) || images.length === 0) throw bad('no images');
    return {
      status,
      images: images.map((image, i) => {
        const media = parseImage(image);
        if (typeof media === 'string') throw bad(`images[${i}]: ${media}`);
        return media;
      }),
    };
  };

  async function generate(
    job: GenerationJob,
    signal: AbortSignal,
    onProgress: ProgressCallback,
  ): Promise<GeneratedMedia[]> {
    signal.throwIfAborted();
    const deadline =
      options.overallTimeoutMs === undefined ? null : clearableTimeout(options.overallTimeoutMs);
    const ctx: CallContext = {
      stop: deadline ? AbortSignal.any([signal, deadline.signal]) : signal,
      stopError: () =>
        signal.aborted
          ? signal.reason
          : new TransientProviderError(
              `generation exceeded overallTimeoutMs (${options.overallTimeoutMs} ms)`,
            ),
    };
    let reported = -1;
    const report = (percent: number) => {
      const whole = Math.floor(Math.min(100, Math.max(0, percent)));
      if (whole > reported) {
        reported = whole;
        onProgress(whole);
      }
    };

    try {
      report(0);
      const id = await send(
        {
          method: 'POST',
          path: '/v1/images',
          label: 'POST /v1/images',
          headers: { 'content-type': 'application/json', 'idempotency-key': randomUUID() },
          body: JSON.stringify({
            model: job.providerModel,
            prompt: job.prompt,
            negative_prompt: job.negativePrompt,
            width: job.width,
            height: job.height,
            seed: job.seed,
            steps: job.steps,
            ...(job.referenceImage && {
              reference_image: job.referenceImage.data.toString('base64'),
              reference_image_mime: job.referenceImage.mime,
            }),
          }),
          parse: parseSubmit,
        },
        ctx,
      );

      const poll: RemoteCall<PollResult> = {
        method: 'GET',
        path: `/v1/images/${encodeURIComponent(id)}`,
        label: 'GET /v1/images/{id}',
        parse: parsePoll,
      };
      for (;;) {
        const result = await send(poll, ctx);
        if (result.status === 'succeeded') {
          report(100);
          return result.images;
        }
        if (result.status === 'failed') {
          throw new PermanentProviderError(redact(result.error ?? 'remote generation failed'));
        }
        if (result.progress !== null) report(result.progress);
        try {
          await sleep(pollIntervalMs, ctx.stop);
        } catch {
          throw ctx.stopError();
        }
      }
    } finally {
      deadline?.clear();
    }
  }

  return {
    name: 'http',
    generate,
    breakerState: () => (breaker.halfOpen ? 'half_open' : breaker.closed ? 'closed' : 'open'),
    close: () => breaker.shutdown(),
  };
}

/**
 * Like AbortSignal.timeout, but the timer can be cleared: an HTTP call that finished must not leave a
 * timer pending for the rest of requestTimeoutMs.
 */
function clearableTimeout(ms: number): { signal: AbortSignal; clear(): void } {
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new DOMException(`timed out after ${ms} ms`, 'TimeoutError')),
    ms,
  );
  return { signal: controller.signal, clear: () => clearTimeout(timer) };
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Reads the body, refusing to buffer more than `limit` bytes from a misbehaving remote. */
async function readText(res: Response, limit: number): Promise<string> {
  const tooBig = () => new TransientProviderError(`response body larger than ${limit} bytes`, res.status);
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > limit) {
    await res.body?.cancel().catch(() => {});
    throw tooBig();
  }
  if (!res.body) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += chunk.byteLength;
    if (size > limit) throw tooBig();
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Seconds (fractions accepted, so tests can stay fast) or an HTTP date; null when absent or garbage. */
function parseRetryAfter(header: string | null): number | null {
  if (header === null) return null;
  const value = header.trim();
  if (/^\d+(\.\d+)?$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** The `error` string of a JSON error body, if the remote sent one. */
function remoteReason(text: string): string | null {
  try {
    const body: unknown = JSON.parse(text);
    return isRecord(body) && typeof body.error === 'string' ? body.error : null;
  } catch {
    return null;
  }
}

function parseImage(image: unknown): GeneratedMedia | string {
  if (!isRecord(image)) return 'not an object';
  const { mime, width, height, data_base64: data } = image;
  if (!isMime(mime)) return 'mime';
  if (!isDimension(width) || !isDimension(height)) return 'dimensions';
  if (typeof data !== 'string' || data.length === 0 || data.length % 4 !== 0 || !BASE64.test(data)) {
    return 'data_base64';
  }
  const bytes = Buffer.from(data, 'base64');
  // Storing bytes under the wrong content type would serve broken media later, far from the cause.
  if (!hasSignature(mime, bytes)) return `data is not ${mime}`;
  return { mime, width, height, data: bytes };
}

function hasSignature(mime: Mime, b: Buffer): boolean {
  switch (mime) {
    case 'image/png':
      return b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    case 'image/jpeg':
      return b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
    case 'image/webp':
      return b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP';
  }
}

function isMime(value: unknown): value is Mime {
  return typeof value === 'string' && (MIMES as readonly string[]).includes(value);
}

function isDimension(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value > 0 && value <= 65_535;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** undici reports "fetch failed" and hides the useful part (ECONNREFUSED, …) in `cause`. */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return `${err.message}: ${code ?? cause.message}`;
  }
  return err.message;
}
