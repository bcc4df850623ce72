import { randomBytes } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { AccessTokens } from '../src/modules/auth/tokens.js';

const USER = '7d8f5a3e-2b1c-4d6e-9f0a-1b2c3d4e5f60';
const SESSION = '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';

describe('AccessTokens: verified claims are kept only while the token lives', () => {
  it('verifies once, answers from memory after, and drops the claims when the token expires', async () => {
    // The token's clock is a hand-set one (validity never depends on how busy the machine is); the
    // claims are kept for what is left of the token's life, here 300 ms of real time.
    const issuedAt = 1_900_000_000_000;
    const clock = { now: issuedAt };
    const tokens = new AccessTokens(randomBytes(32), 60, () => clock.now);
    const { token } = await tokens.issue(USER, SESSION);
    expect(tokens.known(token)).toBeUndefined(); // never verified here
    clock.now = issuedAt + 59_700;
    const claims = await tokens.verify(token);
    expect(claims).toMatchObject({ sub: USER, sid: SESSION });
    expect(tokens.known(token)).toEqual(claims);
    expect(tokens.verifiedCount).toBe(1);
    // Expired: removed from memory by itself (by the sweep, no timer per token), not left for newer
    // tokens to push out.
    await vi.waitFor(() => expect(tokens.verifiedCount).toBe(0), { timeout: 10_000, interval: 50 });
    expect(tokens.known(token)).toBeUndefined();
    clock.now = issuedAt + 60_000;
    expect(await tokens.verify(token)).toBeNull();
  });

  it('keeps a long-lived token’s claims for at most the keep window, then verifies it again', async () => {
    // A day-long token (ACCESS_TOKEN_TTL_SECONDS=86400) must not hold memory for a day: its claims
    // are kept for the window (here 300 ms of real time), then the next use verifies it afresh.
    const tokens = new AccessTokens(randomBytes(32), 86_400, Date.now, 300);
    const { token } = await tokens.issue(USER, SESSION);
    const claims = await tokens.verify(token);
    expect(claims).toMatchObject({ sub: USER, sid: SESSION });
    expect(tokens.verifiedCount).toBe(1);
    await vi.waitFor(() => expect(tokens.verifiedCount).toBe(0), { timeout: 10_000, interval: 50 });
    expect(tokens.known(token)).toBeUndefined(); // not known: the caller verifies again…
    expect(await tokens.verify(token)).toEqual(claims); // …and the token is still good
    expect(tokens.known(token)).toEqual(claims);
  });

  it('refuses a token signed with another secret, or altered', async () => {
    const tokens = new AccessTokens(randomBytes(32), 60);
    const other = new AccessTokens(randomBytes(32), 60);
    const { token: foreign } = await other.issue(USER, SESSION);
    expect(await tokens.verify(foreign)).toBeNull();
    const { token } = await tokens.issue(USER, SESSION);
    const [h, p, sig] = token.split('.') as [string, string, string];
    const flipped = `${h}.${p}.${sig.slice(0, -2)}${sig.endsWith('AA') ? 'BB' : 'AA'}`;
    expect(await tokens.verify(flipped)).toBeNull();
    expect(tokens.verifiedCount).toBe(0);
  });
});
