import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { serviceUnavailable } from '../../platform/http/errors.js';
import { checkKey, contentKey, type MediaStorage } from './storage.js';

export interface S3StorageOptions {
  bucket: string;
  /** An S3-compatible endpoint (MinIO, R2, GCS interoperability); unset: AWS S3 of `region`. */
  endpoint?: string;
  region: string;
  /** `https://host/bucket/key` instead of `https://bucket.host/key` (MinIO and most self-hosted stores). */
  forcePathStyle: boolean;
  /**
   * Longest life of a presigned GET handed to a client (redirect mode); 0: no redirects, Velro
   * streams every byte itself.
   */
  redirectTtlSeconds: number;
}

/** `Retry-After` when the store cannot be reached. */
const STORE_RETRY_AFTER_SECONDS = 2;
const NETWORK_ERRORS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
]);

/** S3 refuses presigned URLs that live longer than seven days. */
const PRESIGN_MAX_SECONDS = 7 * 86_400;

/**
 * Media in an S3-compatible bucket, under the same content-addressed keys as the local store
 * (`<sha256>.<ext>`, flat): any instance with the bucket's credentials serves any media, whichever
 * worker rendered it. Credentials come from the SDK's default chain (`AWS_ACCESS_KEY_ID` /
 * `AWS_SECRET_ACCESS_KEY`, or a role of the machine).
 */
export function createS3Storage(options: S3StorageOptions): MediaStorage {
  const client = new S3Client({
    region: options.region,
    ...(options.endpoint ? { endpoint: options.endpoint } : {}),
    forcePathStyle: options.forcePathStyle,
    // Checksums only where the API requires them: several S3-compatible stores refuse or ignore
    // the newer checksum headers, and integrity is checked with Content-MD5 on every upload.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000 },
  });
  const { bucket } = options;

  const headSize = async (key: string): Promise<number | null> => {
    try {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: checkKey(key) }));
      return head.ContentLength ?? null;
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  };

  const storage: MediaStorage = {
    kind: 's3',
    async put(data, mime) {
      const { key, sha256 } = contentKey(data, mime);
      // The key is the content's hash: an object of that key and size holds these bytes already.
      if ((await headSize(key)) !== data.length) {
        await client.send(
          new PutObjectCommand({
            Bucket: bucket,
            Key: key,
            Body: data,
            ContentType: mime,
            ContentLength: data.length,
            ContentMD5: createHash('md5').update(data).digest('base64'),
          }),
        );
      }
      return { key, sha256, bytes: data.length };
    },
    async read(key) {
      const object = await client.send(new GetObjectCommand({ Bucket: bucket, Key: checkKey(key) }));
      if (!object.Body) throw new Error(`media object ${key} has no body`);
      return Buffer.from(await object.Body.transformToByteArray());
    },
    async stream(key, range) {
      try {
        const object = await client.send(
          new GetObjectCommand({
            Bucket: bucket,
            Key: checkKey(key),
            ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}),
          }),
        );
        if (!object.Body) throw new Error(`media object ${key} has no body`);
        // The response body itself: destroying it (a client that went away) ends the store's request.
        return object.Body as Readable;
      } catch (error) {
        throw storeUnavailable(error)
          ? serviceUnavailable(STORE_RETRY_AFTER_SECONDS, 'The media store is temporarily unavailable')
          : error;
      }
    },
    size: headSize,
    close: () => client.destroy(),
  };
  if (options.redirectTtlSeconds > 0) {
    const limit = Math.min(options.redirectTtlSeconds, PRESIGN_MAX_SECONDS);
    storage.directUrl = async (key, maxSeconds) => {
      const expiresIn = Math.floor(Math.min(limit, maxSeconds));
      if (expiresIn < 1) return null;
      return getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: checkKey(key) }), {
        expiresIn,
      });
    };
  }
  return storage;
}

function isNotFound(error: unknown): boolean {
  return (
    error instanceof S3ServiceException &&
    (error.name === 'NotFound' || error.name === 'NoSuchKey' || error.$metadata.httpStatusCode === 404)
  );
}

/** The store is down, overloaded or unreachable (worth retrying), as opposed to a wrong request. */
function storeUnavailable(error: unknown): boolean {
  if (error instanceof S3ServiceException) {
    const status = error.$metadata.httpStatusCode ?? 0;
    return status >= 500 || status === 429 || error.name === 'SlowDown';
  }
  const { code, name } = error as { code?: unknown; name?: unknown };
  return (typeof code === 'string' && NETWORK_ERRORS.has(code)) || name === 'TimeoutError';
}
