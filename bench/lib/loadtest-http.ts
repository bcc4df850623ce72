import { Client, type Dispatcher } from 'undici';
import type { Outcome, Recorder } from './loadtest-stats.js';

export type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE';

export interface Call {
  /** Route pattern for the report, e.g. `GET /api/v1/generations/:id`. */
  endpoint: string;
  method: Method;
  path: string;
  token?: string | null;
  body?: unknown;
  /** 4xx statuses this step expects (404 for another user's generation, 402 out of credits…). */
  expect?: readonly number[];
  headers?: Record<string, string>;
}

export interface Reply {
  status: number;
  outcome: Outcome;
  body: unknown;
  /** Retry-After of a 503 or 429, in seconds. */
  retryAfterS: number | null;
}

/** Open keep-alive connections, counted from undici's connect/disconnect events. */
export class ConnectionTracker {
  open = 0;
  peak = 0;
  opened = 0;
  closed = 0;
  failed = 0;

  onConnect(): void {
    this.open += 1;
    this.opened += 1;
    if (this.open > this.peak) this.peak = this.open;
  }

  onDisconnect(): void {
    this.open -= 1;
    this.closed += 1;
  }
}

const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT']);

export function classifyStatus(status: number, expect: readonly number[] | undefined): Outcome {
  if (status >= 500) return 'server_error';
  if (status >= 400) return expect?.includes(status) ? 'expected' : 'unexpected';
  return 'ok';
}

function errorCode(error: unknown): string {
  if (error && typeof error === 'object') {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    const name = (error as { name?: unknown }).name;
    if (typeof name === 'string') return name;
  }
  return 'unknown';
}

function headerText(value: string | string[] | undefined): string | null {
  if (value === undefined) return null;
  return Array.isArray(value) ? (value[0] ?? null) : value;
}

/**
 * One virtual user's HTTP: a single undici Client, so exactly one keep-alive connection to the
 * service (opened on first use, reopened only after an error or a stream we cut short). Every
 * request is timed from dispatch to the last body byte and recorded under its route pattern.
 */
export class VuHttp {
  private readonly client: Client;

  constructor(
    origin: string,
    private readonly recorder: Recorder,
    tracker: ConnectionTracker,
    timeoutMs: number,
  ) {
    this.client = new Client(origin, {
      pipelining: 1,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      connect: { timeout: timeoutMs },
      // Think time is at most seconds; the service keeps idle connections for 72 s.
      keepAliveTimeout: 60_000,
      keepAliveMaxTimeout: 600_000,
    });
    this.client.on('connect', () => tracker.onConnect());
    this.client.on('disconnect', () => tracker.onDisconnect());
    this.client.on('connectionError', () => {
      tracker.failed += 1;
    });
  }

  /** A JSON call. Resolves `null` on a network error or timeout (already recorded). */
  async call(call: Call): Promise<Reply | null> {
    const started = performance.now();
    try {
      const response = await this.client.request(this.options(call));
      const text = await response.body.text();
      const latency = performance.now() - started;
      const outcome = classifyStatus(response.statusCode, call.expect);
      this.recorder.record(
        call.endpoint,
        outcome,
        response.statusCode,
        latency,
        headerText(response.headers['x-cache']),
      );
      if (outcome === 'server_error' || outcome === 'unexpected') {
        this.recorder.sample(call.endpoint, response.statusCode, text);
      }
      if (isOverloaded(response.statusCode, text)) this.recorder.noteRefusal(call.endpoint, latency);
      const retryAfter = Number(headerText(response.headers['retry-after']) ?? Number.NaN);
      return {
        status: response.statusCode,
        outcome,
        body: parseJson(text),
        retryAfterS:
          (response.statusCode === 503 || response.statusCode === 429) && retryAfter > 0 ? retryAfter : null,
      };
    } catch (error) {
      this.fail(call.endpoint, error, started);
      return null;
    }
  }

  /** A binary download (the signed media URL): the bytes are read and counted, not kept. */
  async download(call: Call): Promise<{ status: number; bytes: number } | null> {
    const started = performance.now();
    try {
      const response = await this.client.request(this.options(call));
      let bytes = 0;
      let errorText = '';
      for await (const chunk of response.body) {
        bytes += (chunk as Buffer).length;
        if (response.statusCode === 503) errorText += (chunk as Buffer).toString('utf8');
      }
      const latency = performance.now() - started;
      const outcome = classifyStatus(response.statusCode, call.expect);
      this.recorder.record(call.endpoint, outcome, response.statusCode, latency, null);
      if (isOverloaded(response.statusCode, errorText)) this.recorder.noteRefusal(call.endpoint, latency);
      return { status: response.statusCode, bytes };
    } catch (error) {
      this.fail(call.endpoint, error, started);
      return null;
    }
  }

  /**
   * Server-Sent Events: the time to the response headers is what is recorded for the endpoint;
   * `onEvent` sees each event's data and returns true to stop reading. A stream still open after
   * `maxMs` is cut (which costs this user's connection a reconnect, counted as `capped`).
   */
  async stream(
    call: Call,
    maxMs: number,
    onEvent: (data: unknown) => boolean,
  ): Promise<{ status: number; ended: 'done' | 'capped' | 'closed' } | null> {
    const started = performance.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), maxMs);
    let response: Dispatcher.ResponseData;
    try {
      response = await this.client.request({ ...this.options(call), signal: abort.signal });
    } catch (error) {
      clearTimeout(timer);
      if (abort.signal.aborted) {
        // No headers within maxMs: as slow as a timeout from the user's point of view.
        this.recorder.record(call.endpoint, 'timeout', 0, null, null, started);
        this.recorder.noteErrorCode('SSE_NO_HEADERS');
      } else {
        this.fail(call.endpoint, error, started);
      }
      return null;
    }
    const latency = performance.now() - started;
    const outcome = classifyStatus(response.statusCode, call.expect);
    this.recorder.record(call.endpoint, outcome, response.statusCode, latency, null);
    if (response.statusCode !== 200) {
      clearTimeout(timer);
      const text = await response.body.text().catch(() => '');
      if (isOverloaded(response.statusCode, text)) this.recorder.noteRefusal(call.endpoint, latency);
      return { status: response.statusCode, ended: 'closed' };
    }
    let buffer = '';
    let sawTerminal = false;
    let ended: 'done' | 'capped' | 'closed';
    try {
      // Read to the end even after the terminal event: the service ends the response right after
      // it, and leaving the loop early would destroy the socket instead of keeping it alive.
      for await (const chunk of response.body) {
        buffer += (chunk as Buffer).toString('utf8');
        let split = buffer.indexOf('\n\n');
        while (split >= 0) {
          const frame = buffer.slice(0, split);
          buffer = buffer.slice(split + 2);
          const data = frame
            .split('\n')
            .filter((line) => line.startsWith('data:'))
            .map((line) => line.slice(5).trimStart())
            .join('\n');
          if (data && !sawTerminal && onEvent(parseJson(data))) sawTerminal = true;
          split = buffer.indexOf('\n\n');
        }
      }
      ended = sawTerminal ? 'done' : 'closed';
    } catch {
      ended = abort.signal.aborted ? 'capped' : 'closed';
    } finally {
      clearTimeout(timer);
    }
    return { status: response.statusCode, ended };
  }

  async close(): Promise<void> {
    await this.client.destroy().catch(() => {});
  }

  private options(call: Call): Dispatcher.RequestOptions {
    const headers: Record<string, string> = { ...call.headers };
    if (call.token) headers.authorization = `Bearer ${call.token}`;
    let body: string | undefined;
    if (call.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(call.body);
    }
    return { path: call.path, method: call.method, headers, ...(body === undefined ? {} : { body }) };
  }

  private fail(endpoint: string, error: unknown, startedAt: number): void {
    const code = errorCode(error);
    this.recorder.record(endpoint, TIMEOUT_CODES.has(code) ? 'timeout' : 'network', 0, null, null, startedAt);
    this.recorder.noteErrorCode(code);
  }
}

/** The service's deliberate refusal: 503 with error code `overloaded` (admission control, event-loop shedding). */
export function isOverloaded(status: number, text: string): boolean {
  if (status !== 503) return false;
  const body = parseJson(text) as { error?: { code?: unknown } } | null;
  return typeof body === 'object' && body !== null && body.error?.code === 'overloaded';
}

function parseJson(text: string): unknown {
  if (text.length === 0) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
