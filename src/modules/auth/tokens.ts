import { createHash, createHmac, randomBytes } from 'node:crypto';
import { errors as joseErrors, jwtVerify, SignJWT } from 'jose';
import { LRUCache } from 'lru-cache';
import { ExpirySchedule } from '../../platform/cache/expiry-sweep.js';

export interface AccessClaims {
  sub: string;
  sid: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
}

const ISSUER = 'velro';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const AUDIENCE = 'velro-api';
/** The longest a verified token's claims are kept before it is verified again, by default (see the constructor). */
const CLAIMS_KEPT_MS = 15 * 60_000;
/** How often expired claims are removed, and the schedule's slot. */
const EXPIRY_SLOT_MS = 1_000;

/**
 * HS256 access tokens: issued with `jose`, verified with `jose` once per distinct token. The
 * verified claims are then kept (keyed by the exact token string, until the token's own expiry),
 * because WebCrypto HMAC verification costs ~90 µs and would cap every authenticated route. A
 * tampered token is a different string and is verified afresh; revocation is not decided here but
 * by the session check that follows on every request.
 */
export class AccessTokens {
  private readonly verified: LRUCache<string, AccessClaims>;
  /** When each kept token's claims are due to go (lru-cache's clock, `performance.now`). */
  private readonly expiry = new ExpirySchedule(EXPIRY_SLOT_MS);
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly secret: Uint8Array,
    private readonly ttlSeconds: number,
    private readonly now: () => number = Date.now,
    private readonly claimsKeptMs = CLAIMS_KEPT_MS,
  ) {
    // An expired token's claims are never used again (`known` answers null): they are removed when
    // the token expires, not kept until 100,000 newer tokens push them out (a 16-minute soak, whose
    // tokens live a day, held 13,000). And at most CLAIMS_KEPT_MS whatever the token's lifetime,
    // after which a token still in use is verified again: memory is then bounded by the tokens
    // verified in that window, not by the configured lifetime (heap snapshots of a soak with
    // day-long tokens showed 10,000 more kept tokens, ~700 bytes each, every 12 minutes).
    // Removal goes through an expiry schedule swept every second, not a timer per token
    // (lru-cache's `ttlAutopurge`): a 400-user load test held 7,157 such timers after 8 minutes,
    // each with its closure and context, ~40 % of what a kept token cost (heap snapshots).
    this.verified = new LRUCache<string, AccessClaims>({ max: 100_000 });
    this.sweeper = setInterval(() => this.removeExpired(), EXPIRY_SLOT_MS);
    this.sweeper.unref();
  }

  /** Removes the kept claims whose time is up (a few thousand at most per call). */
  removeExpired(): number {
    return this.expiry.sweep(this.verified, performance.now(), 5_000);
  }

  /** Stops the periodic removal (the process is closing). */
  close(): void {
    clearInterval(this.sweeper);
  }

  /** Verified tokens whose claims are kept (expired ones are removed as they expire). */
  get verifiedCount(): number {
    return this.verified.size;
  }

  async issue(userId: string, sessionId: string): Promise<{ token: string; expiresIn: number }> {
    const token = await new SignJWT({ sid: sessionId })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject(userId)
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt(Math.floor(this.now() / 1000))
      .setExpirationTime(Math.floor(this.now() / 1000) + this.ttlSeconds)
      .setJti(randomBytes(9).toString('base64url'))
      .sign(this.secret);
    return { token, expiresIn: this.ttlSeconds };
  }

  /**
   * Sync, for the hot path: the claims of a token verified before (null once it has expired);
   * undefined when this token was never verified here (`verify` must run).
   */
  known(token: string): AccessClaims | null | undefined {
    const claims = this.verified.get(token);
    if (!claims) return undefined;
    return claims.exp > this.now() / 1000 ? claims : null;
  }

  /** The claims of a valid, unexpired token; null for anything else. */
  async verify(token: string): Promise<AccessClaims | null> {
    const nowSeconds = this.now() / 1000;
    const known = this.verified.get(token);
    if (known) return known.exp > nowSeconds ? known : null;
    try {
      const { payload } = await jwtVerify(token, this.secret, {
        algorithms: ['HS256'],
        issuer: ISSUER,
        audience: AUDIENCE,
        currentDate: new Date(this.now()),
        requiredClaims: ['sub', 'exp', 'sid'],
      });
      // Ids are checked once here, so the claims kept for later requests need no check per use.
      if (
        typeof payload.sub !== 'string' ||
        typeof payload.sid !== 'string' ||
        typeof payload.exp !== 'number' ||
        !UUID.test(payload.sub) ||
        !UUID.test(payload.sid)
      ) {
        return null;
      }
      const claims: AccessClaims = { sub: payload.sub, sid: payload.sid, exp: payload.exp };
      const untilExpiry = Math.max(1, Math.ceil((claims.exp - nowSeconds) * 1000));
      const keptMs = Math.min(untilExpiry, this.claimsKeptMs);
      this.verified.set(token, claims, { ttl: keptMs });
      this.expiry.add(token, performance.now(), keptMs);
      return claims;
    } catch (error) {
      if (error instanceof joseErrors.JOSEError) return null;
      throw error;
    }
  }
}

/** Every refresh token starts with this, whether random (a new session) or derived (a rotation). */
export const REFRESH_PREFIX = 'rt_';
/** Every service key starts with this: how authentication tells a key from an access token. */
export const KEY_PREFIX = 'vk_';

/** Opaque secrets (refresh tokens, service keys): 256 random bits, stored only as SHA-256. */
export function newSecret(prefix: string): string {
  return `${prefix}${randomBytes(32).toString('base64url')}`;
}

export function sha256(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

/**
 * The refresh token that replaces a presented one when it is rotated: an HMAC of the presented
 * token under a key derived from the server's signing secret (and kept apart from it by a label).
 *
 * Why derived rather than random: within the reuse interval a second caller presenting the same
 * token (two tabs refreshing at once) must get the very successor the first caller got, and the
 * database keeps only SHA-256 hashes of refresh tokens, never one in clear. Deriving it means
 * nothing new is stored: computing a successor needs the parent token in clear, which only its
 * holder has, and the server secret. Whoever holds the parent could refresh with it anyway; and
 * whoever holds the server secret can already sign access tokens for anyone.
 */
export function refreshSuccessors(serverSecret: Uint8Array): (parent: string) => string {
  const key = createHmac('sha256', serverSecret).update('velro refresh-token successor v1').digest();
  return (parent) =>
    `${REFRESH_PREFIX}${createHmac('sha256', key).update(parent, 'utf8').digest('base64url')}`;
}
