import { type Kysely, type QueryCreator, sql } from 'kysely';
import { committedRevision, type Revised, transactRevised } from '../../platform/cache/revision.js';
import { prepared } from '../../platform/db/prepared.js';
import type { ListReader } from '../../platform/db/read-routing.js';
import type { DB, TeamRoleColumn } from '../../platform/db/schema.js';
import { byTimeAndId, paginate } from '../../platform/http/cursor.js';
import { AppError, conflict, forbidden, notFound } from '../../platform/http/errors.js';
import { auditInsert, auditRequest, recordAudit } from '../audit/service.js';
import type { AccessContext, AuthzEngine } from '../authz/engine.js';
import type { Decision, TeamRole } from '../authz/types.js';
import type { Member as MemberView, Team as TeamView } from './schemas.js';

/** A membership row joined with its user, as the API shows it. */
function toMemberView(row: {
  user_id: string;
  email: string;
  display_name: string;
  role: TeamRole;
  is_active: boolean;
  created_at: Date;
}): MemberView {
  return {
    user_id: row.user_id,
    email: row.email,
    display_name: row.display_name,
    role: row.role,
    is_active: row.is_active,
    joined_at: row.created_at.toISOString(),
  };
}

// Fixed-shape reads of the request paths, compiled once (platform/db/prepared.ts).
const teamByIdQuery = prepared((db: Kysely<DB>, p: { teamId: string }) =>
  db.selectFrom('teams').select(['id', 'name', 'owner_id', 'created_at']).where('id', '=', p.teamId),
);
const lockTeamQuery = prepared((db: Kysely<DB>, p: { teamId: string }) =>
  db.selectFrom('teams').select(['id', 'owner_id']).where('id', '=', p.teamId).forUpdate(),
);

/** A write that changed authorization facts, and the revision it committed at. */
export interface TeamsDeps {
  writeDb: Kysely<DB>;
  readDb: Kysely<DB>;
  /** Where lists read (a replica unless the request carries a consistency token); default readDb. */
  listDb?: ListReader;
  authz: AuthzEngine;
}

export type TeamsService = ReturnType<typeof createTeamsService>;

/**
 * Owner-level acts (making someone an owner, changing or removing an owner, deleting the team) need
 * the team `delete` permission, which the policy gives to owners only. Keeping the test on a
 * permission leaves the policy as the one place that knows what each role may do.
 */
const isOwnerLevel = (decision: Decision) => decision.permissions.includes('delete');

export function createTeamsService(deps: TeamsDeps) {
  const { writeDb, readDb, authz } = deps;
  const listDb: ListReader = deps.listDb ?? (() => readDb);
  const team = (id: string) => ({ type: 'team' as const, id });

  async function teamView(teamId: string, decision: Decision, myRole: TeamRole | null): Promise<TeamView> {
    const row = await teamByIdQuery.executeTakeFirst(readDb, { teamId });
    if (!row) throw notFound('Team not found');
    return {
      id: row.id,
      name: row.name,
      owner_id: row.owner_id,
      created_at: row.created_at.toISOString(),
      my_role: myRole,
      my_permissions: [...decision.permissions],
    };
  }

  /**
   * Locks the team row: changes to one team's members run one at a time, so "last owner" holds and
   * the actor's own role cannot change between the authorization check and the write (the check
   * runs after the lock, on facts read in the same transaction).
   */
  async function lockTeam(trx: Kysely<DB>, teamId: string) {
    const row = await lockTeamQuery.executeTakeFirst(trx, { teamId });
    if (!row) throw notFound('Team not found');
    return row;
  }

  /**
   * A member of a team the transaction has locked (see `lockTeam`) and the team's active owners,
   * in ONE statement read after the lock, so both reflect every change committed before it.
   */
  async function memberAndOwners(trx: Kysely<DB>, teamId: string, userId: string) {
    const { rows } = await sql<{
      target: { role: TeamRoleColumn; is_active: boolean } | null;
      owners: string[];
    }>`
      SELECT (SELECT json_build_object('role', role, 'is_active', is_active)
                FROM team_members WHERE team_id = ${teamId}::uuid AND user_id = ${userId}::uuid) AS target,
             ARRAY(SELECT user_id::text FROM team_members
                    WHERE team_id = ${teamId}::uuid AND role = 'owner' AND is_active) AS owners`.execute(trx);
    const row = rows[0];
    return { target: row?.target ?? null, owners: row?.owners ?? [] };
  }

  /**
   * teams.owner_id names an active owner at all times: it stays while its holder is one of
   * `ownersAfter` (the active owners once the change is made), else the first of them by id
   * takes it. Returns the new holder, or null when the field stays as it is.
   */
  function primaryOwnerAfter(current: string, ownersAfter: string[]): string | null {
    if (ownersAfter.includes(current)) return null;
    const next = [...ownersAfter].sort()[0];
    if (!next) throw conflict('A team must keep at least one active owner', 'last_owner');
    return next;
  }

  /** The UPDATE that hands teams.owner_id to `next` (a no-op when null), for a write's CTE. */
  function handPrimaryOwner(qb: QueryCreator<DB>, teamId: string, next: string | null) {
    return qb
      .updateTable('teams')
      .set({ owner_id: sql`coalesce(${next}::uuid, owner_id)`, updated_at: sql`now()` })
      .where('id', '=', teamId)
      .where(sql<boolean>`${next}::uuid IS NOT NULL`)
      .returning('id');
  }

  return {
    async create(userId: string, input: { name: string }, ctx: AccessContext): Promise<Revised<TeamView>> {
      // One statement (atomic on its own): the team, its creator as owner, the audit event. Then
      // the token of its commit: 2 round trips where a transaction of three inserts took 6.
      const { rows } = await sql<{ id: string; name: string; owner_id: string; created_at: Date }>`
        WITH team AS (
          INSERT INTO teams (name, owner_id) VALUES (${input.name.trim()}, ${userId}::uuid)
          RETURNING id, name, owner_id, created_at
        ), owner AS (
          INSERT INTO team_members (team_id, user_id, role) SELECT id, owner_id, 'owner' FROM team
          RETURNING user_id
        ), audited AS (
          INSERT INTO audit_events (actor_id, action, resource_type, resource_id, request_id, ip)
          SELECT owner_id, 'team.create', 'team', id::text, ${ctx.requestId}, ${ctx.ip}::inet FROM team
          RETURNING id
        )
        SELECT id, name, owner_id, created_at FROM team`.execute(writeDb);
      const row = rows[0];
      if (!row) throw new Error('team insert returned no row');
      return {
        value: {
          id: row.id,
          name: row.name,
          owner_id: row.owner_id,
          created_at: row.created_at.toISOString(),
          my_role: 'owner' as const,
          my_permissions: ['view', 'manage', 'delete'],
        },
        revision: await committedRevision(writeDb),
      };
    },

    /** Teams the user is an active member of, newest first. */
    async listMine(
      userId: string,
      page: { limit: number; cursor?: string | undefined },
      ctx?: Pick<AccessContext, 'minRevision'>,
    ) {
      const query = listDb(ctx?.minRevision)
        .selectFrom('team_members as tm')
        .innerJoin('teams as t', 't.id', 'tm.team_id')
        .select([
          't.id',
          't.name',
          't.owner_id',
          't.created_at',
          'tm.role',
          sql<string>`t.created_at::text`.as('cursor_at'),
        ])
        .where('tm.user_id', '=', userId)
        .where('tm.is_active', '=', true);
      const { rows: pageRows, next_cursor } = await paginate(
        query,
        byTimeAndId('t.created_at', 't.id', (r) => r.id),
        page,
      );
      return {
        items: pageRows.map((r) => ({
          id: r.id,
          name: r.name,
          owner_id: r.owner_id,
          created_at: r.created_at.toISOString(),
          my_role: r.role,
        })),
        next_cursor,
      };
    },

    async get(userId: string, teamId: string, ctx: AccessContext): Promise<TeamView> {
      const { decision, facts } = await authz.require(userId, team(teamId), 'view', ctx);
      const myRole =
        facts.exists && facts.type === 'team' && facts.membership?.active ? facts.membership.role : null;
      return teamView(teamId, decision, myRole);
    },

    async rename(
      userId: string,
      teamId: string,
      input: { name: string },
      ctx: AccessContext,
    ): Promise<TeamView> {
      const { decision, facts } = await authz.requireFresh(writeDb, userId, team(teamId), 'manage', ctx);
      await writeDb
        .updateTable('teams')
        .set({ name: input.name.trim(), updated_at: sql`now()` })
        .where('id', '=', teamId)
        .execute();
      const myRole =
        facts.exists && facts.type === 'team' && facts.membership?.active ? facts.membership.role : null;
      return teamView(teamId, decision, myRole);
    },

    /** Deletes the team and its memberships; its projects stay with their owners, without a team. */
    async remove(userId: string, teamId: string, ctx: AccessContext): Promise<Revised<null>> {
      return transactRevised(writeDb, async (trx) => {
        await lockTeam(trx, teamId);
        await authz.requireFresh(trx, userId, team(teamId), 'delete', ctx);
        // Without a team, "visible to the team" means nobody else: such projects become private.
        await trx
          .updateTable('projects')
          .set({
            team_id: null,
            visibility: sql`CASE WHEN visibility = 'team' THEN 'private' ELSE visibility END`,
            updated_at: sql`now()`,
          })
          .where('team_id', '=', teamId)
          .execute();
        await trx.deleteFrom('teams').where('id', '=', teamId).execute();
        await recordAudit(trx, {
          actorId: userId,
          action: 'team.delete',
          resourceType: 'team',
          resourceId: teamId,
          ...auditRequest(ctx),
        });
        return null;
      });
    },

    async listMembers(
      userId: string,
      teamId: string,
      page: { limit: number; cursor?: string | undefined },
      ctx: AccessContext,
    ) {
      await authz.require(userId, team(teamId), 'view', ctx);
      const query = listDb(ctx.minRevision)
        .selectFrom('team_members as tm')
        .innerJoin('users as u', 'u.id', 'tm.user_id')
        .select([
          'tm.user_id',
          'u.email',
          'u.display_name',
          'tm.role',
          'tm.is_active',
          'tm.created_at',
          sql<string>`tm.created_at::text`.as('cursor_at'),
        ])
        .where('tm.team_id', '=', teamId);
      const { rows: pageRows, next_cursor } = await paginate(
        query,
        byTimeAndId('tm.created_at', 'tm.user_id', (r) => r.user_id),
        page,
      );
      return {
        items: pageRows.map((r) => ({
          user_id: r.user_id,
          email: r.email,
          display_name: r.display_name,
          role: r.role,
          is_active: r.is_active,
          joined_at: r.created_at.toISOString(),
        })),
        next_cursor,
      };
    },

    async addMember(
      actorId: string,
      teamId: string,
      input: { email?: string | undefined; user_id?: string | undefined; role: TeamRoleColumn },
      ctx: AccessContext,
    ): Promise<Revised<MemberView>> {
      return transactRevised(writeDb, async (trx) => {
        await lockTeam(trx, teamId);
        const { decision } = await authz.requireFresh(trx, actorId, team(teamId), 'manage', ctx);
        if (input.role === 'owner' && !isOwnerLevel(decision))
          throw forbidden('Only a team owner can add an owner');
        // One statement: find the active user, add them unless already a member, audit the add
        // and read the member back (4 round trips in one; under load each waits a turn of the loop).
        const target = input.user_id
          ? sql<boolean>`u.id = ${input.user_id}::uuid`
          : sql<boolean>`u.email = ${(input.email ?? '').trim().toLowerCase()}`;
        const { rows } = await sql<{
          target_id: string;
          user_id: string | null;
          email: string;
          display_name: string;
          role: TeamRole | null;
          is_active: boolean | null;
          created_at: Date | null;
        }>`
          WITH target AS (
            SELECT u.id, u.email, u.display_name FROM users u WHERE ${target} AND u.is_active
          ), added AS (
            INSERT INTO team_members (team_id, user_id, role)
            SELECT ${teamId}::uuid, target.id, ${input.role}::text FROM target
            ON CONFLICT (team_id, user_id) DO NOTHING
            RETURNING user_id, role, is_active, created_at
          ), audited AS (
            INSERT INTO audit_events (actor_id, action, resource_type, resource_id, request_id, ip, details)
            SELECT ${actorId}::uuid, 'team.member_add', 'team', ${teamId}, ${ctx.requestId},
                   ${ctx.ip}::inet, jsonb_build_object('user_id', added.user_id, 'role', added.role)
              FROM added
            RETURNING id
          )
          SELECT target.id AS target_id, added.user_id, target.email, target.display_name,
                 added.role, added.is_active, added.created_at
            FROM target LEFT JOIN added ON added.user_id = target.id`.execute(trx);
        const row = rows[0];
        if (!row) throw new AppError(404, 'user_not_found', 'No active user with that email or id');
        if (!row.user_id || !row.role || row.is_active === null || !row.created_at)
          throw conflict('That user is already a member of this team', 'already_member');
        return toMemberView({
          ...row,
          user_id: row.user_id,
          role: row.role,
          is_active: row.is_active,
          created_at: row.created_at,
        });
      });
    },

    async updateMember(
      actorId: string,
      teamId: string,
      userId: string,
      changes: { role?: TeamRoleColumn | undefined; is_active?: boolean | undefined },
      ctx: AccessContext,
    ): Promise<Revised<MemberView>> {
      return transactRevised(writeDb, async (trx) => {
        // 4 statements inside the transaction (was 7 to 9): the lock, the fresh decision, the
        // member and owners read after the lock, and one write (the member, teams.owner_id when it
        // moves, the audit event, the member read back).
        const locked = await lockTeam(trx, teamId);
        const { decision } = await authz.requireFresh(trx, actorId, team(teamId), 'manage', ctx);
        const ownerLevel = isOwnerLevel(decision);
        const { target, owners } = await memberAndOwners(trx, teamId, userId);
        if (!target) throw notFound('Member not found');
        if (!ownerLevel && (target.role === 'owner' || changes.role === 'owner')) {
          throw forbidden('Only a team owner can change an owner or make someone an owner');
        }
        const others = owners.filter((id) => id !== userId);
        const staysOwner =
          (changes.role ?? target.role) === 'owner' && (changes.is_active ?? target.is_active);
        // Asked as "is there another active owner?", never "more than one?" (the target's own row
        // may have changed since an earlier read; here both come from one snapshot anyway).
        if (target.role === 'owner' && target.is_active && !staysOwner && others.length === 0) {
          throw conflict('A team must keep at least one active owner', 'last_owner');
        }
        const next = primaryOwnerAfter(locked.owner_id, staysOwner ? [...others, userId] : others);
        const row = await trx
          .with('updated', (qb) =>
            qb
              .updateTable('team_members')
              .set({
                ...(changes.role !== undefined ? { role: changes.role } : {}),
                ...(changes.is_active !== undefined ? { is_active: changes.is_active } : {}),
                updated_at: sql`now()`,
              })
              .where('team_id', '=', teamId)
              .where('user_id', '=', userId)
              .returning(['user_id', 'role', 'is_active', 'created_at']),
          )
          .with('primary_owner', (qb) => handPrimaryOwner(qb, teamId, next))
          .with('audited', (qb) =>
            auditInsert(qb, {
              actorId,
              action: 'team.member_update',
              resourceType: 'team',
              resourceId: teamId,
              details: { user_id: userId, from: target, to: changes },
              ...auditRequest(ctx),
            }).returning('id'),
          )
          .selectFrom('updated')
          .innerJoin('users as u', 'u.id', 'updated.user_id')
          .select([
            'updated.user_id',
            'u.email',
            'u.display_name',
            'updated.role',
            'updated.is_active',
            'updated.created_at',
          ])
          .executeTakeFirstOrThrow();
        return toMemberView(row);
      });
    },

    /** Removing someone needs `manage`; leaving (removing yourself) needs only membership. */
    async removeMember(
      actorId: string,
      teamId: string,
      userId: string,
      ctx: AccessContext,
    ): Promise<Revised<null>> {
      const leaving = actorId === userId;
      return transactRevised(writeDb, async (trx) => {
        const locked = await lockTeam(trx, teamId);
        const { decision } = await authz.requireFresh(
          trx,
          actorId,
          team(teamId),
          leaving ? 'view' : 'manage',
          ctx,
        );
        const ownerLevel = isOwnerLevel(decision);
        const { target, owners } = await memberAndOwners(trx, teamId, userId);
        if (!target) throw notFound('Member not found');
        if (!leaving && !ownerLevel && target.role === 'owner')
          throw forbidden('Only a team owner can remove an owner');
        const others = owners.filter((id) => id !== userId);
        if (target.role === 'owner' && target.is_active && others.length === 0) {
          throw conflict(
            'The last owner cannot leave; make someone else an owner or delete the team',
            'last_owner',
          );
        }
        const next = primaryOwnerAfter(locked.owner_id, others);
        // One write: the membership, teams.owner_id when it moves, the audit event.
        await trx
          .with('removed', (qb) =>
            qb
              .deleteFrom('team_members')
              .where('team_id', '=', teamId)
              .where('user_id', '=', userId)
              .returning('user_id'),
          )
          .with('primary_owner', (qb) => handPrimaryOwner(qb, teamId, next))
          .with('audited', (qb) =>
            auditInsert(qb, {
              actorId,
              action: leaving ? 'team.member_leave' : 'team.member_remove',
              resourceType: 'team',
              resourceId: teamId,
              details: { user_id: userId, role: target.role },
              ...auditRequest(ctx),
            }).returning('id'),
          )
          .selectFrom('removed')
          .select('user_id')
          .execute();
        return null;
      });
    },
  };
}
