import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../../config.js';

export interface Secrets {
  jwtSecret: Uint8Array;
  mediaSigningSecret: Uint8Array;
}

/**
 * Signing secrets. Production must provide them (config refuses to start otherwise). Elsewhere, a
 * missing secret is generated once and kept in DATA_DIR, so tokens and media URLs survive restarts.
 */
export async function resolveSecrets(
  config: Pick<Config, 'JWT_SECRET' | 'MEDIA_SIGNING_SECRET' | 'DATA_DIR'>,
  warn: (msg: string) => void,
): Promise<Secrets> {
  if (config.JWT_SECRET && config.MEDIA_SIGNING_SECRET) {
    return { jwtSecret: utf8(config.JWT_SECRET), mediaSigningSecret: utf8(config.MEDIA_SIGNING_SECRET) };
  }
  const file = join(config.DATA_DIR, 'secrets.json');
  let stored: { jwt_secret?: string; media_signing_secret?: string } = {};
  if (existsSync(file)) stored = JSON.parse(await readFile(file, 'utf8'));
  if (!stored.jwt_secret || !stored.media_signing_secret) {
    stored = {
      jwt_secret: stored.jwt_secret ?? randomBytes(48).toString('base64url'),
      media_signing_secret: stored.media_signing_secret ?? randomBytes(48).toString('base64url'),
    };
    await mkdir(config.DATA_DIR, { recursive: true });
    await writeFile(file, JSON.stringify(stored, null, 2), { mode: 0o600 });
  }
  warn(
    `using signing secrets generated and kept in ${file}; set JWT_SECRET and MEDIA_SIGNING_SECRET in production`,
  );
  return {
    jwtSecret: utf8(config.JWT_SECRET ?? (stored.jwt_secret as string)),
    mediaSigningSecret: utf8(config.MEDIA_SIGNING_SECRET ?? (stored.media_signing_secret as string)),
  };
}

const utf8 = (s: string) => new TextEncoder().encode(s);
