import { type Kysely, type QueryCreator, sql } from 'kysely';
import { committedRevision, type Revised, transactRevised } from '../../platform/cache/revision.js';
import { prepared } from '../../platform/db/prepared.js';
import type { ListReader } from '../../platform/db/read-routing.js';
import type { DB } from '../../platform/db/schema.js';
import { badRequest } from '../../platform/http/errors.js';
import { type AuditEvent, auditInsert, auditRequest } from '../audit/service.js';
import type { AccessContext, AuthzEngine, CheckResult } from '../authz/engine.js';
import { lookupResources } from '../authz/lookup.js';
import { decide } from '../authz/policy.js';
import type { Decision, Visibility } from '../authz/types.js';
import type { Project as ProjectView } from './schemas.js';

export interface ProjectsDeps {
  writeDb: Kysely<DB>;
  readDb: Kysely<DB>;
  /** Where lists read (a replica unless the request carries a consistency token); default readDb. */
  listDb?: ListReader;
  authz: AuthzEngine;
}

const COLUMNS = [
  'id',
  'owner_id',
  'team_id',
  'name',
  'description',
  'visibility',
  'created_at',
  'updated_at',
] as const;
type Row = {
  id: string;
  owner_id: string;
  team_id: string | null;
  name: string;
  description: string;
  visibility: Visibility;
  created_at: Date;
  updated_at: Date;
};

function toView(row: Row, decision: Pick<Decision, 'permissions' | 'accessMethod'>): ProjectView {
  return {
    id: row.id,
    owner_id: row.owner_id,
    team_id: row.team_id,
    name: row.name,
    description: row.description,
    visibility: row.visibility,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
    permissions: [...decision.permissions],
    access_method: decision.accessMethod,
  };
}

function requireTeamForTeamVisibility(visibility: Visibility, teamId: string | null) {
  if (visibility === 'team' && teamId === null) {
    throw badRequest('A project visible to its team needs a team', [
      { field: 'body.team_id', message: "is required when visibility is 'team'" },
    ]);
  }
}

// Fixed-shape statements of the request paths, compiled once (platform/db/prepared.ts).

const projectByIdQuery = prepared((db: Kysely<DB>, p: { projectId: string }) =>
  db.selectFrom('projects').select(COLUMNS).where('id', '=', p.projectId),
);

/** A project and its audit event, one statement. */
const insertProjectQuery = prepared(
  (
    db: Kysely<DB>,
    p: {
      ownerId: string;
      teamId: string | null;
      name: string;
      description: string;
      visibility: Visibility;
      requestId: string;
      ip: string | null;
    },
  ) =>
    db
      .with('created', (qb) =>
        qb
          .insertInto('projects')
          .values({
            owner_id: p.ownerId,
            team_id: p.teamId,
            name: p.name,
            description: p.description,
            visibility: p.visibility,
          })
          .returning(COLUMNS),
      )
      .with('audited', (qb) =>
        qb
          .insertInto('audit_events')
          .columns(['actor_id', 'action', 'resource_type', 'resource_id', 'request_id', 'ip', 'details'])
          .expression(
            qb
              .selectFrom('created')
              .select([
                'owner_id',
                sql<string>`'project.create'`.as('action'),
                sql<string>`'project'`.as('resource_type'),
                sql<string>`created.id::text`.as('resource_id'),
                sql<string>`${p.requestId}`.as('request_id'),
                sql<string | null>`${p.ip}::inet`.as('ip'),
                sql<unknown>`jsonb_build_object('team_id', created.team_id, 'visibility', created.visibility)`.as(
                  'details',
                ),
              ]),
          )
          .returning('id'),
      )
      .selectFrom('created')
      .selectAll(),
);

export type ProjectsService = ReturnType<typeof createProjectsService>;

export function createProjectsService(deps: ProjectsDeps) {
  const { writeDb, readDb, authz } = deps;
  const listDb: ListReader = deps.listDb ?? (() => readDb);
  const project = (id: string) => ({ type: 'project' as const, id });

  /** The audit event of a project write. */
  function projectEvent(
    actorId: string,
    action: string,
    id: string,
    ctx: AccessContext,
    details?: object,
  ): AuditEvent {
    return {
      actorId,
      action,
      resourceType: 'project',
      resourceId: id,
      ...(details ? { details: details as Record<string, unknown> } : {}),
      ...auditRequest(ctx),
    };
  }

  return {
    /** Putting a project in a team needs `manage` on that team (its owners and admins). */
    async create(
      userId: string,
      input: {
        name: string;
        description?: string | undefined;
        visibility?: Visibility | undefined;
        team_id?: string | null | undefined;
      },
      ctx: AccessContext,
    ): Promise<Revised<ProjectView>> {
      const teamId = input.team_id ?? null;
      const visibility = input.visibility ?? 'private';
      requireTeamForTeamVisibility(visibility, teamId);
      // The project and its audit event in one statement. A project without a team needs nothing else:
      // no transaction, 2 round trips with the token read. A team project is inserted in the same
      // transaction as the fresh check of `manage` on the team (never on stale facts).
      const insert = (db: Kysely<DB>) =>
        insertProjectQuery.executeTakeFirstOrThrow(db, {
          ownerId: userId,
          teamId,
          name: input.name.trim(),
          description: input.description ?? '',
          visibility,
          requestId: ctx.requestId,
          ip: ctx.ip ?? null,
        });
      const view = (row: Awaited<ReturnType<typeof insert>>) => {
        const facts = {
          type: 'project' as const,
          exists: true as const,
          project: { id: row.id, ownerId: userId, teamId, visibility, deleted: false },
          membership: null,
        };
        return toView(row, decide(userId, facts));
      };
      if (!teamId) {
        const row = await insert(writeDb);
        return { value: view(row), revision: await committedRevision(writeDb) };
      }
      return transactRevised(writeDb, async (trx) => {
        await authz.requireFresh(trx, userId, { type: 'team', id: teamId }, 'manage', ctx);
        return view(await insert(trx));
      });
    },

    /** Every project the user can view (own, team, public), newest first. */
    async list(userId: string, page: { limit: number; cursor?: string | undefined }, ctx: AccessContext) {
      // Which ids may come from a replica; every one is then checked on the primary's facts.
      const db = listDb(ctx.minRevision);
      const found = await lookupResources(db, {
        subjectId: userId,
        type: 'project',
        permission: 'view',
        ...page,
      });
      if (found.ids.length === 0) return { items: [], next_cursor: found.next_cursor };
      const checks = await authz.checkMany(
        found.ids.map((id) => ({ subjectId: userId, resource: project(id) })),
        ctx.minRevision,
      );
      const rows = await db.selectFrom('projects').select(COLUMNS).where('id', 'in', found.ids).execute();
      const byId = new Map(rows.map((r) => [r.id, r]));
      const items: ProjectView[] = [];
      found.ids.forEach((id, i) => {
        const row = byId.get(id);
        const decision = checks[i]?.decision;
        // The lookup and the policy agree (tested); a project changed in between is left out.
        if (row && decision?.permissions.includes('view')) items.push(toView(row, decision));
      });
      return { items, next_cursor: found.next_cursor };
    },

    async get(userId: string, projectId: string, ctx: AccessContext): Promise<ProjectView> {
      const { decision } = await authz.require(userId, project(projectId), 'view', ctx);
      const row = await projectByIdQuery.executeTakeFirstOrThrow(readDb, { projectId });
      return toView(row, decision);
    },

    /**
     * Name and description need `edit`; visibility and team need `manage`, and moving into a team
     * needs `manage` on that team too. Visibility and team changes bump the revision.
     */
    async update(
      userId: string,
      projectId: string,
      changes: {
        name?: string | undefined;
        description?: string | undefined;
        visibility?: Visibility | undefined;
        team_id?: string | null | undefined;
      },
      ctx: AccessContext,
    ): Promise<Revised<ProjectView> | { value: ProjectView; revision: null }> {
      const touchesAccess = changes.visibility !== undefined || changes.team_id !== undefined;
      const value = await writeDb.transaction().execute(async (trx) => {
        const [{ decision }] = (await authz.requireAllFresh(
          trx,
          userId,
          [
            { resource: project(projectId), permission: touchesAccess ? 'manage' : 'edit' },
            ...(changes.team_id
              ? [{ resource: { type: 'team' as const, id: changes.team_id }, permission: 'manage' as const }]
              : []),
          ],
          ctx,
        )) as [CheckResult];
        const current = await trx
          .selectFrom('projects')
          .select(['visibility', 'team_id'])
          .where('id', '=', projectId)
          .forUpdate()
          .executeTakeFirstOrThrow();
        const visibility = changes.visibility ?? current.visibility;
        const teamId = changes.team_id !== undefined ? changes.team_id : current.team_id;
        requireTeamForTeamVisibility(visibility, teamId);
        const updated = (qb: QueryCreator<DB>) =>
          qb
            .updateTable('projects')
            .set({
              ...(changes.name !== undefined ? { name: changes.name.trim() } : {}),
              ...(changes.description !== undefined ? { description: changes.description } : {}),
              visibility,
              team_id: teamId,
              updated_at: sql`now()`,
            })
            .where('id', '=', projectId)
            .returning(COLUMNS);
        // An access change and its audit event are one statement.
        const row = touchesAccess
          ? await trx
              .with('updated', updated)
              .with('audited', (qb) =>
                auditInsert(
                  qb,
                  projectEvent(userId, 'project.access_change', projectId, ctx, {
                    from: current,
                    to: { visibility, team_id: teamId },
                  }),
                ).returning('id'),
              )
              .selectFrom('updated')
              .selectAll()
              .executeTakeFirstOrThrow()
          : await updated(trx).executeTakeFirstOrThrow();
        return toView(row, decision);
      });
      // A name or description changes no authorization fact: no token to wait for.
      return { value, revision: touchesAccess ? await committedRevision(writeDb) : null };
    },

    /** Soft delete: from the next request on, nobody can see the project or its generations. */
    async remove(userId: string, projectId: string, ctx: AccessContext): Promise<Revised<null>> {
      return transactRevised(writeDb, async (trx) => {
        await authz.requireFresh(trx, userId, project(projectId), 'delete', ctx);
        // The soft delete and its audit event, one statement.
        await trx
          .with('deleted', (qb) =>
            qb
              .updateTable('projects')
              .set({ deleted_at: sql`coalesce(deleted_at, now())`, updated_at: sql`now()` })
              .where('id', '=', projectId)
              .returning('id'),
          )
          .with('audited', (qb) =>
            auditInsert(qb, projectEvent(userId, 'project.delete', projectId, ctx)).returning('id'),
          )
          .selectFrom('deleted')
          .select('id')
          .execute();
        return null;
      });
    },
  };
}
