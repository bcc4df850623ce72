import type { FastifyInstance } from 'fastify';
import type { AppDeps } from './app/deps.js';
import { createServer } from './app/fastify.js';
import { createObservability } from './app/observability.js';
import { installOpenApi } from './app/openapi.js';
import { installRequestPipeline } from './app/request-pipeline.js';
import { registerRoutes } from './app/routes.js';
import { wireServices } from './app/services.js';

export { API_PREFIX, type AppDeps } from './app/deps.js';

/**
 * The one application: `server.ts` and every test build it through here, in this order —
 *
 * 1. the server: Fastify with Velro's options, validation and the error envelope (app/fastify.ts);
 * 2. observability: metrics, the tracker and its alert rules, Alertmanager, the dashboard's
 *    activity (app/observability.ts);
 * 3. the request pipeline every request goes through: request id and timing, security headers,
 *    the closing answer, admission control, load shedding, CORS, rate limits (app/request-pipeline.ts);
 * 4. the OpenAPI document and /docs (app/openapi.ts);
 * 5. the services, wired to their pools and to each other, and authentication (app/services.ts);
 * 6. the routes (app/routes.ts).
 */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const server = createServer(deps);
  const observability = createObservability(server, deps);
  await installRequestPipeline(server, deps, observability);
  await installOpenApi(server.app);
  const services = wireServices(server, deps, observability);
  await registerRoutes(server, deps, services, observability);
  return server.app;
}
