import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';

export interface StoredObject {
  key: string;
  sha256: string;
  bytes: number;
}

/** Where media bytes live. The database keeps only the key. */
export interface MediaStorage {
  /** Which store this is, for logs and the start-up banner. */
  readonly kind: 'local' | 's3';
  put(data: Buffer, mime: string): Promise<StoredObject>;
  read(key: string): Promise<Buffer>;
  /**
   * A stream of bytes [start, end] (inclusive), or of the whole object, once the store has
   * answered: a missing object or an unreachable store rejects here, before anything is sent.
   */
  stream(key: string, range?: { start: number; end: number }): Promise<Readable>;
  /** The object's size in bytes; null when there is no such object. */
  size(key: string): Promise<number | null>;
  /**
   * Present only on a store configured to send clients to it directly (MEDIA_REDIRECT): a URL
   * that serves the object (with Range) for at most `maxSeconds`, and for no longer than the
   * store's own limit. Null when it cannot be made (less than a second left): stream instead.
   */
  directUrl?(key: string, maxSeconds: number): Promise<string | null>;
  /** Releases connections (a network store); the local store holds none. */
  close?(): void;
}

const EXTENSIONS: Record<string, string> = {
  'image/png': 'png',
  'image/webp': 'webp',
  'image/jpeg': 'jpg',
  'image/gif': 'gif',
};

const KEY_SHAPE = /^[0-9a-f]{64}\.[a-z0-9]{2,5}$/;

/**
 * The content address of some bytes: the SHA-256 of the bytes and an extension from the MIME type.
 * Every store uses these keys, so moving media between stores keeps every database row valid.
 */
export function contentKey(data: Buffer, mime: string): { key: string; sha256: string } {
  const sha256 = createHash('sha256').update(data).digest('hex');
  return { key: `${sha256}.${EXTENSIONS[mime] ?? 'bin'}`, sha256 };
}

/** Throws on anything that is not a key `contentKey` could have made (no path tricks). */
export function checkKey(key: string): string {
  if (!KEY_SHAPE.test(key)) throw new Error('invalid storage key');
  return key;
}

/**
 * Content-addressed files under one folder: the key is the SHA-256 of the bytes, so identical
 * outputs are stored once and a key can never point at different bytes. Writes go to a temporary
 * name first and are renamed into place, so a reader never sees half a file.
 */
export function createLocalStorage(root: string): MediaStorage {
  const pathOf = (key: string) => join(root, key.slice(0, 2), key.slice(2, 4), checkKey(key));
  return {
    kind: 'local',
    async put(data, mime) {
      const { key, sha256 } = contentKey(data, mime);
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
    async stream(key, range) {
      // The stream closes the file when it ends or is destroyed (a client that went away).
      const file = await open(pathOf(key), 'r');
      return file.createReadStream(range ? { start: range.start, end: range.end } : {});
    },
    async size(key) {
      const info = await stat(pathOf(key)).catch(() => null);
      return info ? info.size : null;
    },
  };
}
