import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { accessContext, sendRevision } from '../../platform/http/context.js';
import { badRequest, tooManyRequests } from '../../platform/http/errors.js';
import { errors, PageQuery, page } from '../../platform/http/schemas.js';
import { principalOf } from '../auth/authenticate.js';
import {
  AddMemberBody,
  Member,
  MemberParams,
  MyTeam,
  Team,
  TeamNameBody,
  TeamParams,
  UpdateMemberBody,
} from './schemas.js';
import type { TeamsService } from './service.js';

const tags = ['teams'];
const read = { scope: 'projects:read' as const };
const write = { scope: 'projects:write' as const };

export async function teamRoutes(
  fastify: FastifyInstance,
  opts: { service: TeamsService; memberAddsByEmailPerHour: number },
) {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const { service } = opts;
  // Adding by email says whether an account exists (201 or 404): limit how often one person may
  // ask, per actor and shared across instances like the login limits.
  const addsByEmail = app.createRateLimit({
    max: opts.memberAddsByEmailPerHour,
    timeWindow: 3_600_000,
    keyGenerator: (req) => `member-email:${req.principal?.userId ?? req.ip}`,
  });

  app.post(
    '/teams',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'createTeam',
        summary: 'Create a team; you become its owner',
        tags,
        body: TeamNameBody,
        response: { 201: Team, ...errors(400, 401, 403) },
      },
    },
    async (request, reply) => {
      const created = await service.create(principalOf(request).userId, request.body, accessContext(request));
      await sendRevision(reply, created.revision);
      return reply.code(201).send(created.value);
    },
  );

  app.get(
    '/teams',
    {
      config: read,
      schema: {
        operationId: 'listTeams',
        summary: 'Teams I am an active member of, newest first',
        tags,
        querystring: Type.Object(PageQuery),
        response: {
          200: page(MyTeam),
          ...errors(400, 401, 403),
        },
      },
    },
    async (request) =>
      service.listMine(
        principalOf(request).userId,
        { limit: request.query.limit ?? 20, cursor: request.query.cursor },
        accessContext(request),
      ),
  );

  app.get(
    '/teams/:id',
    {
      config: read,
      schema: {
        operationId: 'getTeam',
        summary: 'A team I belong to',
        tags,
        params: TeamParams,
        response: { 200: Team, ...errors(401, 403, 404) },
      },
    },
    async (request) => service.get(principalOf(request).userId, request.params.id, accessContext(request)),
  );

  app.patch(
    '/teams/:id',
    {
      config: write,
      schema: {
        operationId: 'updateTeam',
        summary: 'Rename a team (owners and admins)',
        tags,
        params: TeamParams,
        body: TeamNameBody,
        response: { 200: Team, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) =>
      service.rename(principalOf(request).userId, request.params.id, request.body, accessContext(request)),
  );

  app.delete(
    '/teams/:id',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'deleteTeam',
        summary: 'Delete a team (owners only); its projects stay with their owners',
        tags,
        params: TeamParams,
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

  app.get(
    '/teams/:id/members',
    {
      config: read,
      schema: {
        operationId: 'listTeamMembers',
        summary: 'Members of a team I belong to',
        tags,
        params: TeamParams,
        querystring: Type.Object(PageQuery),
        response: { 200: page(Member), ...errors(400, 401, 403, 404) },
      },
    },
    async (request) =>
      service.listMembers(
        principalOf(request).userId,
        request.params.id,
        { limit: request.query.limit ?? 20, cursor: request.query.cursor },
        accessContext(request),
      ),
  );

  app.post(
    '/teams/:id/members',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'addTeamMember',
        summary: 'Add a member by email or user id (owners and admins; only owners add owners)',
        tags,
        params: TeamParams,
        body: AddMemberBody,
        response: { 201: Member, ...errors(400, 401, 403, 404, 409, 429) },
      },
    },
    async (request, reply) => {
      const { email, user_id } = request.body;
      if ((email === undefined) === (user_id === undefined)) {
        throw badRequest('Give exactly one of email or user_id', [
          { field: 'body.email', message: 'or body.user_id is required, not both' },
        ]);
      }
      if (email !== undefined) {
        const state = await addsByEmail(request);
        if (!state.isAllowed && state.isExceeded)
          throw tooManyRequests(
            Math.max(1, state.ttlInSeconds),
            `At most ${opts.memberAddsByEmailPerHour} members added by email an hour; add by user id instead`,
          );
      }
      const added = await service.addMember(
        principalOf(request).userId,
        request.params.id,
        request.body,
        accessContext(request),
      );
      await sendRevision(reply, added.revision);
      return reply.code(201).send(added.value);
    },
  );

  app.patch(
    '/teams/:id/members/:userId',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'updateTeamMember',
        summary: "Change a member's role or active flag (the last owner stays an owner)",
        tags,
        params: MemberParams,
        body: UpdateMemberBody,
        response: { 200: Member, ...errors(400, 401, 403, 404, 409) },
      },
    },
    async (request, reply) => {
      const updated = await service.updateMember(
        principalOf(request).userId,
        request.params.id,
        request.params.userId,
        request.body,
        accessContext(request),
      );
      await sendRevision(reply, updated.revision);
      return updated.value;
    },
  );

  app.delete(
    '/teams/:id/members/:userId',
    {
      config: { ...write, consistencyToken: 'returns' },
      schema: {
        operationId: 'removeTeamMember',
        summary: 'Remove a member, or leave the team when it is you',
        tags,
        params: MemberParams,
        response: { 204: Type.Null(), ...errors(401, 403, 404, 409) },
      },
    },
    async (request, reply) => {
      const done = await service.removeMember(
        principalOf(request).userId,
        request.params.id,
        request.params.userId,
        accessContext(request),
      );
      await sendRevision(reply, done.revision);
      return reply.code(204).send(null);
    },
  );
}
