import type { Kysely } from 'kysely';
import { explainFacts } from '../modules/authz/explain.js';
import { assemble, createFactsLoader, isUuid } from '../modules/authz/facts.js';
import { lookupResources } from '../modules/authz/lookup.js';
import { decide } from '../modules/authz/policy.js';
import type { Decision, Permission, ResourceFacts, ResourceType } from '../modules/authz/types.js';
import type { Pools } from '../platform/db/pools.js';
import type { DB } from '../platform/db/schema.js';
import { userByEmail, withDatabase } from './database.js';
import { CliError, usageError } from './output.js';

export interface CheckArgs {
  subject: string;
  permission: string;
  resource: { type: ResourceType; id: string };
}

/** The database side of check, explain, lookup and whois (loaded only when one of them runs). */

interface Subject {
  id: string;
  /** Null when the id names no account (every check then answers as for a stranger). */
  email: string | null;
}

export interface CheckAnswer {
  subject: Subject;
  resource: { type: ResourceType; id: string; name: string | null; exists: boolean };
  permission: string;
  allowed: boolean;
  permissions: Permission[];
  access_method: Decision['accessMethod'];
  consistency_token: string;
}

export interface ExplainAnswer extends CheckAnswer {
  rule: Decision['rule'];
  reason: string;
  facts: ReturnType<typeof explainFacts>;
  /** Emails of the users and names of the teams and projects the facts mention. */
  names: Record<string, string>;
}

async function subjectOf(db: Kysely<DB>, subject: string): Promise<Subject> {
  if (isUuid(subject)) {
    const id = subject.toLowerCase();
    const row = await db.selectFrom('users').select('email').where('id', '=', id).executeTakeFirst();
    return { id, email: row?.email ?? null };
  }
  if (!subject.includes('@')) throw usageError(`the subject is an email or a user id, not ${subject}`);
  const user = await userByEmail(db, subject);
  return { id: user.id, email: user.email };
}

const who = (subject: Subject) => subject.email ?? `user ${subject.id} (no such account)`;

/** One facts load and one decision: exactly what the API's check does on a cold cache. */
async function decideFor(pools: Pools, args: CheckArgs) {
  if (!isUuid(args.resource.id)) throw usageError(`${args.resource.id} is not an id (a uuid)`);
  const db = pools.db.authorization;
  const subject = await subjectOf(db, args.subject);
  const resource = { type: args.resource.type, id: args.resource.id.toLowerCase() };
  const loaded = await createFactsLoader(pools.pg.authorization)([{ subjectId: subject.id, resource }]);
  const built = assemble(subject.id, resource, (key) =>
    loaded.entries.has(key) ? { known: true, value: loaded.entries.get(key) } : { known: false },
  );
  if ('missing' in built) throw new CliError(`the facts load did not return ${built.missing}`);
  const decision = decide(subject.id, built.facts);
  const names = await namesOf(db, built.facts);
  const answer: CheckAnswer = {
    subject,
    resource: { ...resource, name: names[resource.id] ?? null, exists: built.facts.exists },
    permission: args.permission,
    allowed: decision.permissions.includes(args.permission as Permission),
    permissions: decision.permissions,
    access_method: decision.accessMethod,
    consistency_token: String(loaded.revision),
  };
  return { answer, decision, facts: built.facts, names };
}

export async function runCheck(args: CheckArgs): Promise<CheckAnswer> {
  return withDatabase(async ({ pools }) => (await decideFor(pools, args)).answer);
}

export async function runExplain(args: CheckArgs): Promise<ExplainAnswer> {
  return withDatabase(async ({ pools }) => {
    const { answer, decision, facts, names } = await decideFor(pools, args);
    return { ...answer, rule: decision.rule, reason: decision.reason, facts: explainFacts(facts), names };
  });
}

/** Emails of the users, and names of the teams and projects, that a set of facts mentions. */
async function namesOf(db: Kysely<DB>, facts: ResourceFacts): Promise<Record<string, string>> {
  const users = new Set<string>();
  const projects = new Set<string>();
  const teams = new Set<string>();
  if (facts.exists) {
    if (facts.type === 'generation') {
      users.add(facts.generation.creatorId);
      if (facts.project) projects.add(facts.project.id);
    }
    const project = facts.type === 'team' ? null : facts.project;
    if (project) {
      projects.add(project.id);
      users.add(project.ownerId);
      if (project.teamId) teams.add(project.teamId);
    }
    if (facts.type === 'team') {
      teams.add(facts.team.id);
      users.add(facts.team.ownerId);
    }
  }
  const names: Record<string, string> = {};
  const [u, p, t] = await Promise.all([
    users.size
      ? db
          .selectFrom('users')
          .select(['id', 'email as name'])
          .where('id', 'in', [...users])
          .execute()
      : [],
    projects.size
      ? db
          .selectFrom('projects')
          .select(['id', 'name'])
          .where('id', 'in', [...projects])
          .execute()
      : [],
    teams.size
      ? db
          .selectFrom('teams')
          .select(['id', 'name'])
          .where('id', 'in', [...teams])
          .execute()
      : [],
  ]);
  for (const row of [...u, ...p, ...t]) names[row.id] = row.name;
  return names;
}

const quoted = (name: string | null | undefined) => (name ? ` "${name}"` : '');

export function formatCheck(answer: CheckAnswer): string {
  const { subject, resource, permission } = answer;
  const target = `${resource.type} ${resource.id}${quoted(resource.name)}`;
  if (!resource.exists) return `denied: there is no ${resource.type} ${resource.id}`;
  const verdict = answer.allowed
    ? `allowed: ${who(subject)} may ${permission} ${target}`
    : `denied: ${who(subject)} may not ${permission} ${target}`;
  const held =
    answer.permissions.length > 0
      ? `holds: ${answer.permissions.join(', ')} (${answer.access_method})`
      : 'holds: nothing on it';
  return `${verdict}\n${held}`;
}

export function formatExplain(answer: ExplainAnswer): string {
  const lines = [formatCheck(answer), `rule ${answer.rule}: ${answer.reason}`];
  const facts = answer.facts;
  if (!facts) return lines.join('\n');
  const name = (id: string | null) => (id === null ? 'none' : `${answer.names[id] ?? id}`);
  const project = facts.type === 'team' ? null : facts.project;
  const projectLine = (p: NonNullable<typeof project>) =>
    `  project ${p.id}${quoted(answer.names[p.id])}: owner ${name(p.owner_id)}, team ${
      p.team_id ? `${name(p.team_id)} (${p.team_id})` : 'none'
    }, visibility ${p.visibility}${p.deleted ? ', DELETED' : ''}`;
  lines.push(`facts (at revision ${answer.consistency_token}):`);
  if (facts.type === 'generation') {
    const g = facts.generation;
    lines.push(`  generation ${g.id}: created by ${name(g.creator_id)}${g.deleted ? ', DELETED' : ''}`);
    lines.push(project ? projectLine(project) : '  in no project');
  } else if (facts.type === 'project') {
    lines.push(projectLine(facts.project));
  } else {
    lines.push(
      `  team ${facts.team.id}${quoted(answer.names[facts.team.id])}: owner ${name(facts.team.owner_id)}`,
    );
  }
  const teamId = facts.type === 'team' ? facts.team.id : project?.team_id;
  if (teamId) {
    const m = facts.membership;
    lines.push(
      `  ${who(answer.subject)} in team ${name(teamId)}: ${m ? `${m.role}, ${m.active ? 'active' : 'INACTIVE'}` : 'not a member'}`,
    );
  }
  return lines.join('\n');
}

export interface LookupAnswer {
  subject: Subject;
  type: ResourceType;
  permission: string;
  items: { id: string; name: string | null }[];
  next_cursor: string | null;
}

export async function runLookup(input: {
  subject: string;
  type: ResourceType;
  permission: string;
  limit: number;
  cursor: string | undefined;
}): Promise<LookupAnswer> {
  return withDatabase(async ({ pools }) => {
    const db = pools.db.authorization;
    const subject = await subjectOf(db, input.subject);
    const page = await lookupResources(db, {
      subjectId: subject.id,
      type: input.type,
      permission: input.permission as Permission,
      limit: input.limit,
      cursor: input.cursor,
    });
    const names = new Map<string, string>();
    if (page.ids.length > 0) {
      const rows =
        input.type === 'project'
          ? await db.selectFrom('projects').select(['id', 'name']).where('id', 'in', page.ids).execute()
          : input.type === 'team'
            ? await db.selectFrom('teams').select(['id', 'name']).where('id', 'in', page.ids).execute()
            : await db
                .selectFrom('generations')
                .select(['id', 'prompt as name'])
                .where('id', 'in', page.ids)
                .execute();
      for (const row of rows)
        names.set(row.id, row.name.length > 60 ? `${row.name.slice(0, 59)}…` : row.name);
    }
    return {
      subject,
      type: input.type,
      permission: input.permission,
      items: page.ids.map((id) => ({ id, name: names.get(id) ?? null })),
      next_cursor: page.next_cursor,
    };
  });
}

export function formatLookup(answer: LookupAnswer): string {
  const head = `${answer.type}s ${who(answer.subject)} may ${answer.permission}: ${
    answer.items.length === 0 ? 'none' : answer.items.length
  }${answer.next_cursor ? ' (more with --cursor below)' : ''}`;
  const rows = answer.items.map((item) => `  ${item.id}${quoted(item.name)}`);
  return [head, ...rows, ...(answer.next_cursor ? [`next cursor: ${answer.next_cursor}`] : [])].join('\n');
}

export interface WhoisAnswer {
  user: {
    id: string;
    email: string;
    display_name: string;
    role: 'user' | 'admin';
    is_active: boolean;
    credits_balance: number;
    created_at: string;
  };
  teams: { id: string; name: string; role: string; active: boolean; owner: boolean }[];
  projects: {
    id: string;
    name: string;
    visibility: string;
    team_id: string | null;
    team_name: string | null;
    access: string;
  }[];
  generations: number;
}

export async function runWhois(who: string): Promise<WhoisAnswer> {
  return withDatabase(async ({ pools }) => {
    const db = pools.db.authorization;
    const subject = await subjectOf(db, who);
    const user = await db
      .selectFrom('users')
      .select(['id', 'email', 'display_name', 'role', 'is_active', 'credits_balance', 'created_at'])
      .where('id', '=', subject.id)
      .executeTakeFirst();
    if (!user) throw new CliError(`no user with the id ${subject.id}`, 1, 'user_not_found');
    const teams = await db
      .selectFrom('teams as t')
      .leftJoin('team_members as m', (join) =>
        join.onRef('m.team_id', '=', 't.id').on('m.user_id', '=', user.id),
      )
      .select(['t.id', 't.name', 't.owner_id', 'm.role', 'm.is_active'])
      .where((eb) => eb.or([eb('t.owner_id', '=', user.id), eb('m.user_id', '=', user.id)]))
      .orderBy('t.name')
      .execute();
    const teamRows = teams.map((t) => ({
      id: t.id,
      name: t.name,
      role: t.owner_id === user.id ? 'owner' : (t.role ?? 'none'),
      active: t.owner_id === user.id || t.is_active === true,
      owner: t.owner_id === user.id,
    }));
    const activeTeams = new Map(teamRows.filter((t) => t.active).map((t) => [t.id, t]));
    const projects = await db
      .selectFrom('projects as p')
      .leftJoin('teams as t', 't.id', 'p.team_id')
      .select(['p.id', 'p.name', 'p.visibility', 'p.team_id', 'p.owner_id', 't.name as team_name'])
      .where('p.deleted_at', 'is', null)
      .where((eb) =>
        eb.or([
          eb('p.owner_id', '=', user.id),
          ...(activeTeams.size > 0
            ? [
                eb.and([
                  eb('p.team_id', 'in', [...activeTeams.keys()]),
                  eb('p.visibility', 'in', ['team', 'public']),
                ]),
              ]
            : []),
        ]),
      )
      .orderBy('p.created_at', 'desc')
      .limit(200)
      .execute();
    const { n } = await db
      .selectFrom('generations')
      .select((eb) => eb.fn.countAll<string>().as('n'))
      .where('user_id', '=', user.id)
      .where('deleted_at', 'is', null)
      .executeTakeFirstOrThrow();
    return {
      user: { ...user, created_at: new Date(user.created_at as unknown as string).toISOString() },
      teams: teamRows,
      projects: projects.map((p) => ({
        id: p.id,
        name: p.name,
        visibility: p.visibility,
        team_id: p.team_id,
        team_name: p.team_name,
        access:
          p.owner_id === user.id
            ? 'owner'
            : `team:${(p.team_id && activeTeams.get(p.team_id)?.role) ?? 'none'}`,
      })),
      generations: Number(n),
    };
  });
}

export function formatWhois(answer: WhoisAnswer): string {
  const u = answer.user;
  const lines = [
    `${u.email} (${u.display_name}) ${u.id}`,
    `  role ${u.role}${u.is_active ? '' : ', DEACTIVATED'}, ${u.credits_balance.toLocaleString('en-US')} credits, ${answer.generations} generation(s), since ${u.created_at.slice(0, 10)}`,
    `teams (${answer.teams.length}):`,
    ...answer.teams.map(
      (t) => `  ${t.name} ${t.id}: ${t.role}${t.active ? '' : ' (inactive: holds no rights)'}`,
    ),
    `projects (${answer.projects.length}):`,
    ...answer.projects.map(
      (p) =>
        `  ${p.name} ${p.id}: ${p.access}, visibility ${p.visibility}${p.team_name ? `, team ${p.team_name}` : ''}`,
    ),
  ];
  return lines.join('\n');
}
