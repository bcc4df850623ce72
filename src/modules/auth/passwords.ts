import { type Algorithm, hash, verify } from '@node-rs/argon2';

/** `Algorithm.Argon2id`; the enum is a const enum that cannot be read at run time. */
const ARGON2ID = 2 as Algorithm;

export interface PasswordHasher {
  hash(password: string): Promise<string>;
  verify(hashed: string, password: string): Promise<boolean>;
  /** Spends the same work as a real verification, for callers with no account to check against. */
  verifyNothing(password: string): Promise<void>;
}

/** argon2id, with OWASP's minimum recommended cost by default (19 MiB, 2 passes). */
export function createPasswordHasher(options: { memoryKib: number; timeCost: number }): PasswordHasher {
  const params = { algorithm: ARGON2ID, memoryCost: options.memoryKib, timeCost: options.timeCost };
  const dummy = hash('velro-timing-equaliser', params);
  return {
    hash: (password) => hash(password, params),
    verify: async (hashed, password) => {
      try {
        return await verify(hashed, password);
      } catch {
        // A malformed stored hash verifies nothing; it must never become a 500 on login.
        return false;
      }
    },
    verifyNothing: async (password) => {
      await verify(await dummy, password).catch(() => false);
    },
  };
}
