import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { bearer, errorOf, settle, signUp, startTestApp, TEST_ENV } from './helpers/app.js';
import { callApi, useTestApp } from './helpers/fixture.js';

const fx = useTestApp();
const secret = new TextEncoder().encode(TEST_ENV.JWT_SECRET);

const me = (headers: Record<string, string>) => fx.call(null, 'GET', '/auth/me', undefined, headers);
const b64 = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
const claimsOf = (token: string) =>
  JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));

function sign(
  claims: Record<string, unknown>,
  key: Uint8Array = secret,
  header: Record<string, unknown> = {},
) {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256', ...header }).sign(key);
}

describe('access tokens under attack', () => {
  it('refuses a missing, empty or non-bearer Authorization header', async () => {
    const variants: Record<string, string>[] = [
      {},
      { authorization: '' },
      { authorization: 'Bearer' },
      { authorization: 'Basic abc' },
    ];
    for (const headers of variants) {
      const res = await me(headers);
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer');
      expect(errorOf(res).code).toBe('invalid_token');
    }
  });

  it('refuses alg:none tokens carrying a real user and session', async () => {
    const user = await signUp(fx.app);
    const claims = claimsOf(user.accessToken);
    const unsigned = `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
    expect((await me(bearer(unsigned))).statusCode).toBe(401);
    expect((await me(bearer(`${b64({ alg: 'none' })}.${b64(claims)}`))).statusCode).toBe(401);
  });

  it('refuses a token whose payload was changed to another user', async () => {
    const victim = await signUp(fx.app);
    const attacker = await signUp(fx.app);
    const [header, , signature] = attacker.accessToken.split('.');
    const forged = `${header}.${b64({ ...claimsOf(attacker.accessToken), sub: victim.id })}.${signature}`;
    expect((await me(bearer(forged))).statusCode).toBe(401);
    // a valid token of the attacker still only ever shows the attacker
    expect((await me(bearer(attacker.accessToken))).json().id).toBe(attacker.id);
  });

  it('refuses a flipped signature bit, a truncated token and garbage', async () => {
    const user = await signUp(fx.app);
    const token = user.accessToken;
    const last = token.at(-2) === 'A' ? 'B' : 'A';
    for (const bad of [
      `${token.slice(0, -2)}${last}${token.at(-1)}`,
      token.slice(0, -5),
      'a.b.c',
      '....',
      'x'.repeat(5000),
    ]) {
      expect((await me(bearer(bad))).statusCode).toBe(401);
    }
  });

  it('refuses tokens signed with another key, another algorithm, or lacking a session', async () => {
    const user = await signUp(fx.app);
    const claims = claimsOf(user.accessToken);
    const otherKey = new TextEncoder().encode('another-secret-0123456789abcdef0123456789');
    expect((await me(bearer(await sign(claims, otherKey)))).statusCode).toBe(401);
    const hs512 = await new SignJWT(claims).setProtectedHeader({ alg: 'HS512' }).sign(secret);
    expect((await me(bearer(hs512))).statusCode).toBe(401);
    const { sid: _sid, ...noSession } = claims;
    expect((await me(bearer(await sign(noSession)))).statusCode).toBe(401);
    const wrongAudience = { ...claims, aud: 'someone-else' };
    expect((await me(bearer(await sign(wrongAudience)))).statusCode).toBe(401);
  });

  it('refuses an expired token even though its signature and session are valid', async () => {
    const user = await signUp(fx.app);
    const now = Math.floor(Date.now() / 1000);
    const expired = await sign({ ...claimsOf(user.accessToken), iat: now - 3600, exp: now - 60 });
    const res = await me(bearer(expired));
    expect(res.statusCode).toBe(401);
    // the same claims with a future expiry, signed by us, are accepted: only the expiry differs
    expect((await me(bearer(await sign({ ...claimsOf(user.accessToken), exp: now + 60 })))).statusCode).toBe(
      200,
    );
  });

  it('stops accepting a token the moment it expires, even after it was accepted before', async () => {
    let clock = Date.now();
    const local = await startTestApp({ databaseUrl: fx.db.url, now: () => clock });
    try {
      const user = await signUp(local.app);
      const ask = () => callApi(local, user, 'GET', '/auth/me');
      expect((await ask()).statusCode).toBe(200);
      clock += 899_000;
      expect((await ask()).statusCode).toBe(200);
      clock += 2_000;
      expect((await ask()).statusCode).toBe(401);
    } finally {
      await local.close();
    }
  });

  it("refuses a revoked session's unexpired access token on the very next request", async () => {
    const user = await signUp(fx.app);
    expect((await me(bearer(user.accessToken))).statusCode).toBe(200);
    await fx.sql.query(`UPDATE sessions SET revoked_at = now() WHERE user_id = $1`, [user.id]);
    await settle(fx.t);
    expect((await me(bearer(user.accessToken))).statusCode).toBe(401);
  });

  it('refuses a token whose session belongs to another user', async () => {
    const a = await signUp(fx.app);
    const b = await signUp(fx.app);
    const mixed = await sign({ ...claimsOf(a.accessToken), sid: claimsOf(b.accessToken).sid });
    expect((await me(bearer(mixed))).statusCode).toBe(401);
  });
});

describe('bad input', () => {
  it('answers malformed JSON with 400 in the envelope, never 500', async () => {
    const res = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/auth/login',
      headers: { 'content-type': 'application/json' },
      payload: '{"email": "a@b.c", "password": ',
    });
    expect(res.statusCode).toBe(400);
    expect(errorOf(res).code).toBe('bad_request');
  });

  it('answers an oversized body with 413', async () => {
    const res = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/auth/register',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ email: 'big@example.com', password: 'x'.repeat(2 * 1024 * 1024) }),
    });
    expect(res.statusCode).toBe(413);
    expect(errorOf(res).code).toBe('payload_too_large');
  });

  it('answers an unknown content type with 415', async () => {
    const res = await fx.app.inject({
      method: 'POST',
      url: '/api/v1/auth/login',
      headers: { 'content-type': 'application/x-yaml' },
      payload: 'email: a@b.c',
    });
    expect(res.statusCode).toBe(415);
    expect(errorOf(res).code).toBe('unsupported_media_type');
  });

  it('treats injection strings as data, and refuses prototype keys and unknown fields', async () => {
    const res = await fx.call(null, 'POST', '/auth/login', { email: "' OR 1=1 --", password: "' OR '1'='1" });
    expect(res.statusCode).toBe(401);
    // A literal "__proto__" key is refused by the JSON parser; "constructor" is an unknown field.
    for (const extra of [
      '"__proto__": {"role": "admin"}',
      '"constructor": {"prototype": {"role": "admin"}}',
    ]) {
      const poisoned = await fx.app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        headers: { 'content-type': 'application/json' },
        payload: `{"email": "a@example.com", "password": "x", ${extra}}`,
      });
      expect(poisoned.statusCode, extra).toBe(400);
      expect(errorOf(poisoned).code).toMatch(/^(bad_request|validation_error)$/);
    }
    expect(({} as Record<string, unknown>).role).toBeUndefined();
  });
});

describe('brute force', () => {
  it('limits failed logins per account with 429 and Retry-After, even from many addresses', async () => {
    const local = await startTestApp({ databaseUrl: fx.db.url, env: { LOGIN_RATE_LIMIT_PER_ACCOUNT: '5' } });
    try {
      const user = await signUp(local.app);
      const attempt = (password: string, ip: string) =>
        local.app.inject({
          method: 'POST',
          url: '/api/v1/auth/login',
          remoteAddress: ip,
          payload: { email: user.email, password },
        });
      for (let i = 0; i < 5; i++)
        expect((await attempt(`guess-${i}-xx`, `10.0.0.${i + 1}`)).statusCode).toBe(401);
      const blocked = await attempt('guess-6-xx', '10.0.0.99');
      expect(blocked.statusCode).toBe(429);
      expect(Number(blocked.headers['retry-after'])).toBeGreaterThan(0);
      expect(errorOf(blocked).code).toBe('rate_limited');
      // the right password is refused too while the account is locked: guessing gains nothing
      expect((await attempt(user.password, '10.0.0.100')).statusCode).toBe(429);
    } finally {
      await local.close();
    }
  });

  it('limits login attempts per address across accounts', async () => {
    const local = await startTestApp({ databaseUrl: fx.db.url, env: { LOGIN_RATE_LIMIT_PER_IP: '4' } });
    try {
      const attempt = (i: number) =>
        local.app.inject({
          method: 'POST',
          url: '/api/v1/auth/login',
          remoteAddress: '192.0.2.7',
          payload: { email: `victim${i}@example.com`, password: 'guess guess' },
        });
      for (let i = 0; i < 4; i++) expect((await attempt(i)).statusCode).toBe(401);
      const blocked = await attempt(5);
      expect(blocked.statusCode).toBe(429);
      expect(blocked.headers['retry-after']).toBeDefined();
      const elsewhere = await local.app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        remoteAddress: '192.0.2.8',
        payload: { email: 'victim9@example.com', password: 'guess guess' },
      });
      expect(elsewhere.statusCode).toBe(401);
    } finally {
      await local.close();
    }
  });
});
