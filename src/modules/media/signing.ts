import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Signed media URLs: `<payload>.<mac>` in base64url, where the payload is the media id (16 bytes)
 * and the expiry (seconds since the epoch, 8 bytes) and the MAC is HMAC-SHA256 over the payload.
 * Verifying needs no database: only the deletion check does.
 */
export type TokenCheck =
  | { ok: true; mediaId: string; expiresAt: number }
  | { ok: false; reason: 'malformed' | 'bad_signature' }
  | { ok: false; reason: 'expired'; mediaId: string };

const PAYLOAD_BYTES = 24;
/** 24 bytes are 32 base64url characters; a 32-byte MAC is 43 (no padding). */
const PAYLOAD_CHARS = 32;
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{32}\.[A-Za-z0-9_-]{43}$/;

export class MediaSigner {
  constructor(
    private readonly secret: Uint8Array,
    private readonly now: () => number = Date.now,
  ) {}

  sign(mediaId: string, ttlSeconds: number): { token: string; expiresAt: number } {
    const expiresAt = Math.floor(this.now() / 1000) + ttlSeconds;
    const payload = Buffer.alloc(PAYLOAD_BYTES);
    Buffer.from(mediaId.replace(/-/g, ''), 'hex').copy(payload, 0);
    payload.writeBigUInt64BE(BigInt(expiresAt), 16);
    return {
      token: `${payload.toString('base64url')}.${this.mac(payload).toString('base64url')}`,
      expiresAt,
    };
  }

  verify(token: string): TokenCheck {
    // Strict: exactly the shape `sign` writes. Node's base64url decoder is lenient (it skips
    // characters outside the alphabet and ignores the unused low bits of the last character), so
    // without this, many spellings of one token would all pass.
    if (!TOKEN_SHAPE.test(token)) return { ok: false, reason: 'malformed' };
    const encodedPayload = token.slice(0, PAYLOAD_CHARS);
    const encodedMac = token.slice(PAYLOAD_CHARS + 1);
    const payload = Buffer.from(encodedPayload, 'base64url');
    const given = Buffer.from(encodedMac, 'base64url');
    if (payload.toString('base64url') !== encodedPayload || given.toString('base64url') !== encodedMac)
      return { ok: false, reason: 'malformed' };
    // Constant-time: the comparison must not tell an attacker how many bytes they got right.
    if (!timingSafeEqual(given, this.mac(payload))) return { ok: false, reason: 'bad_signature' };
    const hex = payload.subarray(0, 16).toString('hex');
    const mediaId = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    const expiresAt = Number(payload.readBigUInt64BE(16));
    if (expiresAt * 1000 <= this.now()) return { ok: false, reason: 'expired', mediaId };
    return { ok: true, mediaId, expiresAt };
  }

  private mac(payload: Buffer): Buffer {
    return createHmac('sha256', this.secret).update(payload).digest();
  }
}
