import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { LRUCache } from 'lru-cache';

/**
 * Velro's access-token format (src/modules/auth/tokens.ts: HS256, iss `velro`, aud `velro-api`,
 * `sub` = user, `sid` = session), signed here with `node:crypto` so the bench can hand out tokens
 * for thousands of seeded users without logging each in, and verified the same way by every peer.
 */
export interface AccessClaims {
  sub: string;
  sid: string;
  exp: number;
}

const ISSUER = 'velro';
const AUDIENCE = 'velro-api';
const HEADER = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');

export function signAccessToken(secret: string, claims: AccessClaims): string {
  const payload = Buffer.from(
    JSON.stringify({
      sid: claims.sid,
      sub: claims.sub,
      iss: ISSUER,
      aud: AUDIENCE,
      iat: Math.floor(Date.now() / 1000),
      exp: claims.exp,
      jti: randomBytes(9).toString('base64url'),
    }),
  ).toString('base64url');
  const signature = createHmac('sha256', secret).update(`${HEADER}.${payload}`).digest('base64url');
  return `${HEADER}.${payload}.${signature}`;
}

/**
 * What every peer does with the bearer token, and what Velro does: verify the HMAC synchronously
 * once per distinct token, then keep the claims keyed by the exact token string until it expires
 * (a tampered token is another string and is verified afresh). The same LRU as Velro's.
 */
export function createTokenVerifier(
  secret: string,
): (authorization: string | undefined) => AccessClaims | null {
  const key = Buffer.from(secret, 'utf8');
  const verified = new LRUCache<string, AccessClaims>({ max: 100_000 });

  function verify(token: string): AccessClaims | null {
    const nowSeconds = Date.now() / 1000;
    const known = verified.get(token);
    if (known) return known.exp > nowSeconds ? known : null;
    const [header, payload, signature, extra] = token.split('.');
    if (!header || !payload || !signature || extra !== undefined) return null;
    const expected = createHmac('sha256', key).update(`${header}.${payload}`).digest();
    const given = Buffer.from(signature, 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
    let parsedHeader: unknown;
    let parsed: unknown;
    try {
      parsedHeader = JSON.parse(Buffer.from(header, 'base64url').toString('utf8'));
      parsed = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    } catch {
      return null; // Signed garbage is still garbage: not a token.
    }
    if ((parsedHeader as { alg?: unknown } | null)?.alg !== 'HS256') return null;
    const p = parsed as Record<string, unknown> | null;
    if (
      !p ||
      typeof p.sub !== 'string' ||
      typeof p.sid !== 'string' ||
      typeof p.exp !== 'number' ||
      p.iss !== ISSUER ||
      p.aud !== AUDIENCE ||
      p.exp <= nowSeconds
    ) {
      return null;
    }
    const claims: AccessClaims = { sub: p.sub, sid: p.sid, exp: p.exp };
    verified.set(token, claims, { ttl: Math.max(1, Math.ceil((claims.exp - nowSeconds) * 1000)) });
    return claims;
  }

  return (authorization) => {
    if (!authorization || authorization.length > 4096 + 7) return null;
    const space = authorization.indexOf(' ');
    if (space < 0 || authorization.slice(0, space).toLowerCase() !== 'bearer') return null;
    return verify(authorization.slice(space + 1).trim());
  };
}
