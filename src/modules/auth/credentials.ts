import type pg from 'pg';
import type { FactCache, Loaded, Stamped } from '../../platform/cache/fact-cache.js';
import {
  type CachedServiceKey,
  type CachedSession,
  type CachedUser,
  type FactsRow,
  factKinds,
  type ServiceKeyRow,
} from '../authz/fact-kinds.js';

/** Keys of the credential facts (declared in authz/fact-kinds.ts). */
export const credentialKeys = {
  session: factKinds.session.key,
  user: factKinds.user.key,
  serviceKey: factKinds.serviceKey.key,
};

/** The session and its user, under the facts row's column names (authz/fact-kinds.ts). */
const SESSION = {
  name: 'auth_session_facts_v2',
  text: `SELECT (SELECT rev FROM authz_revision) AS rev,
                s.id AS s_id, s.user_id AS s_user, s.revoked_at IS NOT NULL AS s_revoked,
                (extract(epoch FROM s.expires_at) * 1000)::float8 AS s_expires_ms,
                u.id AS u_id, u.role AS u_role, u.is_active AS u_active
           FROM (SELECT 1) one
           LEFT JOIN sessions s ON s.id = $1
           LEFT JOIN users u ON u.id = s.user_id`,
};

/** The service key and its user, under the column names of its fact kind and the user's. */
const SERVICE_KEY = {
  name: 'auth_service_key_facts_v2',
  text: `SELECT (SELECT rev FROM authz_revision) AS rev,
                k.id AS k_id, k.user_id AS k_user, k.scopes AS k_scopes, k.revoked_at IS NOT NULL AS k_revoked,
                (extract(epoch FROM k.expires_at) * 1000)::float8 AS k_expires_ms,
                u.id AS u_id, u.role AS u_role, u.is_active AS u_active
           FROM (SELECT 1) one
           LEFT JOIN service_keys k ON k.secret_hash = $1
           LEFT JOIN users u ON u.id = k.user_id`,
};

type UserColumns = Pick<FactsRow, 'u_id' | 'u_role' | 'u_active'>;
type SessionRow = { rev: number } & Pick<FactsRow, 's_id' | 's_user' | 's_revoked' | 's_expires_ms'> &
  UserColumns;
type ServiceKeyStatementRow = { rev: number } & ServiceKeyRow & UserColumns;

/** The one rule for "this access token's session is live": the role it acts with, or null. */
export function sessionVerdict(
  session: CachedSession | null | undefined,
  user: CachedUser | null | undefined,
  userId: string,
  now: number,
): 'user' | 'admin' | null {
  if (!session || session.revoked || session.expiresAt <= now || session.userId !== userId) return null;
  return user?.active ? user.role : null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Sessions, users and service keys as cached facts: a request with a known token costs two Map
 * lookups; an unknown one one statement (session and user together). Revocations reach the cache
 * through the invalidation bus like every other fact; expiry is checked on every use.
 */
export function createCredentialFacts(pool: pg.Pool, cache: FactCache) {
  async function loadSession(sessionId: string): Promise<Loaded> {
    const { rows } = await pool.query<SessionRow>({ ...SESSION, values: [sessionId] });
    const row = rows[0] as SessionRow;
    const entries = new Map<string, unknown>();
    entries.set(credentialKeys.session(sessionId), factKinds.session.valueOf(row));
    if (row.u_id) entries.set(credentialKeys.user(row.u_id), factKinds.user.valueOf(row));
    return { rev: row.rev, entries };
  }

  async function loadServiceKey(hashHex: string): Promise<Loaded> {
    const { rows } = await pool.query<ServiceKeyStatementRow>({
      ...SERVICE_KEY,
      values: [Buffer.from(hashHex, 'hex')],
    });
    const row = rows[0] as ServiceKeyStatementRow;
    const entries = new Map<string, unknown>();
    entries.set(credentialKeys.serviceKey(hashHex), factKinds.serviceKey.valueOf(row));
    if (row.u_id) entries.set(credentialKeys.user(row.u_id), factKinds.user.valueOf(row));
    return { rev: row.rev, entries };
  }

  /**
   * A credential fact and its user's, through the cache when it may answer, holding at one
   * revision (SPEC §6 rule 8); otherwise both from one fresh statement. `userOf` names the user once
   * the credential is known (null: no user to look up, the credential alone decides).
   */
  async function factPair<C>(
    key: string,
    userOf: (credential: C | null) => string | null,
    load: () => Promise<Loaded>,
    minRevision: number,
    /** The user the credential should name, when known before reading it (a token's subject). */
    userAhead?: string,
  ): Promise<{ credential: C | null; user: CachedUser | null }> {
    if (cache.canAnswer(minRevision)) {
      // Both from L1, or together in one L2 round trip; a key that read asked for and did not find
      // goes straight to the database load (L2 is not asked twice).
      const ahead = userAhead === undefined ? [] : [key, credentialKeys.user(userAhead)];
      const found = ahead.length > 0 ? await cache.getMany(ahead) : undefined;
      const read = async <V>(k: string) =>
        (found?.get(k) ?? (await cache.get<V>(k, load, ahead.includes(k)))).entry as Stamped<V>;
      const credential = await read<C>(key);
      const userId = userOf(credential.v);
      if (userId === null) return { credential: credential.v, user: null };
      const user = await read<CachedUser>(credentialKeys.user(userId));
      const low = Math.min(credential.r, user.r);
      if (cache.commonRevision(low, Math.max(credential.r, user.r)) >= minRevision)
        return { credential: credential.v, user: user.v };
    }
    const loaded = await load();
    const credential = (loaded.entries.get(key) ?? null) as C | null;
    const userId = userOf(credential);
    const user =
      userId === null
        ? null
        : ((loaded.entries.get(credentialKeys.user(userId)) ?? null) as CachedUser | null);
    return { credential, user };
  }

  /**
   * Sync, L1 only: the role behind a live session of this user (null: not live), or undefined when
   * L1 cannot tell (the cache may not answer, a fact is missing, the two held at no common
   * revision). Ids that are not UUIDs are never in L1, so they fall to `sessionRole`, which refuses them.
   */
  function sessionRoleNow(
    sessionId: string,
    userId: string,
    now: number,
    minRevision = 0,
  ): 'user' | 'admin' | null | undefined {
    if (!cache.canAnswer(minRevision)) return undefined;
    // Uncounted: when L1 cannot tell, the slower path (`factPair`, or the engine's read of a
    // deferred session) asks again and counts the lookups there; counted here when answered.
    const session = cache.peekUncounted<CachedSession>(credentialKeys.session(sessionId));
    if (!session) return undefined;
    const user = cache.peekUncounted<CachedUser>(credentialKeys.user(userId));
    if (!user) return undefined;
    // `canAnswer(minRevision)` put minRevision at or below the applied revision, which any common one reaches.
    if (cache.commonRevision(Math.min(session.r, user.r), Math.max(session.r, user.r)) < 0) return undefined;
    cache.countL1(2, 0);
    return sessionVerdict(session.v, user.v, userId, now);
  }

  return {
    sessionRoleNow,

    /** The role behind a live session of this user, or null (unknown, revoked, expired, inactive). */
    async sessionRole(
      sessionId: string,
      userId: string,
      now: number,
      minRevision = 0,
    ): Promise<'user' | 'admin' | null> {
      if (!UUID.test(sessionId) || !UUID.test(userId)) return null;
      const known = sessionRoleNow(sessionId, userId, now, minRevision);
      if (known !== undefined) return known;
      const { credential, user } = await factPair<CachedSession>(
        credentialKeys.session(sessionId),
        // A session that is not this user's live one decides alone.
        (session) =>
          sessionVerdict(session, { role: 'user', active: true }, userId, now) === null ? null : userId,
        () => loadSession(sessionId),
        minRevision,
        userId,
      );
      return sessionVerdict(credential, user, userId, now);
    },

    /** The live key behind a secret's hash, with its owner's role, or null. */
    async serviceKey(
      hashHex: string,
      now: number,
      minRevision = 0,
    ): Promise<(CachedServiceKey & { role: 'user' | 'admin' }) | null> {
      const live = (key: CachedServiceKey | null): key is CachedServiceKey =>
        key !== null && !key.revoked && (key.expiresAt === null || key.expiresAt > now);
      const { credential: key, user } = await factPair<CachedServiceKey>(
        credentialKeys.serviceKey(hashHex),
        (k) => (live(k) ? k.userId : null),
        () => loadServiceKey(hashHex),
        minRevision,
      );
      return live(key) && user?.active ? { ...key, role: user.role } : null;
    },

    /** Warming after a sign-in: the new session and the user, in one statement. */
    async warmSession(sessionId: string): Promise<void> {
      const loaded = await loadSession(sessionId);
      cache.warm(loaded.entries, loaded.rev);
    },
  };
}

export type CredentialFacts = ReturnType<typeof createCredentialFacts>;
