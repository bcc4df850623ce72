import createClient, { type Client } from 'openapi-fetch';
import type { components, operations, paths } from './schema.js';
import { readServerSentEvents } from './sse.js';

export type { components, operations, paths } from './schema.js';
export { readServerSentEvents, type ServerSentEvent } from './sse.js';

/** The header a write answers with and a read sends back: "answer from facts at least this fresh". */
export const CONSISTENCY_HEADER = 'velro-consistency-token';

/** The JSON body of an operation's answer with the given status. */
export type JsonResponse<Operation, Status extends number> = Operation extends {
  responses: { [S in Status]: { content: { 'application/json': infer Body } } };
}
  ? Body
  : never;

export type TokenPair = JsonResponse<operations['login'], 200>;
export type User = components['schemas']['User'];
export type Generation = JsonResponse<operations['getGeneration'], 200>;
export type GenerationStatus = Generation['status'];
export type ErrorEnvelope = components['schemas']['ErrorEnvelope'];

/** One state of a generation, as its event stream reports it. */
export interface GenerationEvent {
  id: string;
  status: GenerationStatus;
  progress: number;
  error: string | null;
}

const TERMINAL: ReadonlySet<string> = new Set<GenerationStatus>(['completed', 'failed', 'cancelled']);

/** The tokens of a signed-in session: what to persist between runs. */
export interface Tokens {
  accessToken: string;
  refreshToken: string;
}

export interface VelroClientOptions {
  /** Where the service is, e.g. `http://127.0.0.1:3000`. Paths carry their `/api/v1` prefix themselves. */
  baseUrl: string;
  /** A session to resume (from `onTokens` of an earlier run). */
  tokens?: Tokens | null;
  /** A service key (`vk_…`), sent as the bearer token instead of a session. Never refreshed. */
  serviceKey?: string;
  /**
   * Called with the new pair after register, login and every refresh (store it: the old refresh
   * token no longer works), and with null after logout or when the session has ended for good.
   */
  onTokens?: (tokens: Tokens | null) => void | Promise<void>;
  /** Start from a consistency token seen elsewhere (e.g. by another client of the same user). */
  consistencyToken?: number;
  /** Headers sent on every request. */
  headers?: Record<string, string>;
  /** The fetch to use; defaults to the global one. */
  fetch?: (request: Request) => Promise<Response>;
}

export interface EventStreamOptions {
  signal?: AbortSignal;
  /** Reconnections allowed in a row when the stream ends before a terminal status (default 3). */
  reconnects?: number;
}

/** A typed client for every operation (`GET`, `POST`, … from openapi-fetch) plus sessions and events. */
export interface VelroClient extends Client<paths> {
  /** The current session's tokens, or null. */
  readonly tokens: Tokens | null;
  /** Adopt a session (or forget it with null); `onTokens` is not called. */
  setTokens(tokens: Tokens | null): void;
  /** The highest `Velro-Consistency-Token` seen so far (0 before any); sent on every later request. */
  readonly consistencyToken: number;
  /** The status and progress of a generation, until it completes, fails or is cancelled. */
  generationEvents(
    id: string,
    options?: EventStreamOptions,
  ): AsyncGenerator<GenerationEvent, void, undefined>;
}

/** An error answer of the API, with the envelope's fields. */
export class VelroApiError extends Error {
  override readonly name = 'VelroApiError';

  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly requestId: string | null,
    readonly details?: unknown,
  ) {
    super(message);
  }

  /** From a response and its (already read) body. */
  static fromBody(response: Response, body: unknown): VelroApiError {
    const envelope = (body as Partial<ErrorEnvelope> | undefined)?.error;
    return new VelroApiError(
      response.status,
      typeof envelope?.code === 'string' ? envelope.code : `http_${response.status}`,
      typeof envelope?.message === 'string'
        ? envelope.message
        : `HTTP ${response.status} ${response.statusText}`,
      typeof envelope?.request_id === 'string' ? envelope.request_id : response.headers.get('x-request-id'),
      envelope?.details,
    );
  }

  static async from(response: Response): Promise<VelroApiError> {
    const body: unknown = await response.json().catch(() => undefined);
    return VelroApiError.fromBody(response, body);
  }
}

/**
 * The data of a successful openapi-fetch result, or a thrown `VelroApiError`:
 * `const user = unwrap(await client.GET('/api/v1/auth/me'))`.
 */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || !result.response.ok) {
    throw VelroApiError.fromBody(result.response, result.error);
  }
  return result.data as T;
}

const SIGN_IN = /\/api\/v1\/auth\/(register|login|refresh)$/;
const SIGN_OUT = /\/api\/v1\/auth\/(logout|logout-all)$/;

export function createVelroClient(options: VelroClientOptions): VelroClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, '');
  const baseFetch = options.fetch ?? ((request: Request) => globalThis.fetch(request));
  let tokens: Tokens | null = options.tokens ?? null;
  let consistency = options.consistencyToken ?? 0;
  let refreshing: Promise<boolean> | null = null;

  const bearer = () => options.serviceKey ?? tokens?.accessToken ?? null;

  async function publish(next: Tokens | null): Promise<void> {
    tokens = next;
    await options.onTokens?.(next);
  }

  /** One exchange: credentials and consistency token out, consistency token and sessions in. */
  async function dispatch(request: Request, token: string | null): Promise<Response> {
    if (token) request.headers.set('authorization', `Bearer ${token}`);
    if (consistency > 0 && !request.headers.has(CONSISTENCY_HEADER)) {
      request.headers.set(CONSISTENCY_HEADER, String(consistency));
    }
    const response = await baseFetch(request);
    const seen = Number(response.headers.get(CONSISTENCY_HEADER));
    if (Number.isSafeInteger(seen) && seen > consistency) consistency = seen;
    if (!options.serviceKey && request.method === 'POST') {
      const path = new URL(request.url).pathname;
      if (response.ok && SIGN_IN.test(path)) {
        const pair = (await response
          .clone()
          .json()
          .catch(() => null)) as Partial<TokenPair> | null;
        if (pair?.access_token && pair.refresh_token) {
          await publish({ accessToken: pair.access_token, refreshToken: pair.refresh_token });
        }
      } else if (response.ok && SIGN_OUT.test(path)) {
        await publish(null);
      }
    }
    return response;
  }

  /** Exchanges the refresh token once for all callers waiting on it; false when the session is over. */
  function refreshSession(): Promise<boolean> {
    refreshing ??= (async () => {
      const refreshToken = tokens?.refreshToken;
      if (!refreshToken) return false;
      const response = await dispatch(
        new Request(`${baseUrl}/api/v1/auth/refresh`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...options.headers },
          body: JSON.stringify({ refresh_token: refreshToken }),
        }),
        null,
      );
      if (response.ok) return true;
      // Refused (expired, revoked, reused): this session cannot come back. Anything else
      // (overloaded, unreachable) leaves the tokens for a later try.
      if (response.status === 401 && tokens?.refreshToken === refreshToken) await publish(null);
      return false;
    })().finally(() => {
      refreshing = null;
    });
    return refreshing;
  }

  async function send(request: Request): Promise<Response> {
    // A caller's own Authorization header is theirs to manage: no session handling for it.
    if (request.headers.has('authorization')) return dispatch(request, null);
    const retry = request.clone();
    const used = bearer();
    const response = await dispatch(request, used);
    if (response.status !== 401 || options.serviceKey || !used || !tokens?.refreshToken) return response;
    const body = (await response
      .clone()
      .json()
      .catch(() => null)) as Partial<ErrorEnvelope> | null;
    if (body?.error?.code !== 'invalid_token') return response;
    // Another request may have refreshed the session meanwhile; refresh only if nobody has.
    if (bearer() === used && !(await refreshSession())) return response;
    const current = bearer();
    if (!current || current === used) return response;
    return dispatch(retry, current);
  }

  async function* generationEvents(
    id: string,
    streamOptions: EventStreamOptions = {},
  ): AsyncGenerator<GenerationEvent, void, undefined> {
    const { signal } = streamOptions;
    const allowed = streamOptions.reconnects ?? 3;
    let last = '';
    let failures = 0;
    for (;;) {
      const response = await send(
        new Request(`${baseUrl}/api/v1/generations/${encodeURIComponent(id)}/events`, {
          headers: { accept: 'text/event-stream', ...options.headers },
          ...(signal ? { signal } : {}),
        }),
      );
      if (!response.ok || !response.body) throw await VelroApiError.from(response);
      for await (const message of readServerSentEvents(response.body)) {
        if (message.event !== 'status') continue;
        const parsed = JSON.parse(message.data) as Partial<GenerationEvent>;
        const event: GenerationEvent = {
          id: parsed.id ?? id,
          status: parsed.status as GenerationStatus,
          progress: parsed.progress ?? 0,
          error: parsed.error ?? null,
        };
        const key = `${event.status}|${event.progress}|${event.error}`;
        // A reconnection starts with the current state again: do not report it twice.
        if (key === last) continue;
        last = key;
        failures = 0;
        yield event;
        if (TERMINAL.has(event.status)) return;
        signal?.throwIfAborted();
      }
      signal?.throwIfAborted();
      failures += 1;
      if (failures > allowed) {
        throw new Error(`the event stream of generation ${id} ended before a terminal status`);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(250 * 2 ** (failures - 1), 2_000)));
    }
  }

  const api = createClient<paths>({
    baseUrl,
    fetch: send,
    ...(options.headers ? { headers: options.headers } : {}),
  });
  const extras = {
    get tokens() {
      return tokens;
    },
    setTokens(next: Tokens | null) {
      tokens = next;
    },
    get consistencyToken() {
      return consistency;
    },
    generationEvents,
  };
  return Object.defineProperties(api, Object.getOwnPropertyDescriptors(extras)) as VelroClient;
}
