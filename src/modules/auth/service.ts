import type { Kysely } from 'kysely';
import { committedRevision, transactRevised } from '../../platform/cache/revision.js';
import type { DB } from '../../platform/db/schema.js';
import { conflict, forbidden, notFound, unauthorized } from '../../platform/http/errors.js';
import type { Principal } from '../../platform/http/principal.js';
import { signIns } from '../../platform/observability/metrics.js';
import { type AuditEvent, auditRequest, recordAudit } from '../audit/service.js';
import { applyCreditChange } from '../credits/service.js';
import type { PasswordHasher } from './passwords.js';
import * as repo from './repo.js';
import { type AccessTokens, newSecret, REFRESH_PREFIX, sha256 } from './tokens.js';

export interface AuthServiceDeps {
  writeDb: Kysely<DB>;
  readDb: Kysely<DB>;
  hasher: PasswordHasher;
  tokens: AccessTokens;
  initialCredits: number;
  refreshTtlSeconds: number;
  /**
   * How long a rotated refresh token may be presented again and get the same successor; 0 (the
   * default) makes every use of a rotated token a replay that revokes its family. Opt-in, for
   * deployments whose users run many tabs; it weakens theft detection inside the window.
   */
  refreshReuseIntervalMs: number;
  /** The successor of a refresh token, derived (see `refreshSuccessors`). */
  refreshSuccessorOf: (parent: string) => string;
  onBackgroundError: (error: unknown) => void;
  /** After a sign-in commits (cache warming for that user). Must not throw. */
  onSignIn?: (userId: string, sessionId: string) => void;
  /** Waits until this process has applied the invalidations up to a revision. */
  awaitRevision?: (revision: number) => Promise<unknown>;
}

export interface ClientContext {
  ip: string | null;
  userAgent: string | null;
  requestId: string;
}

export interface PublicUser {
  id: string;
  email: string;
  display_name: string;
  role: 'user' | 'admin';
  credits_balance: number;
  created_at: string;
}

export interface TokenPair {
  user: PublicUser;
  access_token: string;
  refresh_token: string;
  token_type: 'Bearer';
  expires_in: number;
}

const INVALID_CREDENTIALS = 'Email or password is incorrect';

export function normaliseEmail(email: string): string {
  return email.trim().toLowerCase();
}

export function toPublicUser(row: repo.UserRow): PublicUser {
  return {
    id: row.id,
    email: row.email,
    display_name: row.display_name,
    role: row.role,
    credits_balance: row.credits_balance,
    created_at: row.created_at.toISOString(),
  };
}

export type AuthService = ReturnType<typeof createAuthService>;

export function createAuthService(deps: AuthServiceDeps) {
  const { writeDb, readDb, hasher, tokens } = deps;

  async function startSession(user: repo.UserRow, client: ClientContext, db: Kysely<DB>): Promise<TokenPair> {
    const sessionId = await repo.insertSession(db, {
      userId: user.id,
      ttlSeconds: deps.refreshTtlSeconds,
      userAgent: client.userAgent?.slice(0, 512) ?? null,
      ip: client.ip,
    });
    const refreshToken = newSecret(REFRESH_PREFIX);
    await repo.insertRefreshToken(db, sessionId, sha256(refreshToken));
    const access = await tokens.issue(user.id, sessionId);
    return {
      user: toPublicUser(user),
      access_token: access.token,
      refresh_token: refreshToken,
      token_type: 'Bearer',
      expires_in: access.expiresIn,
    };
  }

  /**
   * Refreshes under way in this process, by the hash of the presented refresh token: an entry lives
   * from the moment the first caller starts until its refresh settles, successfully or not.
   */
  const refreshesInFlight = new Map<string, Promise<TokenPair>>();

  return {
    /** The user, their signup credits and its ledger row, and a first session, in one transaction. */
    async register(
      input: { email: string; password: string; display_name?: string | undefined },
      client: ClientContext,
    ): Promise<TokenPair> {
      const email = normaliseEmail(input.email);
      const passwordHash = await hasher.hash(input.password);
      const displayName = input.display_name?.trim() || email.split('@')[0] || email;
      const pair = await writeDb.transaction().execute(async (trx) => {
        const user = await repo.insertUser(trx, { email, passwordHash, displayName });
        if (!user) throw conflict('An account with this email already exists', 'email_taken');
        const balance = await applyCreditChange(trx, {
          userId: user.id,
          amount: deps.initialCredits,
          reason: 'signup',
        });
        user.credits_balance = balance ?? user.credits_balance;
        await recordAudit(trx, {
          actorId: user.id,
          action: 'auth.register',
          resourceType: 'user',
          resourceId: user.id,
          ...auditRequest(client),
        });
        return startSession(user, client, trx);
      });
      signedIn(pair);
      return pair;
    },

    /** Unknown email, wrong password and inactive account all look the same, in answer and in time. */
    async login(input: { email: string; password: string }, client: ClientContext): Promise<TokenPair> {
      const found = await repo.findCredentialsByEmail(readDb, normaliseEmail(input.email));
      if (!found) {
        await hasher.verifyNothing(input.password);
        auditLater(
          { actorId: null, action: 'auth.login', decision: 'deny', reason: 'unknown email' },
          client,
        );
        signIns.inc({ result: 'failed' });
        throw unauthorized(INVALID_CREDENTIALS, 'invalid_credentials');
      }
      const ok = await hasher.verify(found.password_hash, input.password);
      if (!ok || !found.is_active) {
        const reason = ok ? 'account deactivated' : 'wrong password';
        auditLater({ actorId: found.id, action: 'auth.login', decision: 'deny', reason }, client);
        signIns.inc({ result: 'failed' });
        throw unauthorized(INVALID_CREDENTIALS, 'invalid_credentials');
      }
      const pair = await writeDb.transaction().execute(async (trx) => {
        await recordAudit(trx, {
          actorId: found.id,
          action: 'auth.login',
          decision: 'allow',
          resourceType: 'user',
          resourceId: found.id,
          ...auditRequest(client),
        });
        return startSession(found, client, trx);
      });
      signIns.inc({ result: 'ok' });
      signedIn(pair);
      return pair;
    },

    /**
     * Rotates the refresh token. A token that was already used is a replay (stolen, or a client
     * bug): the whole family is revoked, including the newest token the legitimate holder has.
     *
     * Refreshes that overlap in this process share one rotation. Two tabs of one browser that
     * refresh at the same moment send the same token while neither has an answer yet: that is one
     * logical refresh sent twice, not a replay, so the second caller waits for the first and gets
     * the very same pair (or the same refusal). Only overlap counts: the entry is dropped as soon
     * as the first refresh settles, so a token presented after its rotation completed is a reuse
     * and revokes the family, as the strict contract says. A thief racing the holder to the
     * millisecond would share the pair too; the next rotation by either of them makes the other's
     * copy a reuse, so that theft is still caught one refresh later. Across instances nothing is
     * shared: the session row lock serialises the two refreshes and the second one is a reuse, as
     * before.
     *
     * Opt-in (`refreshReuseIntervalMs` > 0), for the token just rotated: within the interval, a
     * second use gets the same successor and a fresh access token, as Supabase does; only while
     * that successor is still the newest token of the session: once it was rotated in turn,
     * presenting its parent is a replay like any other. This weakens theft detection inside the
     * window and departs from the strict contract, so it is off by default.
     */
    refresh(refreshToken: string, client: ClientContext): Promise<TokenPair> {
      if (!refreshToken.startsWith(REFRESH_PREFIX)) return Promise.reject(invalidRefreshToken());
      const hash = sha256(refreshToken);
      const key = hash.toString('hex');
      const running = refreshesInFlight.get(key);
      if (running) return running;
      const started = (async () => {
        try {
          return await rotate(refreshToken, hash, client);
        } finally {
          refreshesInFlight.delete(key);
        }
      })();
      refreshesInFlight.set(key, started);
      return started;
    },

    /** Returns the revision the revocation committed at (the consistency token). */
    async logout(principal: Principal & { kind: 'user' }, client: ClientContext): Promise<number> {
      return (await revokeAudited(principal.userId, { only: principal.sessionId }, 'logout', client))
        .revision;
    },

    async logoutAll(
      principal: Principal,
      client: ClientContext,
    ): Promise<{ count: number; revision: number }> {
      return revokeAudited(principal.userId, {}, 'logout_all', client);
    },

    async me(userId: string): Promise<PublicUser> {
      const user = await repo.findUserById(readDb, userId);
      if (!user) throw notFound('User not found');
      return toPublicUser(user);
    },

    async updateProfile(userId: string, changes: { display_name?: string | undefined }): Promise<PublicUser> {
      const displayName = changes.display_name?.trim();
      const user = await repo.updateUser(writeDb, userId, displayName ? { display_name: displayName } : {});
      if (!user) throw notFound('User not found');
      return toPublicUser(user);
    },

    /** Changes the password and revokes every other session of the user. */
    async changePassword(
      principal: Principal & { kind: 'user' },
      input: { current_password: string; new_password: string },
      client: ClientContext,
    ): Promise<{ revoked_sessions: number; revision: number }> {
      const stored = await repo.findPasswordHash(readDb, principal.userId);
      if (!stored || !(await hasher.verify(stored, input.current_password))) {
        // A stolen access token guessing the password: the owner sees it in their security events.
        auditLater(
          {
            actorId: principal.userId,
            action: 'auth.password_change_failed',
            resourceType: 'user',
            resourceId: principal.userId,
            decision: 'deny',
            reason: 'current password is incorrect',
          },
          client,
        );
        // 403, not 401: the caller's token is fine, and clients sign out on 401.
        throw forbidden('Current password is incorrect', 'invalid_current_password');
      }
      const passwordHash = await hasher.hash(input.new_password);
      const { value: revoked, revision } = await transactRevised(writeDb, async (trx) => {
        await repo.updateUser(trx, principal.userId, { password_hash: passwordHash });
        const revoked = await repo.revokeSessions(
          trx,
          { userId: principal.userId, except: principal.sessionId },
          'password_changed',
        );
        await recordAudit(trx, {
          actorId: principal.userId,
          action: 'auth.password_changed',
          resourceType: 'user',
          resourceId: principal.userId,
          details: { revoked_sessions: revoked.length },
          ...auditRequest(client),
        });
        return revoked;
      });
      return { revoked_sessions: revoked.length, revision };
    },
  };

  function invalidRefreshToken() {
    return unauthorized('Refresh token is invalid or expired', 'invalid_refresh_token');
  }

  /** One rotation of a refresh token (see `refresh`). */
  async function rotate(refreshToken: string, hash: Buffer, client: ClientContext): Promise<TokenPair> {
    // Nearly every refresh is the simple case, rotated in one statement (1 round trip, was 4);
    // anything else — unknown, expired, revoked, or a token presented again — goes the long way.
    const next = deps.refreshSuccessorOf(refreshToken);
    const simple = await repo.rotateLiveRefreshToken(writeDb, { tokenHash: hash, nextHash: sha256(next) });
    const outcome = simple
      ? ({ kind: 'rotated', ...simple, refreshToken: next } as const)
      : await rotateInTransaction(hash, next, client);
    if (outcome.kind === 'reused') {
      // The family is revoked: make sure this process no longer serves it before saying so.
      await deps.awaitRevision?.(await committedRevision(writeDb));
      throw unauthorized(
        'Refresh token was already used; the session has been revoked',
        'refresh_token_reused',
      );
    }
    if (outcome.kind === 'invalid') throw invalidRefreshToken();
    const access = await tokens.issue(outcome.user.id, outcome.sessionId);
    return {
      user: toPublicUser(outcome.user),
      access_token: access.token,
      refresh_token: outcome.refreshToken,
      token_type: 'Bearer',
      expires_in: access.expiresIn,
    };
  }

  type Rotation =
    | { kind: 'rotated'; user: repo.UserRow; sessionId: string; refreshToken: string }
    | { kind: 'reused' }
    | { kind: 'invalid' };

  /**
   * Every refresh that is not the simple case, in one transaction with the token and its session
   * locked: unknown, expired or revoked (invalid), presented again within the reuse grace window
   * (answered with its successor), or a replay (the session family revoked and audited).
   */
  async function rotateInTransaction(hash: Buffer, next: string, client: ClientContext): Promise<Rotation> {
    return writeDb.transaction().execute(async (trx): Promise<Rotation> => {
      const state = await repo.lockRefreshToken(trx, hash, deps.refreshReuseIntervalMs);
      if (!state || state.revoked_at || state.expired || !state.user_active)
        return { kind: 'invalid' as const };
      if (state.used_at && state.used_recently) {
        // The session row is locked: the successor cannot be rotated while we look at it.
        const current = await repo.findSessionToken(trx, state.session_id, sha256(next));
        if (current && !current.used) {
          const user = await repo.findUserById(trx, state.user_id);
          if (!user) return { kind: 'invalid' as const };
          return { kind: 'rotated' as const, user, sessionId: state.session_id, refreshToken: next };
        }
        // Its successor was rotated already (a grandparent), or is not there at all (the server
        // secret changed since): a replay like any other.
      }
      if (state.used_at) {
        await repo.revokeSessions(
          trx,
          { userId: state.user_id, only: state.session_id },
          'refresh_token_reuse',
        );
        await recordAudit(trx, {
          actorId: state.user_id,
          action: 'auth.refresh_token_reuse',
          resourceType: 'session',
          resourceId: state.session_id,
          decision: 'deny',
          reason: 'a refresh token was presented twice; the session family is revoked',
          ...auditRequest(client),
        });
        return { kind: 'reused' as const };
      }
      const user = await repo.rotateRefreshToken(trx, {
        tokenHash: hash,
        sessionId: state.session_id,
        nextHash: sha256(next),
        userId: state.user_id,
      });
      if (!user) return { kind: 'invalid' as const };
      return { kind: 'rotated' as const, user, sessionId: state.session_id, refreshToken: next };
    });
  }

  function signedIn(pair: TokenPair) {
    const claims = JSON.parse(
      Buffer.from(pair.access_token.split('.')[1] ?? '', 'base64url').toString('utf8'),
    );
    if (typeof claims.sid === 'string') deps.onSignIn?.(pair.user.id, claims.sid);
  }

  /** Denials are audited off the request path: a failed login must not wait for, or fail on, the log. */
  function auditLater(event: Omit<AuditEvent, 'requestId' | 'ip'>, client: ClientContext) {
    recordAudit(writeDb, {
      ...event,
      ...auditRequest(client),
    }).catch(deps.onBackgroundError);
  }

  async function revokeAudited(
    userId: string,
    filter: { only?: string },
    reason: string,
    client: ClientContext,
  ): Promise<{ count: number; revision: number }> {
    // One statement (revocation and its audit event together), then the token of its commit.
    const count = await repo.revokeSessionsAudited(writeDb, { userId, ...filter }, reason, {
      action: `auth.${reason}`,
      requestId: client.requestId,
      ip: client.ip ?? null,
    });
    return { count, revision: await committedRevision(writeDb) };
  }
}
