import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { installAuthentication } from '../src/modules/auth/authenticate.js';
import { installErrorHandling } from '../src/platform/http/error-handler.js';
import type { Principal } from '../src/platform/http/principal.js';
import { installRequestContext } from '../src/platform/http/request-context.js';
import { errorOf, signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const fx = useTestApp();

describe('every response', () => {
  it('carries X-Request-Id, X-Response-Time with 3 decimals and X-Route-Class', async () => {
    const health = await fx.app.inject({ method: 'GET', url: '/health' });
    expect(health.statusCode).toBe(200);
    expect(health.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(health.headers['x-response-time']).toMatch(/^\d+\.\d{3}$/);
    expect(health.headers['x-route-class']).toBe('ultra_fast');

    const login = await fx.app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: {} });
    expect(login.headers['x-route-class']).toBe('critical_auth');
    const missing = await fx.app.inject({ method: 'GET', url: '/api/v1/nothing-here' });
    expect(missing.statusCode).toBe(404);
    expect(missing.headers['x-response-time']).toMatch(/^\d+\.\d{3}$/);
    expect(errorOf(missing).code).toBe('not_found');
  });

  it("keeps a caller's safe request id and replaces an unsafe one", async () => {
    const kept = await fx.app.inject({
      method: 'GET',
      url: '/health',
      headers: { 'x-request-id': 'trace-abc.123' },
    });
    expect(kept.headers['x-request-id']).toBe('trace-abc.123');
    const replaced = await fx.app.inject({
      method: 'GET',
      url: '/health',
      headers: { 'x-request-id': 'evil\r\nSet-Cookie: x=1' },
    });
    expect(replaced.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('has the security headers of an API', async () => {
    const res = await fx.app.inject({ method: 'GET', url: '/health' });
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['content-security-policy']).toBe("default-src 'none'; frame-ancestors 'none'");
    expect(res.headers['x-frame-options']).toBe('DENY');
    expect(res.headers['cache-control']).toBe('no-store');
  });
});

describe('operations endpoints', () => {
  it('/health answers without credentials; /ready checks the database', async () => {
    expect((await fx.app.inject({ method: 'GET', url: '/health' })).json().status).toBe('ok');
    const ready = await fx.app.inject({ method: 'GET', url: '/ready' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json().checks.postgres.ok).toBe(true);
  });

  it('serves the OpenAPI document and the docs page', async () => {
    const doc = await fx.app.inject({ method: 'GET', url: '/docs/json' });
    expect(doc.statusCode).toBe(200);
    const spec = doc.json();
    expect(spec.openapi).toBe('3.1.0');
    expect(spec.components.securitySchemes.bearerAuth).toMatchObject({ type: 'http', scheme: 'bearer' });
    for (const path of ['/api/v1/auth/register', '/api/v1/auth/login', '/api/v1/service-keys/{id}']) {
      expect(spec.paths[path], path).toBeDefined();
    }
    expect(spec.paths['/api/v1/auth/login'].post.operationId).toBe('login');
    const page = await fx.app.inject({ method: 'GET', url: '/docs/' });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toContain('text/html');
  });
});

describe('authentication is the default', () => {
  it('every API route but the declared public ones refuses an anonymous caller', async () => {
    const open = new Set([
      'POST /api/v1/auth/register',
      'POST /api/v1/auth/login',
      'POST /api/v1/auth/refresh',
      'GET /api/v1/models',
      'GET /api/v1/media/{token}',
      // operational endpoints: open unless OPS_TOKEN is set (tested with it in observability tests)
      'GET /api/v1/performance/dashboard',
      'GET /api/v1/performance/metrics',
      'GET /api/v1/performance/health',
      'GET /api/v1/performance/validate',
      'GET /api/v1/performance/test',
    ]);
    const spec = (await fx.app.inject({ method: 'GET', url: '/docs/json' })).json();
    let checked = 0;
    for (const [path, ops] of Object.entries<Record<string, unknown>>(spec.paths)) {
      if (!path.startsWith('/api/v1/')) continue;
      for (const method of Object.keys(ops)) {
        const verb = method.toUpperCase();
        if (open.has(`${verb} ${path}`)) continue;
        const url = path.replace(/\{[^}]+\}/g, '00000000-0000-4000-8000-000000000000');
        const res = await fx.app.inject({
          method: verb as 'GET',
          url,
          payload: verb === 'GET' ? undefined : {},
        });
        expect(res.statusCode, `${verb} ${path}`).toBe(401);
        checked += 1;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(8);
  });

  it('a malformed id answers 404, not 400 or 500', async () => {
    const user = await signUp(fx.app);
    const res = await fx.call(user, 'DELETE', '/service-keys/not-a-uuid');
    expect(res.statusCode).toBe(404);
    expect(errorOf(res).code).toBe('not_found');
  });
});

// Both ways a principal reaches the hook: synchronously (warm: token and session known in L1) and
// through the promise (everything else). The policy must not depend on which.
describe.each(['warm', 'cold'] as const)('route policy (%s credential)', (path) => {
  // The hook alone, with credentials decided by a stand-in: what is tested is the route policy.
  async function policyApp(principal: Principal | null) {
    const app = Fastify();
    installErrorHandling(app, 1);
    installRequestContext(app);
    installAuthentication(app, {
      principalNow: () => (path === 'warm' ? principal : undefined),
      principalFor: async () => principal,
    });
    app.get('/open', { config: { public: true } }, async () => ({ ok: true }));
    app.get('/session-only', async () => ({ ok: true }));
    app.get('/any-key', { config: { scope: 'any' } }, async () => ({ ok: true }));
    app.get('/needs-read', { config: { scope: 'generations:read' } }, async () => ({ ok: true }));
    await app.ready();
    return app;
  }

  it('applies public, session-only, any-key and scoped routes', async () => {
    const key: Principal = {
      kind: 'service_key',
      userId: 'u',
      role: 'user',
      keyId: 'k',
      scopes: new Set(['media:read']),
    };
    const session: Principal = { kind: 'user', userId: 'u', role: 'user', sessionId: 's' };
    const expectations: [Principal | null, string, number][] = [
      [null, '/open', 200],
      [null, '/session-only', 401],
      [null, '/needs-read', 401],
      [session, '/session-only', 200],
      [session, '/needs-read', 200],
      [key, '/session-only', 403],
      [key, '/any-key', 200],
      [key, '/needs-read', 403],
      [{ ...key, scopes: new Set(['generations:read']) }, '/needs-read', 200],
    ];
    for (const [principal, url, status] of expectations) {
      const app = await policyApp(principal);
      const res = await app.inject({ method: 'GET', url });
      expect(res.statusCode, `${principal?.kind ?? 'anonymous'} ${url}`).toBe(status);
      if (status === 403 && url === '/needs-read') expect(errorOf(res).code).toBe('insufficient_scope');
      await app.close();
    }
  });
});
