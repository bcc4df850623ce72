import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import type { ModelCatalogue } from './catalogue.js';
import { ModelList } from './schemas.js';

export async function modelRoutes(fastify: FastifyInstance, opts: { catalogue: ModelCatalogue }) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  app.get(
    '/models',
    {
      config: { public: true },
      schema: {
        operationId: 'listModels',
        summary: 'The models you can generate with, their cost in credits and their limits',
        tags: ['models'],
        response: { 200: ModelList },
      },
    },
    async (_request, reply) => {
      reply.header('cache-control', 'public, max-age=60');
      return {
        items: opts.catalogue.active().map((m) => ({
          id: m.id,
          name: m.name,
          kind: m.kind,
          description: m.description,
          cost_credits: m.cost_credits,
          limits: {
            min_width: m.min_width,
            max_width: m.max_width,
            min_height: m.min_height,
            max_height: m.max_height,
            max_steps: m.max_steps,
          },
          defaults: { width: m.default_width, height: m.default_height, steps: m.default_steps },
          supports_reference_image: m.supports_reference_image,
        })),
      };
    },
  );
}
