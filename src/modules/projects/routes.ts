import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { accessContext, sendRevision } from '../../platform/http/context.js';
import { errors, IdParams, PageQuery, page } from '../../platform/http/schemas.js';
import { principalOf } from '../auth/authenticate.js';
import { CreateProjectBody, Project, UpdateProjectBody } from './schemas.js';
import type { ProjectsService } from './service.js';

const tags = ['projects'];
const read = { scope: 'projects:read' as const };
const write = { scope: 'projects:write' as const };

export async function projectRoutes(fastify: FastifyInstance, opts: { service: ProjectsService }) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service } = opts;

  app.post(
    '/projects',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'createProject',
        summary: 'Create a project (default visibility: private)',
        tags,
        body: CreateProjectBody,
        response: { 201: Project, ...errors(400, 401, 403, 404) },
      },
    },
    async (request, reply) => {
      const created = await service.create(principalOf(request).userId, request.body, accessContext(request));
      await sendRevision(reply, created.revision);
      return reply.code(201).send(created.value);
    },
  );

  app.get(
    '/projects',
    {
      config: read,
      schema: {
        operationId: 'listProjects',
        summary: 'Every project I can view: mine, my teams’, and public ones; newest first',
        tags,
        querystring: Type.Object(PageQuery),
        response: { 200: page(Project), ...errors(400, 401, 403) },
      },
    },
    async (request) =>
      service.list(
        principalOf(request).userId,
        { limit: request.query.limit ?? 20, cursor: request.query.cursor },
        accessContext(request),
      ),
  );

  app.get(
    '/projects/:id',
    {
      config: read,
      schema: {
        operationId: 'getProject',
        summary: 'A project I can view',
        tags,
        params: IdParams,
        response: { 200: Project, ...errors(401, 403, 404) },
      },
    },
    async (request) => service.get(principalOf(request).userId, request.params.id, accessContext(request)),
  );

  app.patch(
    '/projects/:id',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'updateProject',
        summary: 'Edit name/description (edit), or visibility/team (manage)',
        tags,
        params: IdParams,
        body: UpdateProjectBody,
        response: { 200: Project, ...errors(400, 401, 403, 404) },
      },
    },
    async (request, reply) => {
      const updated = await service.update(
        principalOf(request).userId,
        request.params.id,
        request.body,
        accessContext(request),
      );
      await sendRevision(reply, updated.revision);
      return updated.value;
    },
  );

  app.delete(
    '/projects/:id',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'deleteProject',
        summary: 'Delete a project; it and its generations disappear for everyone at once',
        tags,
        params: IdParams,
        response: { 204: Type.Null(), ...errors(401, 403, 404) },
      },
    },
    async (request, reply) => {
      const done = await service.remove(
        principalOf(request).userId,
        request.params.id,
        accessContext(request),
      );
      await sendRevision(reply, done.revision);
      return reply.code(204).send(null);
    },
  );
}
