import { join } from 'node:path';
import type { Config } from '../../config.js';
import { createS3Storage } from './s3-storage.js';
import { createLocalStorage, type MediaStorage } from './storage.js';

type StorageConfig = Pick<
  Config,
  | 'DATA_DIR'
  | 'MEDIA_STORE'
  | 'S3_BUCKET'
  | 'S3_ENDPOINT'
  | 'S3_REGION'
  | 'S3_FORCE_PATH_STYLE'
  | 'MEDIA_REDIRECT'
  | 'MEDIA_REDIRECT_TTL_SECONDS'
>;

/** The media store the configuration names: `DATA_DIR/media` by default, or an S3 bucket. */
export function openMediaStorage(config: StorageConfig): MediaStorage {
  if (config.MEDIA_STORE === 's3') {
    // loadConfig refuses MEDIA_STORE=s3 without a bucket; this guards other callers.
    if (!config.S3_BUCKET) throw new Error('MEDIA_STORE=s3 needs S3_BUCKET');
    return createS3Storage({
      bucket: config.S3_BUCKET,
      ...(config.S3_ENDPOINT ? { endpoint: config.S3_ENDPOINT } : {}),
      region: config.S3_REGION,
      forcePathStyle: config.S3_FORCE_PATH_STYLE,
      redirectTtlSeconds: config.MEDIA_REDIRECT ? config.MEDIA_REDIRECT_TTL_SECONDS : 0,
    });
  }
  return createLocalStorage(join(config.DATA_DIR, 'media'));
}
