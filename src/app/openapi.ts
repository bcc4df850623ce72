import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import { auditSchemas } from '../modules/audit/schemas.js';
import { User } from '../modules/auth/schemas.js';
import { serviceKeySchemas } from '../modules/service-keys/schemas.js';
import { documentConsistencyToken } from '../platform/http/consistency-docs.js';
import { ErrorEnvelope } from '../platform/http/schemas.js';
import { documentSecurity } from '../platform/http/security-docs.js';

/** The shared schemas, the OpenAPI document every route adds itself to, and the /docs pages. */
export async function installOpenApi(app: FastifyInstance): Promise<void> {
  app.addSchema(ErrorEnvelope);
  app.addSchema(User);
  for (const schema of serviceKeySchemas) app.addSchema(schema);
  for (const schema of auditSchemas) app.addSchema(schema);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Velro API',
        version: '1.0.0',
        description: 'AI media generation with fast, never-wrong authorization.',
      },
      servers: [{ url: '/', description: 'This service (every path below carries its full prefix)' }],
      tags: [
        { name: 'auth', description: 'Accounts, sessions and tokens' },
        { name: 'service keys', description: 'Long-lived, scoped keys for programs (vk_…)' },
        { name: 'teams', description: 'Teams and their members' },
        { name: 'projects', description: 'Projects, optionally shared with a team' },
        { name: 'models', description: 'The model catalogue' },
        { name: 'generations', description: 'Generations: create, follow, list, manage' },
        { name: 'media', description: 'Signed, expiring media URLs' },
        { name: 'credits', description: 'Credit balance and ledger' },
        { name: 'authorization', description: 'Permission checks, lookups and explanations' },
        { name: 'batch', description: 'Several GET requests in one' },
        { name: 'admin', description: 'Operator routes (role admin)' },
        { name: 'performance', description: 'Latency, cache and target reports' },
        { name: 'operations', description: 'Liveness and readiness' },
      ],
      components: {
        securitySchemes: {
          bearerAuth: {
            type: 'http',
            scheme: 'bearer',
            description: 'An access token from /auth/login, or a service key (vk_…)',
          },
          opsToken: {
            type: 'http',
            scheme: 'bearer',
            description: 'OPS_TOKEN, for the operational routes when the operator has set one',
          },
        },
      },
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => String(json.$id ?? `def-${i}`) },
    // Security and the consistency token are both written from the route's policy (its `config`).
    transform: (input) => documentConsistencyToken({ ...input, schema: documentSecurity(input).schema }),
  });
  await app.register(async (docs) => {
    // The documentation is for anyone who can reach the service, like the models list.
    docs.addHook('onRoute', (route) => {
      route.config = { ...route.config, public: true, routeClass: 'fast', page: true };
    });
    await docs.register(swaggerUi, {
      routePrefix: '/docs',
      staticCSP: true,
      // Its policy asks the browser to upgrade every request to https: over plain http at an address
      // other than localhost that leaves the page blank. HSTS (over https) does the upgrading instead.
      transformStaticCSP: (header) => header.replace(/\s*upgrade-insecure-requests;?/, ''),
      uiConfig: { deepLinking: true },
    });
  });
}
