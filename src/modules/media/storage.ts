import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';

export interface StoredObject {
  key: string;
  sha256: string;
  bytes: number;
}

/** Where media bytes live. The database keeps only the key. */
export interface MediaStorage {
  put(data: Buffer, mime: string): Promise<StoredObject>;
  read(key: string): Promise<Buffer>;
  /** A stream of bytes [start, end] (inclusive), or of the whole object. */
  stream(key: string, range?: { start: number; end: number }): Readable;
  size(key: string): Promise<number | null>;
}

const EXTENSIONS: Record<string, string> = {
  'image/png': 'png',
  'image/webp': 'webp',
  'image/jpeg': 'jpg',
  'image/gif': 'gif',
};

/**
 * Content-addressed files under one folder: the key is the SHA-256 of the bytes, so identical
 * outputs are stored once and a key can never point at different bytes. Writes go to a temporary
 * name first and are renamed into place, so a reader never sees half a file.
 */
export function createLocalStorage(root: string): MediaStorage {
  const pathOf = (key: string) => {
    if (!/^[0-9a-f]{64}\.[a-z0-9]{2,5}$/.test(key)) throw new Error('invalid storage key');
    return join(root, key.slice(0, 2), key.slice(2, 4), key);
  };
  return {
    async put(data, mime) {
      const sha256 = createHash('sha256').update(data).digest('hex');
      const key = `${sha256}.${EXTENSIONS[mime] ?? 'bin'}`;
      const path = pathOf(key);
      const existing = await stat(path).catch(() => null);
      if (existing?.size !== data.length) {
        await mkdir(dirname(path), { recursive: true });
        const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`;
        await writeFile(temporary, data);
        await rename(temporary, path);
      }
      return { key, sha256, bytes: data.length };
    },
    read: (key) => readFile(pathOf(key)),
    stream: (key, range) =>
      createReadStream(pathOf(key), range ? { start: range.start, end: range.end } : {}),
    async size(key) {
      const info = await stat(pathOf(key)).catch(() => null);
      return info ? info.size : null;
    },
  };
}
