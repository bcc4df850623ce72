import type { Kysely } from 'kysely';
import type { FactCache, Layer, Stamped } from '../../platform/cache/fact-cache.js';
import { forbidden, notFound, unauthorized } from '../../platform/http/errors.js';
import type { AuthzTally, DenialReason } from '../../platform/observability/authz-tally.js';
import { type AuditEvent, auditRequest } from '../audit/service.js';
import { credentialKeys, sessionVerdict } from '../auth/credentials.js';
import type { CachedGeneration, CachedProject, CachedSession, CachedUser } from './fact-kinds.js';
import {
  assemble,
  createFactsLoader,
  type FactsLoader,
  type FactsRequest,
  factKeys,
  isUuid,
  kyselyFactsQuery,
  type LoadedFacts,
  type Lookup,
  type ResourceRef,
  rootKey,
} from './facts.js';
import { decide } from './policy.js';
import type { Decision, Permission, ResourceFacts } from './types.js';

export type CacheLayer = Layer;

/** A cached fact and the layer it came from. */
type FoundFact = { entry: Stamped; layer: Layer };

export interface CheckResult {
  facts: ResourceFacts;
  decision: Decision;
  /** The one revision at which every fact the decision used held (its consistency token). */
  revision: number;
  cache: CacheLayer;
}

export interface AccessContext {
  requestId: string;
  ip: string | null;
  /** A consistency token the client sent: answer from facts at least this fresh. */
  minRevision?: number | undefined;
  /** The caller's session, when authentication left its check to this request's facts load. */
  pendingSession?: PendingSession | undefined;
  /** The caller's session (a signed-in user): a write re-checks it with its fresh facts. */
  sessionId?: string | undefined;
}

/** An access token whose session has not been checked yet: checked with the facts, in one go. */
export interface PendingSession {
  sessionId: string;
  userId: string;
  /** Set by the engine once the session was found live; a response without it fails closed. */
  verified?: boolean;
}

/** What a write needs: a permission on a resource. */
export interface Requirement {
  resource: ResourceRef;
  permission: Permission;
}

export interface AuthzEngineDeps {
  loadFacts: FactsLoader;
  cache: FactCache;
  auditDenial: (event: AuditEvent) => void;
  /** Counts every enforced decision (velro_authz_decisions_total, the probing rule). */
  tally?: AuthzTally | undefined;
  now?: () => number;
}

/** Why a decision did not grant `permission` (a label of velro_authz_denials_total). */
export function denialReason(result: CheckResult): DenialReason {
  if (!result.facts.exists) return 'not_found';
  const decision = result.decision;
  if (decision.permissions.length > 0) return 'lacks_permission';
  return decision.rule === 1 ? 'deleted' : 'no_access';
}

export type AuthzEngine = ReturnType<typeof createAuthzEngine>;

/** The subject of fact loads that are about a resource alone (its memberships are never read). */
const NOBODY = '00000000-0000-0000-0000-000000000000';

const RESOURCE_NAMES = { generation: 'Generation', project: 'Project', team: 'Team' } as const;
const LAYER_RANK: Record<Layer, number> = { l1: 2, l2: 1, miss: 0 };
const worse = (a: Layer, b: Layer): Layer => (LAYER_RANK[a] <= LAYER_RANK[b] ? a : b);

/**
 * A resource with its id in lower case, the form the database writes in keys: the same object when
 * the id already is (as every id this service hands out), so the warm path allocates nothing here.
 * Ids are normalised once, where they enter the engine; everything inside trusts them. (Whether an
 * id is a uuid at all is `assemble`'s question: one that is not names nothing.)
 */
function lowerResource(resource: ResourceRef): ResourceRef {
  const id = resource.id.toLowerCase();
  return id === resource.id ? resource : { type: resource.type, id };
}

const normalise = (r: FactsRequest): FactsRequest => ({
  subjectId: r.subjectId.toLowerCase(),
  resource: lowerResource(r.resource),
});

/** Builds an answer from facts, or names the first piece it still needs. */
type Builder<T> = (lookup: Lookup) => { value: T } | { missing: string };

const fromLoad =
  (loaded: LoadedFacts): Lookup =>
  (key) =>
    loaded.entries.has(key) ? { known: true, value: loaded.entries.get(key) } : { known: false };

/**
 * Facts in, decision out. Facts come from the cache when it may answer (a warm check is a few Map
 * lookups and the pure policy) and otherwise from ONE statement for any number of checks, whose
 * results fill the cache. Every decision is taken on facts that all held at one revision, which the
 * answer carries. Reads call `require`; writes call `requireFresh`, which never reads a cache.
 */
export function createAuthzEngine(deps: AuthzEngineDeps) {
  const { cache } = deps;
  const now = deps.now ?? Date.now;
  const tally = deps.tally ?? null;

  // One lookup for every warm check (they run synchronously, one at a time): no closure per call.
  let oldest = Number.MAX_SAFE_INTEGER;
  let newest = 0;
  // The warm attempt's L1 lookups, counted once their outcome is final (see `fromL1`).
  let l1Hits = 0;
  let l1Misses = 0;
  const UNKNOWN = { known: false } as const;
  const l1Lookup: Lookup = (key) => {
    const hit = cache.peekUncounted(key);
    if (!hit) {
      l1Misses += 1;
      return UNKNOWN;
    }
    l1Hits += 1;
    if (hit.r < oldest) oldest = hit.r;
    if (hit.r > newest) newest = hit.r;
    return { known: true, value: hit.v };
  };

  /**
   * Sync, L1 only (ids normalised). Undefined when any piece is missing, the cache may not answer,
   * or the pieces held at no common revision.
   */
  function fromL1(
    subjectId: string,
    resource: ResourceRef,
    minRevision: number,
    /** True when nothing asks L1 again if this fails (the database answers): count the lookups anyway. */
    final: boolean,
  ): CheckResult | undefined {
    return cache.canAnswer(minRevision)
      ? fromL1Answerable(subjectId, resource, minRevision, final)
      : undefined;
  }

  /** `fromL1` once the cache may answer (checked once for a whole bulk: it reads the clock). */
  function fromL1Answerable(
    subjectId: string,
    resource: ResourceRef,
    minRevision: number,
    final: boolean,
  ): CheckResult | undefined {
    oldest = Number.MAX_SAFE_INTEGER;
    newest = 0;
    l1Hits = 0;
    l1Misses = 0;
    const built = assemble(subjectId, resource, l1Lookup);
    const revision = 'facts' in built ? cache.commonRevision(oldest, newest) : -1;
    if (!('facts' in built) || revision < minRevision) {
      // Not answered here: the cache's slower path asks these keys again and counts them there.
      if (final) cache.countL1(l1Hits, l1Misses);
      return undefined;
    }
    cache.countL1(l1Hits, 0);
    return { facts: built.facts, decision: decide(subjectId, built.facts), revision, cache: 'l1' };
  }

  /**
   * Through the cache's layers (L2, single-flight loads). `ahead`: keys known to be needed before
   * any fact is read (the resource's, the subject's memberships, a deferred session's): asked of
   * L1 and then, together, of L2 in ONE round trip; the keys a fact names (a generation's project)
   * follow one by one. A deferred `session` is verified on its cached facts first. Undefined when
   * the cache cannot answer it (a piece held at no common revision, a session's facts not cached):
   * the caller then loads everything in one statement.
   */
  async function throughCache<T>(
    build: Builder<T>,
    request: FactsRequest,
    minRevision: number,
    ahead: readonly string[],
    session?: PendingSession,
  ): Promise<{ value: T; revision: number; cache: Layer } | undefined> {
    let layer: Layer = 'l1';
    let low = Number.MAX_SAFE_INTEGER;
    let high = 0;
    const found = ahead.length > 0 ? await cache.getMany(ahead) : new Map<string, FoundFact>();
    if (session && !sessionFromCache(session, found, minRevision)) return undefined;
    // Only the pieces the decision reads count towards its revision (a prefetched key it never
    // consults, e.g. memberships for a generation outside any project, does not).
    const lookup: Lookup = (key) => {
      const got = found.get(key);
      if (!got) return UNKNOWN;
      if (got.entry.r < low) low = got.entry.r;
      if (got.entry.r > high) high = got.entry.r;
      layer = worse(layer, got.layer);
      return { known: true, value: got.entry.v };
    };
    const load = async () => {
      const loaded = await deps.loadFacts([request]);
      return { rev: loaded.revision, entries: loaded.entries };
    };
    for (let step = 0; step < 4; step++) {
      const built = build(lookup);
      if ('value' in built) {
        const revision = cache.commonRevision(low, high);
        if (revision < minRevision) return undefined;
        return { value: built.value, revision, cache: layer };
      }
      const got = await cache.get(built.missing, load, ahead.includes(built.missing));
      found.set(built.missing, got);
    }
    throw new Error('authorization facts did not converge');
  }

  /**
   * A deferred session decided on cached facts (`found`), under the one rule (`sessionVerdict`):
   * true when live (and marked verified), false when the cache cannot tell (a fact missing, the two
   * held at no common revision); a session found not live is refused here.
   */
  function sessionFromCache(
    session: PendingSession,
    found: ReadonlyMap<string, FoundFact>,
    minRevision: number,
  ): boolean {
    const userId = session.userId.toLowerCase();
    const sess = found.get(credentialKeys.session(session.sessionId.toLowerCase()));
    if (!sess) return false;
    const value = sess.entry.v as CachedSession | null;
    const at = now();
    // A session that is not this user's live one decides alone, whatever the user.
    if (sessionVerdict(value, { role: 'user', active: true }, userId, at) === null)
      throw unauthorized('Access token is missing, invalid, expired or revoked', 'invalid_token');
    const user = found.get(credentialKeys.user(userId));
    if (!user) return false;
    const r1 = sess.entry.r;
    const r2 = user.entry.r;
    if (cache.commonRevision(Math.min(r1, r2), Math.max(r1, r2)) < minRevision) return false;
    if (sessionVerdict(value, user.entry.v as CachedUser | null, userId, at) === null)
      throw unauthorized('Access token is missing, invalid, expired or revoked', 'invalid_token');
    session.verified = true;
    return true;
  }

  /** A deferred session's fact keys. */
  const sessionKeys = (session: PendingSession) => [
    credentialKeys.session(session.sessionId.toLowerCase()),
    credentialKeys.user(session.userId.toLowerCase()),
  ];

  /** The keys a check needs before any fact is read: its resource's and the subject's memberships. */
  function keysAhead(request: FactsRequest, session: PendingSession | undefined): string[] {
    const keys = session ? sessionKeys(session) : [];
    if (isUuid(request.resource.id) && isUuid(request.subjectId)) {
      keys.push(rootKey(request.resource));
      // Generations outside a project never read it; one more key in the same round trip.
      keys.push(factKeys.memberships(request.subjectId));
    }
    return keys;
  }

  const decisionOf =
    (request: FactsRequest): Builder<{ facts: ResourceFacts; decision: Decision }> =>
    (lookup) => {
      const built = assemble(request.subjectId, request.resource, lookup);
      return 'facts' in built
        ? { value: { facts: built.facts, decision: decide(request.subjectId, built.facts) } }
        : built;
    };

  /** Decisions on one fresh load (one statement, one snapshot), through `loadFacts`. */
  async function fromLoaded(
    loadFacts: FactsLoader,
    requests: FactsRequest[],
    session: PendingSession | undefined,
    fill: boolean,
  ): Promise<CheckResult[]> {
    const loaded = await loadFacts(requests, session?.sessionId);
    const lookup = fromLoad(loaded);
    if (session) verifySession(session, lookup);
    if (fill && cache.enabled) cache.warm(loaded.entries, loaded.revision);
    return requests.map((request) => {
      const built = assemble(request.subjectId, request.resource, lookup);
      // A load answers every key its requests need; a missing one would be a loader bug.
      if (!('facts' in built)) throw new Error(`facts load did not return ${built.missing}`);
      return {
        facts: built.facts,
        decision: decide(request.subjectId, built.facts),
        revision: loaded.revision,
        cache: 'miss' as const,
      };
    });
  }

  /** Straight from the database: tokens newer than this process has applied, a silent bus, mixed pieces. */
  const fromDatabase = (requests: FactsRequest[], session?: PendingSession) =>
    fromLoaded(deps.loadFacts, requests, session, true);

  /** A deferred access-token check, decided on the facts loaded with the resource's. */
  function verifySession(session: PendingSession, lookup: Lookup): void {
    const userId = session.userId.toLowerCase();
    const sess = lookup(credentialKeys.session(session.sessionId.toLowerCase()));
    const user = lookup(credentialKeys.user(userId));
    const role = sessionVerdict(
      sess.known ? (sess.value as CachedSession | null) : null,
      user.known ? (user.value as CachedUser | null) : null,
      userId,
      now(),
    );
    if (role === null)
      throw unauthorized('Access token is missing, invalid, expired or revoked', 'invalid_token');
    session.verified = true;
  }

  /**
   * A check that L1 did not answer (ids normalised): a deferred session to verify, a piece not in
   * L1, a cache that may not answer, pieces at no common revision.
   */
  async function checkCold(
    request: FactsRequest,
    minRevision: number,
    session: PendingSession | undefined,
  ): Promise<CheckResult> {
    if (cache.canAnswer(minRevision)) {
      const found = await throughCache(
        decisionOf(request),
        request,
        minRevision,
        keysAhead(request, session),
        session,
      );
      if (found) return { ...found.value, revision: found.revision, cache: found.cache };
    }
    return (await fromDatabase([request], session?.verified ? undefined : session))[0] as CheckResult;
  }

  /**
   * The answer now (synchronously, with no promise) when L1 holds it, else its promise. The ids
   * are normalised here, once, for both paths.
   */
  function checkNowOrLater(
    subjectId: string,
    resource: ResourceRef,
    minRevision = 0,
    session?: PendingSession,
  ): CheckResult | Promise<CheckResult> {
    const subject = subjectId.toLowerCase();
    const ref = lowerResource(resource);
    if (!session) {
      const warm = fromL1(subject, ref, minRevision, false);
      if (warm) return warm;
    }
    return checkCold({ subjectId: subject, resource: ref }, minRevision, session);
  }

  async function check(
    subjectId: string,
    resource: ResourceRef,
    minRevision = 0,
    session?: PendingSession,
  ): Promise<CheckResult> {
    const answer = checkNowOrLater(subjectId, resource, minRevision, session);
    return answer instanceof Promise ? await answer : answer;
  }

  /** `require` past L1 (see `requireNowOrLater`). */
  async function requireCold(
    cold: Promise<CheckResult>,
    subjectId: string,
    resource: ResourceRef,
    permission: Permission,
    context: AccessContext,
  ): Promise<CheckResult> {
    return enforce(await cold, subjectId, resource, permission, context);
  }

  /** Any number of checks: the warm ones from L1, all the others together in one statement. */
  async function checkMany(
    requests: FactsRequest[],
    minRevision = 0,
    session?: PendingSession,
  ): Promise<CheckResult[]> {
    const normalised = requests.map(normalise);
    if (session) {
      // The session from the cache (L1, else one L2 round trip), or everything in one statement.
      const cached =
        cache.canAnswer(minRevision) &&
        sessionFromCache(session, await cache.getMany(sessionKeys(session)), minRevision);
      if (!cached) return fromDatabase(normalised, session);
    }
    // Nothing below awaits, so the cache's state (and whether it may answer) holds for the whole pass.
    const answerable = cache.canAnswer(minRevision);
    const results: (CheckResult | undefined)[] = normalised.map((r) =>
      answerable ? fromL1Answerable(r.subjectId, r.resource, minRevision, true) : undefined,
    );
    const cold = normalised.filter((_, i) => results[i] === undefined);
    if (cold.length > 0) {
      const loaded = await fromDatabase(cold);
      let next = 0;
      for (let i = 0; i < results.length; i++) if (results[i] === undefined) results[i] = loaded[next++];
    }
    return results as CheckResult[];
  }

  /**
   * Enforcement: the subject must hold `permission`. A resource the subject may not view answers
   * 404 exactly like a missing one; a viewable one without the permission answers 403. Every denial
   * is audited.
   */
  function enforce(
    result: CheckResult,
    subjectId: string,
    resource: ResourceRef,
    permission: Permission,
    context: AccessContext,
  ): CheckResult {
    const held = result.decision.permissions;
    // A user's requests carry their session; a service key's carry none.
    const byKey = context.sessionId === undefined && context.pendingSession === undefined;
    if (held.includes(permission)) {
      if (tally !== null) tally.allowed(byKey, result.cache);
      return result;
    }
    if (tally !== null) tally.denied(byKey, result.cache, denialReason(result), subjectId);
    const visible = held.includes('view');
    deps.auditDenial({
      actorId: subjectId,
      action: `${resource.type}.${permission}`,
      resourceType: resource.type,
      resourceId: resource.id.slice(0, 100),
      decision: 'deny',
      reason: visible ? `lacks ${permission}` : result.decision.reason,
      ...auditRequest(context),
    });
    if (!visible) throw notFound(`${RESOURCE_NAMES[resource.type]} not found`);
    throw forbidden(`You cannot ${permission} this ${resource.type}`);
  }

  return {
    checkNowOrLater,
    check,
    checkMany,

    /**
     * `require` enforced now (synchronously: the answer, or the 403/404 thrown) when L1 holds the
     * facts, else its promise. The ids are normalised once, for both paths.
     */
    requireNowOrLater(
      subjectId: string,
      resource: ResourceRef,
      permission: Permission,
      context: AccessContext,
    ): CheckResult | Promise<CheckResult> {
      const answer = checkNowOrLater(subjectId, resource, context.minRevision ?? 0, context.pendingSession);
      if (answer instanceof Promise) return requireCold(answer, subjectId, resource, permission, context);
      return enforce(answer, subjectId, resource, permission, context);
    },

    /** Enforcement for reads (see `enforce`), on cached facts where the cache may answer. */
    async require(
      subjectId: string,
      resource: ResourceRef,
      permission: Permission,
      context: AccessContext,
    ): Promise<CheckResult> {
      const result = await check(subjectId, resource, context.minRevision ?? 0, context.pendingSession);
      return enforce(result, subjectId, resource, permission, context);
    },

    /**
     * Enforcement for writes (SPEC §6 rule 9): every requirement is decided on facts read in ONE
     * statement through `db` (the write's own transaction, or the primary's pool), never on cached
     * ones, so an instance whose invalidations are late cannot let a revoked user write. The
     * caller's session is checked in the same statement. The results do not fill the cache: a
     * transaction's reads may include its own uncommitted changes.
     */
    async requireAllFresh<T>(
      db: Kysely<T>,
      subjectId: string,
      requirements: Requirement[],
      context: AccessContext,
    ): Promise<CheckResult[]> {
      const subject = subjectId.toLowerCase();
      const requests = requirements.map((r) => ({ subjectId: subject, resource: lowerResource(r.resource) }));
      const session =
        context.pendingSession ??
        (context.sessionId ? { sessionId: context.sessionId, userId: subjectId } : undefined);
      const results = await fromLoaded(createFactsLoader(kyselyFactsQuery(db)), requests, session, false);
      return results.map((result, i) => {
        const { resource, permission } = requirements[i] as Requirement;
        return enforce(result, subjectId, resource, permission, context);
      });
    },

    /** `requireAllFresh` for one requirement. */
    async requireFresh<T>(
      db: Kysely<T>,
      subjectId: string,
      resource: ResourceRef,
      permission: Permission,
      context: AccessContext,
    ): Promise<CheckResult> {
      const [result] = await this.requireAllFresh(db, subjectId, [{ resource, permission }], context);
      return result as CheckResult;
    },

    /**
     * Whether a generation exists and neither it nor its project is deleted (the media route's
     * deletion check; no subject involved), from facts that held at one revision at least
     * `minRevision`.
     */
    async generationIsLive(generationId: string, minRevision = 0): Promise<boolean> {
      const id = generationId.toLowerCase();
      if (!isUuid(id)) return false;
      const request = { subjectId: NOBODY, resource: { type: 'generation' as const, id } };
      const build: Builder<boolean> = (lookup) => {
        const gen = lookup(factKeys.generation(id));
        if (!gen.known) return { missing: factKeys.generation(id) };
        const g = gen.value as CachedGeneration | null;
        if (!g || g.deleted) return { value: false };
        if (g.projectId === null) return { value: true };
        const project = lookup(factKeys.project(g.projectId));
        if (!project.known) return { missing: factKeys.project(g.projectId) };
        const p = project.value as CachedProject | null;
        return { value: p !== null && !p.deleted };
      };
      if (cache.canAnswer(minRevision)) {
        const found = await throughCache(build, request, minRevision, [factKeys.generation(id)]);
        if (found) return found.value;
      }
      const loaded = await deps.loadFacts([request]);
      if (cache.enabled) cache.warm(loaded.entries, loaded.revision);
      const answer = build(fromLoad(loaded));
      if (!('value' in answer)) throw new Error(`facts load did not return ${answer.missing}`);
      return answer.value;
    },
  };
}
