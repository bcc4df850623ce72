import type { FastifyInstance } from 'fastify';
import { type GenerationCrudOptions, registerGenerationCrudRoutes } from './crud-routes.js';
import { type GenerationEventStreamOptions, registerGenerationEventStream } from './event-stream-routes.js';

export interface GenerationRouteOptions extends GenerationCrudOptions, GenerationEventStreamOptions {
  /** The largest reference image a multipart create may carry (413 beyond). */
  referenceImageMaxBytes: number;
}

/**
 * The generation routes: create, read and manage (crud-routes.ts, multipart creates read by
 * multipart.ts) and the status event stream (event-stream-routes.ts). Both are added to this one
 * plugin instance, which holds the multipart parser.
 */
export async function generationRoutes(fastify: FastifyInstance, opts: GenerationRouteOptions) {
  await fastify.register(import('@fastify/multipart'), {
    limits: { fileSize: opts.referenceImageMaxBytes, files: 1, fields: 10, fieldSize: 64 * 1024, parts: 12 },
  });
  registerGenerationCrudRoutes(fastify, opts);
  registerGenerationEventStream(fastify, opts);
}
