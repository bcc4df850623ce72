import type { Kysely } from 'kysely';
import type { BulkCache } from '../../platform/cache/bulk-cache.js';
import type { DB } from '../../platform/db/schema.js';

/** What serving a media file needs to know of it: where its bytes are, what they are, whose. */
export interface MediaRow {
  storage_key: string;
  mime: string;
  bytes: number;
  sha256: string;
  generation_id: string;
}

/**
 * A media row by id, or null. Rows never change once written, so they are kept in the bulk
 * segment of L1 (`media|<id>`): warm, serving a file costs no query.
 */
export function mediaRowReader(db: Kysely<DB>, bulk: BulkCache) {
  return (mediaId: string): Promise<MediaRow | null> =>
    bulk.get(`media|${mediaId}`, async () => {
      const found = await db
        .selectFrom('media')
        .select(['storage_key', 'mime', 'bytes', 'sha256', 'generation_id'])
        .where('id', '=', mediaId)
        .executeTakeFirst();
      return found ?? null;
    });
}
