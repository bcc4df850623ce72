import type { IncomingMessage, ServerResponse } from 'node:http';
import helmet from 'helmet';
import { routeOf } from './request-context.js';
import type { FirstStep } from './request-frame.js';

/**
 * Response headers for what a JSON API answers (OWASP REST Security Cheat Sheet): the answer is
 * never sniffed into something else, never framed, never rendered with any active content, sends no
 * referrer, and is not stored by any cache unless the route says otherwise (media does). Computed
 * once; a handful instead of the dozen a browser page needs, since these cost on every request.
 */
export const API_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'x-content-type-options': 'nosniff',
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
});

/** Only meaningful, and only sent, over https (a browser ignores it on plain http anyway). */
export const HSTS = ['strict-transport-security', 'max-age=31536000; includeSubDomains'] as const;

/**
 * The browser pages (/docs, /dashboard): helmet's defaults, captured once, without the two that
 * break a page reached over plain http at an address other than localhost (a service on a LAN or
 * behind a plain-http proxy): `upgrade-insecure-requests` makes the browser fetch the page's own
 * scripts and styles over https, which fails, and HSTS is added per request only over https.
 */
export function pageHeaders(): Record<string, string> {
  const headers: Record<string, string> = {};
  const recorder = {
    setHeader(name: string, value: string | number | readonly string[]) {
      headers[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : String(value);
    },
    removeHeader(name: string) {
      delete headers[name.toLowerCase()];
    },
  };
  let finished = false;
  // Helmet's middleware rebuilds its CSP string on every call; its output never changes for one
  // configuration, so it runs once against a recording response and the result is replayed.
  helmet({
    contentSecurityPolicy: { directives: { upgradeInsecureRequests: null } },
    strictTransportSecurity: false,
  })({} as IncomingMessage, recorder as unknown as ServerResponse, (error?: unknown) => {
    if (error) throw error;
    finished = true;
  });
  if (!finished) throw new Error('helmet did not complete synchronously');
  return headers;
}

/**
 * The security headers of every answer, set in the first step of the request (so errors, 404s and
 * streams carry them too); a route declares `config: { page: true }` to be a browser page.
 */
export function securityHeadersStep(): FirstStep {
  const pageSet = pageHeaders();
  return (request, reply) => {
    reply.headers(routeOf(request).config?.page ? pageSet : API_HEADERS);
    if (request.protocol === 'https') reply.header(HSTS[0], HSTS[1]);
    return undefined;
  };
}
