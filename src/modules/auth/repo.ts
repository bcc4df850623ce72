import { type Kysely, type QueryCreator, sql } from 'kysely';
import { prepared } from '../../platform/db/prepared.js';
import type { DB } from '../../platform/db/schema.js';

export interface UserRow {
  id: string;
  email: string;
  display_name: string;
  role: 'user' | 'admin';
  credits_balance: number;
  is_active: boolean;
  created_at: Date;
}

const USER_COLUMNS = [
  'id',
  'email',
  'display_name',
  'role',
  'credits_balance',
  'is_active',
  'created_at',
] as const;

// The fixed-shape statements of the request paths (sign-in, /auth/me, refresh, logout) are
// compiled once (platform/db/prepared.ts); the others are built per call.

const insertUserQuery = prepared(
  (db: Kysely<DB>, p: { email: string; passwordHash: string; displayName: string }) =>
    db
      .insertInto('users')
      .values({ email: p.email, password_hash: p.passwordHash, display_name: p.displayName })
      .onConflict((oc) => oc.column('email').doNothing())
      .returning(USER_COLUMNS),
);

export async function insertUser(
  db: Kysely<DB>,
  user: { email: string; passwordHash: string; displayName: string },
): Promise<UserRow | null> {
  return (await insertUserQuery.executeTakeFirst(db, user)) ?? null;
}

const userByIdQuery = prepared((db: Kysely<DB>, p: { id: string }) =>
  db.selectFrom('users').select(USER_COLUMNS).where('id', '=', p.id),
);

export async function findUserById(db: Kysely<DB>, id: string): Promise<UserRow | null> {
  return (await userByIdQuery.executeTakeFirst(db, { id })) ?? null;
}

const credentialsByEmailQuery = prepared((db: Kysely<DB>, p: { email: string }) =>
  db
    .selectFrom('users')
    .select([...USER_COLUMNS, 'password_hash'])
    .where('email', '=', p.email),
);

export async function findCredentialsByEmail(
  db: Kysely<DB>,
  email: string,
): Promise<(UserRow & { password_hash: string }) | null> {
  return (await credentialsByEmailQuery.executeTakeFirst(db, { email })) ?? null;
}

export async function findPasswordHash(db: Kysely<DB>, userId: string): Promise<string | null> {
  const row = await db
    .selectFrom('users')
    .select('password_hash')
    .where('id', '=', userId)
    .executeTakeFirst();
  return row?.password_hash ?? null;
}

export async function updateUser(
  db: Kysely<DB>,
  userId: string,
  changes: { display_name?: string; password_hash?: string },
): Promise<UserRow | null> {
  const row = await db
    .updateTable('users')
    .set({ ...changes, updated_at: sql`now()` })
    .where('id', '=', userId)
    .returning(USER_COLUMNS)
    .executeTakeFirst();
  return row ?? null;
}

const insertSessionQuery = prepared(
  (db: Kysely<DB>, p: { userId: string; ttlSeconds: number; userAgent: string | null; ip: string | null }) =>
    db
      .insertInto('sessions')
      .values({
        user_id: p.userId,
        expires_at: sql`now() + make_interval(secs => ${p.ttlSeconds})`,
        user_agent: p.userAgent,
        ip: p.ip,
      })
      .returning('id'),
);

export async function insertSession(
  db: Kysely<DB>,
  session: { userId: string; ttlSeconds: number; userAgent: string | null; ip: string | null },
): Promise<string> {
  const row = await insertSessionQuery.executeTakeFirstOrThrow(db, session);
  return row.id;
}

const insertRefreshTokenQuery = prepared((db: Kysely<DB>, p: { sessionId: string; tokenHash: Buffer }) =>
  db.insertInto('refresh_tokens').values({ session_id: p.sessionId, token_hash: p.tokenHash }),
);

export async function insertRefreshToken(
  db: Kysely<DB>,
  sessionId: string,
  tokenHash: Buffer,
): Promise<void> {
  await insertRefreshTokenQuery.run(db, { sessionId, tokenHash });
}

export interface RefreshTokenState {
  session_id: string;
  used_at: Date | null;
  /** Used less than the reuse interval ago (by the database's clock). */
  used_recently: boolean;
  user_id: string;
  revoked_at: Date | null;
  expired: boolean;
  user_active: boolean;
}

/**
 * Locks the token and its session, so that two refreshes with one token are serialised: the second
 * waits for the first to commit and then sees the token as used.
 */
export async function lockRefreshToken(
  db: Kysely<DB>,
  tokenHash: Buffer,
  reuseIntervalMs: number,
): Promise<RefreshTokenState | null> {
  return (
    (await lockRefreshTokenQuery.executeTakeFirst(db, { tokenHash, reuseSeconds: reuseIntervalMs / 1000 })) ??
    null
  );
}

const lockRefreshTokenQuery = prepared((db: Kysely<DB>, p: { tokenHash: Buffer; reuseSeconds: number }) =>
  db
    .selectFrom('refresh_tokens as rt')
    .innerJoin('sessions as s', 's.id', 'rt.session_id')
    .innerJoin('users as u', 'u.id', 's.user_id')
    .select([
      'rt.session_id',
      'rt.used_at',
      sql<boolean>`coalesce(rt.used_at > clock_timestamp() - make_interval(secs => ${p.reuseSeconds}), false)`.as(
        'used_recently',
      ),
      's.user_id',
      's.revoked_at',
      sql<boolean>`s.expires_at <= now()`.as('expired'),
      'u.is_active as user_active',
    ])
    .where('rt.token_hash', '=', p.tokenHash)
    .forUpdate(['rt', 's']),
);

const sessionTokenQuery = prepared((db: Kysely<DB>, p: { sessionId: string; tokenHash: Buffer }) =>
  db
    .selectFrom('refresh_tokens')
    .select(sql<boolean>`used_at IS NOT NULL`.as('used'))
    .where('token_hash', '=', p.tokenHash)
    .where('session_id', '=', p.sessionId),
);

/** Whether a token of this session with this hash exists, and whether it was used already. */
export async function findSessionToken(
  db: Kysely<DB>,
  sessionId: string,
  tokenHash: Buffer,
): Promise<{ used: boolean } | null> {
  return (await sessionTokenQuery.executeTakeFirst(db, { sessionId, tokenHash })) ?? null;
}

/** The UPDATE that revokes sessions of a user (`only` one, or all `except` one), returning their ids. */
function revocation(
  db: QueryCreator<DB>,
  filter: { userId: string; only?: string; except?: string },
  reason: string,
) {
  let query = db
    .updateTable('sessions')
    .set({ revoked_at: sql`now()`, revoked_reason: reason })
    .where('user_id', '=', filter.userId)
    .where('revoked_at', 'is', null);
  if (filter.only) query = query.where('id', '=', filter.only);
  if (filter.except) query = query.where('id', '!=', filter.except);
  return query.returning('id');
}

/** Revokes sessions of a user; `only` limits it to one, `except` keeps one. Returns the revoked ids. */
export async function revokeSessions(
  db: Kysely<DB>,
  filter: { userId: string; only?: string; except?: string },
  reason: string,
): Promise<string[]> {
  return (await revocation(db, filter, reason).execute()).map((r) => r.id);
}

/**
 * A whole refresh-token rotation in ONE statement (atomic on its own: one round trip, no
 * BEGIN/COMMIT), for the case that is nearly every refresh: the token unused, its session live and
 * unexpired, its user active. The token and its session are locked as `lockRefreshToken` locks
 * them, and PostgreSQL re-checks the conditions on the newest row versions after waiting for a
 * lock: of two refreshes racing with one token, the second finds it used and gets null. Null means
 * "not the simple case": the caller then takes the transaction that tells invalid, replay and the
 * reuse grace window apart.
 */
export async function rotateLiveRefreshToken(
  db: Kysely<DB>,
  step: { tokenHash: Buffer; nextHash: Buffer },
): Promise<{ user: UserRow; sessionId: string } | null> {
  const { rows } = await sql<UserRow & { session_id: string }>`
    WITH live AS (
      SELECT rt.session_id, s.user_id
        FROM refresh_tokens rt
        JOIN sessions s ON s.id = rt.session_id
        JOIN users u ON u.id = s.user_id
       WHERE rt.token_hash = ${step.tokenHash} AND rt.used_at IS NULL
         AND s.revoked_at IS NULL AND s.expires_at > now() AND u.is_active
       FOR UPDATE OF rt, s
    ), used AS (
      UPDATE refresh_tokens SET used_at = now()
       WHERE token_hash = ${step.tokenHash} AND session_id IN (SELECT session_id FROM live)
      RETURNING session_id
    ), touched AS (
      UPDATE sessions SET last_refreshed_at = now()
       WHERE id IN (SELECT session_id FROM live)
      RETURNING id
    ), stored AS (
      INSERT INTO refresh_tokens (session_id, token_hash)
      SELECT session_id, ${step.nextHash} FROM live
      RETURNING session_id
    )
    SELECT u.id, u.email, u.display_name, u.role, u.credits_balance, u.is_active, u.created_at,
           live.session_id
      FROM live JOIN users u ON u.id = live.user_id`.execute(db);
  const row = rows[0];
  if (!row) return null;
  const { session_id, ...user } = row;
  return { user, sessionId: session_id };
}

/**
 * The rest of a refresh-token rotation, once the token and its session are locked (see
 * `lockRefreshToken`), in ONE statement: the token marked used, the session touched, its successor
 * stored, and the user read back. One round trip instead of four: under load each round trip waits
 * a turn of a busy event loop, and the locks are held across them.
 */
export async function rotateRefreshToken(
  db: Kysely<DB>,
  step: { tokenHash: Buffer; sessionId: string; nextHash: Buffer; userId: string },
): Promise<UserRow | null> {
  return (await rotateRefreshTokenQuery.executeTakeFirst(db, step)) ?? null;
}

const rotateRefreshTokenQuery = prepared(
  (db: Kysely<DB>, p: { tokenHash: Buffer; sessionId: string; nextHash: Buffer; userId: string }) =>
    db
      .with('used', (qb) =>
        qb
          .updateTable('refresh_tokens')
          .set({ used_at: sql`now()` })
          .where('token_hash', '=', p.tokenHash)
          .returning('session_id'),
      )
      .with('touched', (qb) =>
        qb
          .updateTable('sessions')
          .set({ last_refreshed_at: sql`now()` })
          .where('id', '=', p.sessionId)
          .returning('id'),
      )
      .with('stored', (qb) =>
        qb
          .insertInto('refresh_tokens')
          .values({ session_id: p.sessionId, token_hash: p.nextHash })
          .returning('session_id'),
      )
      .selectFrom('users')
      .select(USER_COLUMNS)
      .where('id', '=', p.userId),
);

/**
 * Revokes sessions of a user (as `revokeSessions`) and records the audit event with the count, in
 * ONE statement (atomic on its own: no transaction, one round trip). Returns how many were revoked.
 */
export async function revokeSessionsAudited(
  db: Kysely<DB>,
  filter: { userId: string; only?: string },
  reason: string,
  audit: { action: string; requestId: string; ip: string | null },
): Promise<number> {
  // Two shapes (one session, or all of the user's): one prepared statement each.
  const row = await (filter.only ? revokeOneAuditedQuery : revokeAllAuditedQuery).executeTakeFirstOrThrow(
    db,
    {
      userId: filter.userId,
      only: filter.only ?? null,
      reason,
      ...audit,
    },
  );
  return Number(row.count);
}

interface RevokeAuditedParams {
  userId: string;
  only: string | null;
  reason: string;
  action: string;
  requestId: string;
  ip: string | null;
}

const revokeAudited = (db: Kysely<DB>, p: RevokeAuditedParams, one: boolean) =>
  db
    .with('revoked', (qb) =>
      revocation(qb, one ? { userId: p.userId, only: p.only as string } : { userId: p.userId }, p.reason),
    )
    .with('audited', (qb) =>
      qb
        .insertInto('audit_events')
        .columns(['actor_id', 'action', 'resource_type', 'resource_id', 'request_id', 'ip', 'details'])
        .expression(
          qb.selectNoFrom([
            sql<string>`${p.userId}::uuid`.as('actor_id'),
            sql<string>`${p.action}`.as('action'),
            sql<string>`'session'`.as('resource_type'),
            sql<string | null>`${p.only}::text`.as('resource_id'),
            sql<string>`${p.requestId}`.as('request_id'),
            sql<string | null>`${p.ip}::inet`.as('ip'),
            sql<unknown>`jsonb_build_object('revoked_sessions', (SELECT count(*) FROM revoked))`.as(
              'details',
            ),
          ]),
        )
        .returning('id'),
    )
    .selectFrom('revoked')
    .select((eb) => eb.fn.countAll<string>().as('count'));

const revokeOneAuditedQuery = prepared((db: Kysely<DB>, p: RevokeAuditedParams) =>
  revokeAudited(db, p, true),
);
const revokeAllAuditedQuery = prepared((db: Kysely<DB>, p: RevokeAuditedParams) =>
  revokeAudited(db, p, false),
);
