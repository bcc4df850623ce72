/**
 * The fact kinds table (modules/authz/fact-kinds.ts) against what depends on it: the cache keys
 * shared through L2 by running instances (byte-identical), the facts statements (every column
 * selected under its name), the migrations (every kind announced when its table changes), and the
 * row mapping (the same entries as the mapping it replaced, and the same values whichever loader
 * reads them: the facts statements, the credentials statements, warming).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createCredentialFacts } from '../src/modules/auth/credentials.js';
import { addFactsRow, FACTS_COLUMNS, type FactsRow, factKinds } from '../src/modules/authz/fact-kinds.js';
import { createFactsLoader, FACT_ONE_STATEMENT, FACTS_STATEMENT } from '../src/modules/authz/facts.js';
import { createWarmer } from '../src/modules/authz/warming.js';
import { FactCache } from '../src/platform/cache/fact-cache.js';
import { signUp } from './helpers/app.js';
import { useTestApp } from './helpers/fixture.js';

const MIGRATIONS = join(dirname(fileURLToPath(import.meta.url)), '..', 'migrations');
const migrations = readdirSync(MIGRATIONS)
  .filter((f) => f.endsWith('.sql'))
  .map((f) => readFileSync(join(MIGRATIONS, f), 'utf8'))
  .join('\n');

const G = '6f9619ff-8b86-d011-b42d-00c04fc964ff';
const P = '0b1c2d3e-0000-4000-8000-000000000001';
const T = '0b1c2d3e-0000-4000-8000-000000000002';
const S = '0b1c2d3e-0000-4000-8000-000000000003';
const U = '0b1c2d3e-0000-4000-8000-000000000004';

/** A facts row with every column null but those given. */
function row(values: Partial<FactsRow>): FactsRow {
  const empty = Object.fromEntries(FACTS_COLUMNS.map((c) => [c, null])) as unknown as FactsRow;
  return { ...empty, rev: 7, ...values };
}

function entriesOf(...rows: FactsRow[]): Record<string, unknown> {
  const entries = new Map<string, unknown>();
  for (const r of rows) addFactsRow(entries, r);
  return Object.fromEntries(entries);
}

describe('fact kinds', () => {
  it('keys stay byte-identical (L2 is shared by running instances)', () => {
    const prefixes = Object.fromEntries(Object.entries(factKinds).map(([name, k]) => [name, k.prefix]));
    expect(prefixes).toEqual({
      generation: 'gen',
      project: 'proj',
      team: 'team',
      memberships: 'mems',
      session: 'sess',
      user: 'user',
      serviceKey: 'svckey',
    });
    for (const kind of Object.values(factKinds)) expect(kind.key(G)).toBe(`${kind.prefix}|36:${G}`);
    expect(factKinds.serviceKey.key('ab|c')).toBe('svckey|4:ab|c');
  });

  it('the facts row has the columns in the order both statements return them', () => {
    expect(FACTS_COLUMNS).toEqual([
      'rev',
      'type',
      'id',
      'subject',
      'mems',
      'g_creator',
      'g_project',
      'g_deleted',
      'g_found',
      'p_id',
      'p_owner',
      'p_team',
      'p_visibility',
      'p_deleted',
      't_found',
      't_owner',
      's_id',
      's_user',
      's_revoked',
      's_expires_ms',
      'u_id',
      'u_role',
      'u_active',
    ]);
    const list = `json_build_array(${FACTS_COLUMNS.join(', ')})`;
    for (const statement of [FACTS_STATEMENT, FACT_ONE_STATEMENT]) {
      expect(statement.text).toContain(list);
      // Every column is selected under its own name (`… AS p_owner`, or `r.type` as is), in the
      // general statement by its first branch.
      for (const column of FACTS_COLUMNS)
        expect(statement.text, `${statement.name}: ${column}`).toMatch(
          new RegExp(`(\\bAS |\\.)${column}\\b`),
        );
    }
  });

  it('the statements select each column from the SQL its kind declares, in the order of the row', () => {
    for (const kind of Object.values(factKinds))
      if ('sql' in kind && kind.sql) expect(Object.keys(kind.sql.columns), kind.prefix).toEqual(kind.columns);
    expect(FACT_ONE_STATEMENT.text).toContain(
      'p.id AS p_id, p.owner_id AS p_owner, p.team_id AS p_team, p.visibility AS p_visibility, p.deleted_at IS NOT NULL AS p_deleted',
    );
    // The general statement's first part is about resources: the session's columns are typed NULLs.
    expect(FACTS_STATEMENT.text).toContain(
      'NULL::uuid AS u_id, NULL::text AS u_role, NULL::boolean AS u_active',
    );
  });

  it('every kind is announced by a trigger when its table changes', () => {
    for (const kind of Object.values(factKinds))
      expect(migrations, kind.prefix).toMatch(
        new RegExp(`WHEN '${kind.table}' THEN PERFORM authz_publish\\(authz_key\\('${kind.prefix}'`),
      );
  });

  it('maps rows to the same entries as before', () => {
    // One check on a generation in a project, with the subject's memberships and a session.
    expect(
      entriesOf(
        row({
          type: 'generation',
          id: G,
          subject: U,
          mems: [[T, 'editor', true]],
          g_creator: U,
          g_project: P,
          g_deleted: false,
          g_found: true,
          p_id: P,
          p_owner: U,
          p_team: T,
          p_visibility: 'team',
          p_deleted: true,
          s_id: S,
          s_user: U,
          s_revoked: false,
          s_expires_ms: 1234.5,
          u_id: U,
          u_role: 'admin',
          u_active: true,
        }),
      ),
    ).toEqual({
      [`mems|36:${U}`]: [[T, 'editor', true]],
      [`gen|36:${G}`]: { creatorId: U, projectId: P, deleted: false },
      [`proj|36:${P}`]: { ownerId: U, teamId: T, visibility: 'team', deleted: true },
      [`sess|36:${S}`]: { userId: U, revoked: false, expiresAt: 1234.5 },
      [`user|36:${U}`]: { role: 'admin', active: true },
    });
    // Rows of the general statement: missing resources, a subject without teams, a session whose
    // user is gone.
    expect(
      entriesOf(
        row({ type: 'generation', id: G, g_found: false }),
        row({ type: 'project', id: P }),
        row({ type: 'team', id: T, t_found: true, t_owner: U }),
        row({ type: 'subject', subject: U, mems: null }),
        row({ type: 'session', s_id: S, s_user: U, s_revoked: true }),
      ),
    ).toEqual({
      [`gen|36:${G}`]: null,
      [`proj|36:${P}`]: null,
      [`team|36:${T}`]: { ownerId: U },
      [`mems|36:${U}`]: [],
      [`sess|36:${S}`]: { userId: U, revoked: true, expiresAt: 0 },
    });
  });
});

describe('fact kinds read by every loader', () => {
  const fx = useTestApp();
  const sessionIdOf = (accessToken: string): string =>
    JSON.parse(Buffer.from(accessToken.split('.')[1] as string, 'base64url').toString()).sid;
  const newCache = () =>
    new FactCache({ l1MaxBytes: 1 << 20, ttlMs: () => 60_000, l2TtlSeconds: () => 60, l2: null });
  const valuesOf = (cache: FactCache) => Object.fromEntries([...cache.entries()].map(([k, e]) => [k, e.v]));

  it('warming, the credentials loader and the facts statements cache the same values', async () => {
    const owner = await signUp(fx.app);
    const team = (await fx.call(owner, 'POST', '/teams', { name: 'Fact kinds' })).json();
    const sessionId = sessionIdOf(owner.accessToken);
    const pool = fx.t.pools.pg.authorization;
    const loadFacts = createFactsLoader(pool);
    const fromFacts = (
      await loadFacts([{ subjectId: owner.id, resource: { type: 'team', id: team.id } }], sessionId)
    ).entries;
    const mems = factKinds.memberships.key(owner.id);
    const user = factKinds.user.key(owner.id);
    const session = factKinds.session.key(sessionId);
    expect(fromFacts.get(mems)).toEqual([[team.id, 'owner', true]]);
    expect(fromFacts.get(user)).toEqual({ role: 'user', active: true });
    expect(fromFacts.get(session)).toMatchObject({ userId: owner.id, revoked: false });

    const warmed = newCache();
    await createWarmer({ pool, cache: warmed, loadFacts }).warmSubjects([owner.id]);
    expect(valuesOf(warmed)).toEqual({ [mems]: fromFacts.get(mems), [user]: fromFacts.get(user) });

    const credentials = newCache();
    await createCredentialFacts(pool, credentials).warmSession(sessionId);
    expect(valuesOf(credentials)).toEqual({ [session]: fromFacts.get(session), [user]: fromFacts.get(user) });
    // A session that does not exist is cached as such.
    const missing = '00000000-0000-4000-8000-000000000000';
    const none = newCache();
    await createCredentialFacts(pool, none).warmSession(missing);
    expect(valuesOf(none)).toEqual({ [factKinds.session.key(missing)]: null });
  });
});
