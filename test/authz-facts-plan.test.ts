/**
 * Query plans of the authorization hot path on a database of realistic proportions: the facts
 * statement (facts.ts) and the lookups (lookup.ts) must reach rows through indexes, not by reading
 * whole tables. Plans are what PostgreSQL picks on its own after ANALYZE: `enable_seqscan` is never
 * touched here.
 *
 * One allowance: a table of at most SMALL_TABLE_PAGES pages may be read whole. At this file's sizes
 * teams (200 rows), team_members (~2,600) and projects (5,000) are that small, and PostgreSQL rightly
 * hashes them for a bulk of checks (and teams even for one check) instead of probing their indexes
 * (diagnosed by hand: with enable_seqscan off the same statements use teams_pkey, projects_pkey and
 * the team_members indexes, and were no faster). No index is missing for them. generations is never
 * that small here, so it gets no allowance at all.
 */
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FACT_ONE_STATEMENT, FACTS_STATEMENT } from '../src/modules/authz/facts.js';
import { lookupResources } from '../src/modules/authz/lookup.js';
import type { Permission, ResourceType } from '../src/modules/authz/types.js';
import type { DB } from '../src/platform/db/schema.js';
import { useTestDatabase } from './helpers/fixture.js';

/** The real statement, so the plans below are always those of the code that runs. */
const FACTS_TEXT = FACTS_STATEMENT.text;

// Ids are md5('<kind>:<n>')::uuid, so the test can name rows without reading them back.
const USERS = 2_000;
const TEAMS = 200;
const MEMBERS_PER_TEAM = 12;
const PROJECTS = 5_000;
const GENERATIONS = 100_000;
const BASE = '2024-05-01 12:00:00+00';
const GUARDED = ['generations', 'projects', 'teams', 'team_members'];
/** 1 MiB: below this a whole-table read costs about what a bulk of index probes does. */
const SMALL_TABLE_PAGES = 128;

/** Plans seen, printed at the end for whoever reads the run. */
const report: string[] = [];

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  Alias?: string;
  Plans?: PlanNode[];
}

function flatten(node: PlanNode): PlanNode[] {
  return [node, ...(node.Plans ?? []).flatMap(flatten)];
}

/** "Index Scan on generations using generations_pkey", one line per node that reads a relation. */
function scans(nodes: PlanNode[]): string[] {
  return nodes
    .filter((n) => n['Relation Name'] !== undefined || n['Index Name'] !== undefined)
    .map(
      (n) =>
        `${n['Node Type']}${n['Relation Name'] ? ` on ${n['Relation Name']}` : ''}` +
        `${n['Index Name'] ? ` using ${n['Index Name']}` : ''}`,
    );
}

function seqScans(nodes: PlanNode[]): string[] {
  return nodes
    .filter((n) => n['Node Type'] === 'Seq Scan' && GUARDED.includes(n['Relation Name'] ?? ''))
    .map((n) => n['Relation Name'] as string);
}

/** Size in pages of each guarded table, after ANALYZE. */
const pages = new Map<string, number>();

/** Whole-table reads of guarded tables, except of tables small enough to be read whole. */
function unjustifiedSeqScans(nodes: PlanNode[]): string[] {
  return seqScans(nodes).filter(
    (table) => (pages.get(table) ?? Number.POSITIVE_INFINITY) > SMALL_TABLE_PAGES,
  );
}

/** Records the plan for the report, then asserts it reads no large guarded table whole. */
function expectIndexDriven(label: string, nodes: PlanNode[]): void {
  const small = seqScans(nodes).filter((table) => !unjustifiedSeqScans(nodes).includes(table));
  report.push(`${label}: ${scans(nodes).join('; ')}`);
  if (small.length > 0) report.push(`  (small tables read whole: ${small.join(', ')})`);
  expect(unjustifiedSeqScans(nodes), `${label}\n${scans(nodes).join('\n')}`).toEqual([]);
}

const fx = useTestDatabase();
let pool: pg.Pool;
const captured: { sql: string; parameters: readonly unknown[] }[] = [];
let kysely: Kysely<DB>;

async function explain(text: string, values: readonly unknown[]): Promise<PlanNode[]> {
  const result = await fx.sql.query<{ 'QUERY PLAN': { Plan: PlanNode }[] }>(
    `EXPLAIN (FORMAT JSON) ${text}`,
    values as unknown[],
  );
  const plan = result.rows[0]?.['QUERY PLAN'][0]?.Plan;
  if (!plan) throw new Error('EXPLAIN returned no plan');
  return flatten(plan);
}

beforeAll(async () => {
  pool = new pg.Pool({ connectionString: fx.db.url, max: 2 });
  kysely = new Kysely<DB>({
    dialect: new PostgresDialect({ pool }),
    log: (event) => {
      if (event.level === 'query')
        captured.push({ sql: event.query.sql, parameters: event.query.parameters });
    },
  });

  const started = Date.now();
  await fx.sql.query('BEGIN');
  await fx.sql.query(
    `INSERT INTO users (id, email, password_hash, display_name)
     SELECT md5('user:' || i)::uuid, 'plan' || i || '@example.com', 'not-a-hash', 'User ' || i
       FROM generate_series(1, ${USERS}) i`,
  );
  await fx.sql.query(
    `INSERT INTO teams (id, name, owner_id, created_at)
     SELECT md5('team:' || t)::uuid, 'Team ' || t, md5('user:' || (1 + (t * 7) % ${USERS}))::uuid,
            $1::timestamptz - t * interval '1 hour'
       FROM generate_series(1, ${TEAMS}) t`,
    [BASE],
  );
  // Owners are active owner members (the teams service keeps it so); then a dozen members a team,
  // every role, one in five inactive.
  await fx.sql.query(
    `INSERT INTO team_members (team_id, user_id, role) SELECT id, owner_id, 'owner' FROM teams`,
  );
  await fx.sql.query(
    `INSERT INTO team_members (team_id, user_id, role, is_active)
     SELECT md5('team:' || t)::uuid, md5('user:' || (1 + (t * 37 + k * 101) % ${USERS}))::uuid,
            (ARRAY['admin', 'editor', 'viewer', 'owner'])[1 + k % 4], k % 5 <> 0
       FROM generate_series(1, ${TEAMS}) t, generate_series(1, ${MEMBERS_PER_TEAM}) k
     ON CONFLICT DO NOTHING`,
  );
  // Half the projects in a team; 10% public, 40% team, 50% private; one in 17 deleted.
  await fx.sql.query(
    `INSERT INTO projects (id, owner_id, team_id, name, visibility, deleted_at, created_at)
     SELECT md5('project:' || p)::uuid, md5('user:' || (1 + (p * 13) % ${USERS}))::uuid,
            CASE WHEN p % 2 = 0 THEN md5('team:' || (1 + (p / 2) % ${TEAMS}))::uuid END,
            'Project ' || p,
            CASE WHEN p % 10 = 0 THEN 'public' WHEN p % 10 < 5 THEN 'team' ELSE 'private' END,
            CASE WHEN p % 17 = 0 THEN $1::timestamptz END,
            $1::timestamptz - p * interval '1 minute'
       FROM generate_series(1, ${PROJECTS}) p`,
    [BASE],
  );
  // 90% of generations in a project, one in 23 deleted.
  await fx.sql.query(
    `INSERT INTO generations (id, user_id, project_id, model_id, prompt, status, deleted_at, created_at)
     SELECT md5('generation:' || g)::uuid, md5('user:' || (1 + (g * 31) % ${USERS}))::uuid,
            CASE WHEN g % 10 <> 0 THEN md5('project:' || (1 + (g * 7) % ${PROJECTS}))::uuid END,
            'velro-sketch', 'a lighthouse at dusk', 'completed',
            CASE WHEN g % 23 = 0 THEN $1::timestamptz END,
            $1::timestamptz - g * interval '1 second'
       FROM generate_series(1, ${GENERATIONS}) g`,
    [BASE],
  );
  await fx.sql.query('COMMIT');
  await fx.sql.query('ANALYZE users, teams, team_members, projects, generations');
  const sizes = await fx.sql.query<{ relname: string; relpages: number; reltuples: number }>(
    `SELECT relname, relpages, reltuples FROM pg_class WHERE relname = ANY($1::text[]) AND relkind = 'r'`,
    [GUARDED],
  );
  for (const r of sizes.rows) pages.set(r.relname, r.relpages);
  report.push(
    `loaded and analyzed in ${Date.now() - started} ms; ` +
      sizes.rows.map((r) => `${r.relname} ${r.reltuples} rows / ${r.relpages} pages`).join(', '),
  );
}, 60_000);

afterAll(async () => {
  console.info(`authz plans:\n  ${report.join('\n  ')}`);
  await kysely?.destroy();
});

describe('facts statement', () => {
  it('runs on the rows this file claims, generations too large to be read whole', async () => {
    const counts = await fx.sql.query<{ u: number; t: number; m: number; p: number; g: number }>(
      `SELECT (SELECT count(*) FROM users)::int u, (SELECT count(*) FROM teams)::int t,
              (SELECT count(*) FROM team_members)::int m, (SELECT count(*) FROM projects)::int p,
              (SELECT count(*) FROM generations)::int g`,
    );
    expect(counts.rows[0]).toMatchObject({ u: USERS, t: TEAMS, p: PROJECTS, g: GENERATIONS });
    expect(counts.rows[0]!.m).toBeGreaterThan(TEAMS * MEMBERS_PER_TEAM * 0.9);
    expect(GENERATIONS).toBeGreaterThanOrEqual(100_000);
    expect(pages.get('generations')).toBeGreaterThan(SMALL_TABLE_PAGES * 10);
  });

  type Check = { type: ResourceType; id: string; subject: string };

  /** `n` checks over all three types and many subjects, naming rows that exist. */
  async function mixedChecks(n: number): Promise<Check[]> {
    const result = await fx.sql.query<Check>(
      `SELECT (ARRAY['generation', 'project', 'team'])[1 + i % 3] AS type,
              md5(CASE i % 3 WHEN 0 THEN 'generation:' || (1 + (i * 997) % ${GENERATIONS})
                             WHEN 1 THEN 'project:' || (1 + (i * 211) % ${PROJECTS})
                             ELSE 'team:' || (1 + (i * 7) % ${TEAMS}) END)::uuid::text AS id,
              md5('user:' || (1 + (i * 389) % ${USERS}))::uuid::text AS subject
         FROM generate_series(0, $1::int - 1) i ORDER BY i`,
      [n],
    );
    return result.rows;
  }

  /** The plan of a prepared statement with the facts text, as the loader's named statement is. */
  async function explainFacts(checks: Check[], mode: 'custom' | 'generic'): Promise<PlanNode[]> {
    // EXECUTE inside EXPLAIN takes no bind parameters: the arrays go in as literals.
    const array = (values: (string | number)[], type: string) =>
      `${fx.sql.escapeLiteral(`{${values.join(',')}}`)}::${type}[]`;
    // As the loader sends them: the resources, then the distinct subjects.
    const args = [
      array(
        checks.map((c) => c.type),
        'text',
      ),
      array(
        checks.map((c) => c.id),
        'uuid',
      ),
      array([...new Set(checks.map((c) => c.subject))], 'uuid'),
      // No deferred session check: the session part of the statement reads nothing.
      'NULL::uuid',
    ];
    await fx.sql.query(`SET plan_cache_mode = force_${mode}_plan`);
    await fx.sql.query(`PREPARE authz_facts_plan AS ${FACTS_TEXT}`);
    try {
      return await explain(`EXECUTE authz_facts_plan(${args.join(', ')})`, []);
    } finally {
      await fx.sql.query('DEALLOCATE authz_facts_plan');
      await fx.sql.query('RESET plan_cache_mode');
    }
  }

  // custom: what PostgreSQL plans for given arrays (every call of an unnamed statement, and the first
  // five of a named one); generic: what it may switch the named statement to after that.
  for (const mode of ['custom', 'generic'] as const) {
    for (const type of ['generation', 'project', 'team'] as const) {
      it(`reads one ${type} check through indexes (${mode} plan)`, async () => {
        const check = (await mixedChecks(3)).find((c) => c.type === type)!;
        expectIndexDriven(`facts, one ${type} check, ${mode} plan`, await explainFacts([check], mode));
      });
    }

    it(`reads a bulk of 100 mixed checks through indexes (${mode} plan)`, async () => {
      const checks = await mixedChecks(100);
      expect(new Set(checks.map((c) => c.type)).size).toBe(3);
      expectIndexDriven(`facts, 100 mixed checks, ${mode} plan`, await explainFacts(checks, mode));
    });

    // The single-check statement the loader uses for one check (with a session to verify).
    for (const type of ['generation', 'project', 'team'] as const) {
      it(`single-check statement reads one ${type} through indexes (${mode} plan)`, async () => {
        const check = (await mixedChecks(3)).find((c) => c.type === type)!;
        const session = (await fx.sql.query<{ id: string }>('SELECT id FROM sessions LIMIT 1')).rows[0]?.id;
        const literal = (v: string | undefined, cast: string) =>
          v ? `${fx.sql.escapeLiteral(v)}::${cast}` : `NULL::${cast}`;
        await fx.sql.query(`SET plan_cache_mode = force_${mode}_plan`);
        await fx.sql.query(`PREPARE authz_fact_one_plan AS ${FACT_ONE_STATEMENT.text}`);
        try {
          const args = [
            literal(check.type, 'text'),
            literal(check.id, 'uuid'),
            literal(check.subject, 'uuid'),
            literal(session, 'uuid'),
          ];
          const plan = await explain(`EXECUTE authz_fact_one_plan(${args.join(', ')})`, []);
          expectIndexDriven(`single check, one ${type}, ${mode} plan`, plan);
        } finally {
          await fx.sql.query('DEALLOCATE authz_fact_one_plan');
          await fx.sql.query('RESET plan_cache_mode');
        }
      });
    }
  }
});

describe('lookups', () => {
  /** The user in most teams (active memberships), so that every branch of a lookup finds rows. */
  async function busiestMember(): Promise<string> {
    const result = await fx.sql.query<{ user_id: string }>(
      `SELECT user_id FROM team_members WHERE is_active
        GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1`,
    );
    return result.rows[0]!.user_id;
  }

  /** Runs the lookup, then explains the exact SQL and parameters Kysely sent (from its log). */
  async function explainLookup(
    subjectId: string,
    type: ResourceType,
    permission: Permission,
    cursor?: string,
  ): Promise<{ nodes: PlanNode[]; next: string | null; rows: number }> {
    captured.length = 0;
    const page = await lookupResources(kysely, { subjectId, type, permission, limit: 20, cursor });
    expect(captured).toHaveLength(1);
    const query = captured[0]!;
    return {
      nodes: await explain(query.sql, query.parameters),
      next: page.next_cursor,
      rows: page.ids.length,
    };
  }

  async function expectPagesIndexDriven(type: ResourceType, permission: Permission): Promise<void> {
    const subject = await busiestMember();
    const first = await explainLookup(subject, type, permission);
    expect(first.rows).toBeGreaterThan(0);
    expectIndexDriven(`lookup ${type}/${permission}, page 1`, first.nodes);
    if (first.next) {
      const second = await explainLookup(subject, type, permission, first.next);
      expectIndexDriven(`lookup ${type}/${permission}, page 2`, second.nodes);
    }
  }

  it('generation/view: reads no generations whole, first page and next', async () => {
    await expectPagesIndexDriven('generation', 'view');
  });

  it('generation/edit (no public branch): reads no generations whole, first page and next', async () => {
    await expectPagesIndexDriven('generation', 'edit');
  });

  it('project/view: reads no generations whole, first page and next', async () => {
    await expectPagesIndexDriven('project', 'view');
  });

  it('team/manage: reads no generations whole, first page and next', async () => {
    await expectPagesIndexDriven('team', 'manage');
  });
});
