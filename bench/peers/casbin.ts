import { newEnforcer, newModelFromString, StringAdapter } from 'casbin';
import pg from 'pg';
import { addCheckRoute, addStatsRoute, createPeer, listen, requireEnv, type Stats } from './common.js';

/**
 * node-casbin's RBAC with domains, holding the same facts as policies in memory (the way a casbin
 * deployment loads its adapter at start), deciding SPEC §3's `view` on a generation:
 *   - each project (not deleted) is a domain `proj:<id>`: its owner has `role:owner` there, and when
 *     its visibility is `team` or `public` every ACTIVE member of its team has `role:<team role>`;
 *   - each generation (not deleted, project not deleted) is a domain `gen:<id>` whose creator has
 *     `role:owner` (rule 2);
 *   - a public project's domain has `role:public` (g2), which grants view and download to anyone;
 *   - deleted generations and those of deleted projects get no rules at all, so nobody may (rule 1).
 * The app keeps one map, generation → project (live generations only), to name the request's
 * domains; casbin decides.
 * Env: DATABASE_URL (read once at start), JWT_SECRET.
 */
const MODEL = `
[request_definition]
r = sub, gen, dom, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _, _
g2 = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.obj == p.obj && r.act == p.act && (g(r.sub, p.sub, r.gen) || g(r.sub, p.sub, r.dom) || g2(r.dom, p.sub))
`;

const GRANTS: Record<string, string[]> = {
  'role:owner': ['view', 'download', 'edit', 'delete'],
  'role:admin': ['view', 'download', 'edit', 'delete'],
  'role:editor': ['view', 'download', 'edit'],
  'role:viewer': ['view', 'download'],
  'role:public': ['view', 'download'],
};

const started = performance.now();
const client = new pg.Client({
  connectionString: requireEnv('DATABASE_URL'),
  application_name: 'bench_casbin',
});
await client.connect();
const lines: string[] = [];
for (const [role, actions] of Object.entries(GRANTS)) {
  for (const action of actions) lines.push(`p, ${role}, generation, ${action}`);
}
/** Generation → its project id ('' when it has none): the request's domains. Live ones only. */
const projectOf = new Map<string, string>();
const generations = await client.query<{ id: string; creator: string; project: string | null }>(
  `SELECT g.id, g.user_id AS creator, g.project_id AS project
     FROM generations g LEFT JOIN projects p ON p.id = g.project_id
    WHERE g.deleted_at IS NULL AND (p.id IS NULL OR p.deleted_at IS NULL)`,
);
for (const g of generations.rows) {
  projectOf.set(g.id, g.project ?? '');
  lines.push(`g, ${g.creator}, role:owner, gen:${g.id}`);
}
const projects = await client.query<{ id: string; owner: string; visibility: string }>(
  `SELECT id, owner_id AS owner, visibility FROM projects WHERE deleted_at IS NULL`,
);
for (const p of projects.rows) {
  lines.push(`g, ${p.owner}, role:owner, proj:${p.id}`);
  if (p.visibility === 'public') lines.push(`g2, proj:${p.id}, role:public`);
}
const members = await client.query<{ project: string; member: string; role: string }>(
  `SELECT p.id AS project, tm.user_id AS member, tm.role
     FROM projects p JOIN team_members tm ON tm.team_id = p.team_id AND tm.is_active
    WHERE p.deleted_at IS NULL AND p.visibility IN ('team', 'public')`,
);
for (const m of members.rows) lines.push(`g, ${m.member}, role:${m.role}, proj:${m.project}`);
await client.end();
const enforcer = await newEnforcer(newModelFromString(MODEL), new StringAdapter(lines.join('\n')));
process.stderr.write(
  `casbin: ${lines.length} rules (${generations.rowCount} generations, ${projects.rowCount} projects, ` +
    `${members.rowCount} memberships) loaded in ${Math.round(performance.now() - started)} ms\n`,
);

const stats: Stats = { queries: 0 };
const app = createPeer();
addCheckRoute(app, (claims, generationId) => {
  const project = projectOf.get(generationId.toLowerCase());
  // An id the app's own lookup does not find (never existed, or deleted) is a 404 before any
  // policy is asked, as in any casbin app; casbin would deny it too (no domain has rules for it).
  if (project === undefined) return false;
  return enforcer.enforceSync(
    claims.sub,
    `gen:${generationId.toLowerCase()}`,
    project ? `proj:${project}` : '',
    'generation',
    'view',
  );
});
addStatsRoute(app, stats);
await listen(app);
