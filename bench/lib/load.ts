import autocannon from 'autocannon';
import { percentile } from './report.js';

/** One HTTP request of a case's rotation, prebuilt once per connection (no per-request cost). */
export interface LoadRequest {
  method: 'GET' | 'POST';
  path: string;
  headers?: Record<string, string>;
  body?: string;
}

export interface LoadResult {
  /** Responses received in the run. */
  responses: number;
  /** Requests sent, those still in flight when the run stopped included (the server answers them). */
  sent: number;
  reqPerSec: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  /** Connection errors, timeouts included. */
  errors: number;
  /** Responses whose status was not 200 (a 401 would make a fast route look faster). */
  non200: number;
  /** Status → count, for the statuses other than 200. */
  statuses: Record<string, number>;
  /** The first few bodies of non-200 answers: what went wrong. */
  failures: string[];
}

/** How many requests each connection cycles through; the slices overlap to cover the whole rotation. */
const SLICE = 256;

/**
 * `connections` keep-alive connections for `seconds`, each cycling through its own slice of
 * `requests` (slice k starts k·len/connections in), so all connections together send the rotation's
 * mix while each request is built once, before the clock starts mattering.
 */
export async function runLoad(
  baseUrl: string,
  requests: LoadRequest[],
  seconds: number,
  connections: number,
): Promise<LoadResult> {
  if (requests.length === 0) throw new Error('a case needs at least one request');
  const step = Math.max(1, Math.floor(requests.length / connections));
  const sliceLength = Math.min(requests.length, SLICE);
  let nextClient = 0;
  const sliceFor = (k: number): autocannon.Request[] =>
    Array.from({ length: sliceLength }, (_, i) => {
      const r = requests[(k * step + i) % requests.length] as LoadRequest;
      return {
        method: r.method,
        path: r.path,
        headers: r.headers ?? {},
        ...(r.body ? { body: r.body } : {}),
      };
    });
  // autocannon's own histogram rounds to whole milliseconds (bare's p50 would read 0): each response
  // time (float ms, from hrtime) is kept here instead, the same small cost for every case.
  const times: number[] = [];
  let non200 = 0;
  const statuses: Record<string, number> = {};
  const failures: string[] = [];
  const first = requests[0] as LoadRequest;
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(
      {
        url: baseUrl,
        connections,
        duration: seconds,
        requests: [{ method: first.method, path: first.path, headers: first.headers ?? {} }],
        setupClient: (client) => {
          client.setRequests(sliceFor(nextClient++));
          // Only the last body chunk is kept (one assignment per response, the same for every case),
          // to show what a non-200 answer said.
          let lastBody: Buffer | undefined;
          client.on('body', (chunk: Buffer) => {
            lastBody = chunk;
          });
          client.on('response', (statusCode: number) => {
            if (statusCode !== 200 && failures.length < 3) {
              failures.push(`${statusCode} ${lastBody?.toString('utf8').slice(0, 300) ?? ''}`);
            }
          });
        },
      },
      (error: unknown, done: autocannon.Result) => (error ? reject(error) : resolve(done)),
    );
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      times.push(responseTime);
      if (statusCode !== 200) {
        non200++;
        statuses[statusCode] = (statuses[statusCode] ?? 0) + 1;
      }
    });
  });
  const sorted = Float64Array.from(times).sort();
  return {
    responses: times.length,
    sent: result.requests.sent,
    reqPerSec: result.requests.average,
    p50Ms: microseconds(percentile(sorted, 50)),
    p95Ms: microseconds(percentile(sorted, 95)),
    p99Ms: microseconds(percentile(sorted, 99)),
    errors: result.errors,
    non200,
    statuses,
    failures,
  };
}

/** Attempts at one request refused as `overloaded` (a 503 the service means as "retry shortly"). */
const OVERLOADED_ATTEMPTS = 5;

/**
 * One request, retried after its Retry-After (at most 1 s) while the service answers 503
 * `overloaded`: that refusal is admission control doing its job on a busy machine, not a wrong
 * answer; any other status is returned as it came.
 */
async function sendOne(baseUrl: string, r: LoadRequest): Promise<{ status: number; body: unknown }> {
  for (let attempt = 1; ; attempt++) {
    const response = await fetch(`${baseUrl}${r.path}`, {
      method: r.method,
      headers: r.headers ?? {},
      ...(r.body ? { body: r.body } : {}),
    });
    const body: unknown = await response.json().catch(() => null);
    const code = (body as { error?: { code?: string } } | null)?.error?.code;
    if (response.status !== 503 || code !== 'overloaded' || attempt === OVERLOADED_ATTEMPTS) {
      return { status: response.status, body };
    }
    const retryAfterSeconds = Number(response.headers.get('retry-after') ?? '1');
    await new Promise((resolve) =>
      setTimeout(resolve, Math.min(1000, Math.max(50, retryAfterSeconds * 1000))),
    );
  }
}

/** Sends every request once (`parallel` at a time) and returns each JSON answer, in order. */
export async function sendAll(
  baseUrl: string,
  requests: LoadRequest[],
  parallel = 8,
): Promise<{ status: number; body: unknown }[]> {
  const answers: { status: number; body: unknown }[] = new Array(requests.length);
  let next = 0;
  const worker = async () => {
    while (next < requests.length) {
      const index = next++;
      const r = requests[index] as LoadRequest;
      answers[index] = await sendOne(baseUrl, r);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return answers;
}

/** Rounds milliseconds to whole microseconds: finer digits are noise and clutter the JSON. */
const microseconds = (ms: number) => Math.round(ms * 1000) / 1000;
