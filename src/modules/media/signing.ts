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
    const dot = token.indexOf('.');
    if (dot <= 0 || token.length > 200) return { ok: false, reason: 'malformed' };
    const payload = Buffer.from(token.slice(0, dot), 'base64url');
    const given = Buffer.from(token.slice(dot + 1), 'base64url');
    if (payload.length !== PAYLOAD_BYTES || given.length !== 32) return { ok: false, reason: 'malformed' };
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
