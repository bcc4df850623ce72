import { Readable } from 'node:stream';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { accessContext } from '../../platform/http/context.js';
import { AppError, notFound } from '../../platform/http/errors.js';
import { errors } from '../../platform/http/schemas.js';
import type { MediaRow } from './rows.js';
import { MediaBytes, MediaParams, MediaRedirect } from './schemas.js';
import type { MediaSigner } from './signing.js';
import type { MediaStorage } from './storage.js';

export interface MediaRouteDeps {
  /** A media row by id (immutable rows, cached: see rows.ts). */
  mediaRow: (mediaId: string) => Promise<MediaRow | null>;
  /** The deletion check, from cached authorization facts at least `minRevision` fresh. */
  generationIsLive: (generationId: string, minRevision: number) => Promise<boolean>;
  signer: MediaSigner;
  storage: MediaStorage;
  now?: () => number;
}

/** `bytes=a-b`, `bytes=a-` or `bytes=-n`; one range only. Null when unsatisfiable or malformed. */
export function parseRange(header: string, size: number): { start: number; end: number } | null {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '') || size === 0) return null;
  let start: number;
  let end: number;
  if (match[1] === '') {
    const suffix = Number(match[2]);
    if (suffix === 0) return null;
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(match[1]);
    end = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start > end || start >= size) return null;
  return { start, end };
}

/**
 * `GET /media/:token`: no bearer needed, the token is the capability. The signature and expiry are
 * checked without I/O; then the deletion check (media of a deleted generation, or of a generation
 * in a deleted project, is gone), from the caches.
 */
export async function mediaRoutes(fastify: FastifyInstance, deps: MediaRouteDeps) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const now = deps.now ?? Date.now;

  app.get(
    '/media/:token',
    {
      config: { public: true, routeClass: 'fast', consistencyToken: 'reads' },
      schema: {
        operationId: 'getMedia',
        summary:
          'The bytes behind a signed media URL (supports Range and If-None-Match), or a redirect to them',
        description: 'The signed token is the credential: no bearer token is needed.',
        tags: ['media'],
        params: MediaParams,
        response: {
          200: {
            description: 'The whole file',
            content: { 'image/*': { schema: MediaBytes } },
          },
          206: {
            description: 'The requested byte range',
            content: { 'image/*': { schema: MediaBytes } },
          },
          302: MediaRedirect,
          ...errors(403, 404, 410, 416),
        },
      },
    },
    async (request, reply) => {
      const check = deps.signer.verify(request.params.token);
      if (!check.ok && check.reason === 'expired')
        throw new AppError(410, 'expired', 'This media URL has expired');
      if (!check.ok) throw new AppError(403, 'invalid_signature', 'This media URL is not valid');
      const row = await deps.mediaRow(check.mediaId);
      // Warm, this costs no query: the media row is immutable and the generation's and project's
      // deletion flags are cached facts, invalidated like every other.
      // A consistency token (a delete's, say) is honoured here like on every read.
      const minRevision = accessContext(request).minRevision ?? 0;
      if (!row || !(await deps.generationIsLive(row.generation_id, minRevision)))
        throw notFound('Media not found');

      const etag = `"${row.sha256}"`;
      const secondsLeft = check.expiresAt - now() / 1000;
      const maxAge = Math.max(0, Math.floor(secondsLeft));
      const ifNoneMatch = request.headers['if-none-match'];
      if (ifNoneMatch?.split(',').some((t) => t.trim() === etag || t.trim() === '*')) {
        reply.header('etag', etag);
        reply.header('cache-control', `private, max-age=${maxAge}`);
        return reply.code(304 as 200).send();
      }
      // Redirect mode (MEDIA_REDIRECT): every check above is done; the bytes come from the store
      // through a link that dies before this URL does. Nobody may cache the redirect itself.
      const direct = deps.storage.directUrl
        ? await deps.storage.directUrl(row.storage_key, secondsLeft)
        : null;
      if (direct) {
        reply.header('cache-control', 'private, no-store');
        reply.header('location', direct);
        return reply.code(302 as 200).send();
      }
      const size = row.bytes;
      const rangeHeader = request.headers.range;
      const range = rangeHeader ? parseRange(rangeHeader, size) : undefined;
      if (range === null) {
        reply.header('accept-ranges', 'bytes');
        reply.header('content-range', `bytes */${size}`);
        throw new AppError(416, 'range_not_satisfiable', 'The requested range is outside the file');
      }
      // Opened before any header is set: a store that cannot be read (down, object missing)
      // answers with a plain error, not with the headers of an image that never comes. HEAD needs
      // no bytes: the headers come from the media row, and a network store is not asked at all.
      const body =
        request.method === 'HEAD' ? Readable.from([]) : await deps.storage.stream(row.storage_key, range);
      reply.header('etag', etag);
      reply.header('cache-control', `private, max-age=${maxAge}`);
      reply.header('accept-ranges', 'bytes');
      reply.header('content-type', row.mime);
      if (range) {
        reply.code(206);
        reply.header('content-range', `bytes ${range.start}-${range.end}/${size}`);
        reply.header('content-length', String(range.end - range.start + 1));
      } else {
        reply.header('content-length', String(size));
      }
      return reply.send(body);
    },
  );
}
