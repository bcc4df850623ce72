import type { FactCache, Layer } from '../../platform/cache/fact-cache.js';
import { forbidden, notFound, unauthorized } from '../../platform/http/errors.js';
import type { AuditEvent } from '../audit/service.js';
import { credentialKeys, type SessionFact, sessionVerdict, type UserFact } from '../auth/credentials.js';
import {
  assemble,
  type FactsLoader,
  type FactsRequest,
  factKeys,
  type GenerationFact,
  isUuid,
  type LoadedFacts,
  type Lookup,
  type ProjectFact,
  type ResourceRef,
} from './facts.js';
import { decide } from './policy.js';
import type { Decision, Permission, ResourceFacts } from './types.js';

export type CacheLayer = Layer;

export interface CheckResult {
  facts: ResourceFacts;
  decision: Decision;
  /** The revision the facts were read at (the oldest stamp among the pieces used). */
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
}

/** An access token whose session has not been checked yet: checked with the facts, in one go. */
export interface PendingSession {
  sessionId: string;
  userId: string;
  /** Set by the engine once the session was found live; a response without it fails closed. */
  verified?: boolean;
}

export interface AuthzEngineDeps {
  loadFacts: FactsLoader;
  cache: FactCache;
  auditDenial: (event: AuditEvent) => void;
  now?: () => number;
}

export type AuthzEngine = ReturnType<typeof createAuthzEngine>;

/** The subject of fact loads that are about a resource alone (its memberships are never read). */
const NOBODY = '00000000-0000-0000-0000-000000000000';

const RESOURCE_NAMES = { generation: 'Generation', project: 'Project', team: 'Team' } as const;
const LAYER_RANK: Record<Layer, number> = { l1: 2, l2: 1, miss: 0 };
const worse = (a: Layer, b: Layer): Layer => (LAYER_RANK[a] <= LAYER_RANK[b] ? a : b);

const normalise = (r: FactsRequest): FactsRequest => ({
  subjectId: r.subjectId.toLowerCase(),
  resource: { type: r.resource.type, id: r.resource.id.toLowerCase() },
});

/**
 * Facts in, decision out. Facts come from the cache when they are there (a warm check is a few
 * Map lookups and the pure policy) and otherwise from ONE statement for any number of checks,
 * whose results fill the cache. Routes call `require`; nothing else decides access.
 */
export function createAuthzEngine(deps: AuthzEngineDeps) {
  const { cache } = deps;
  const now = deps.now ?? Date.now;
  let highestRevision = 0;

  const fromLoad =
    (loaded: LoadedFacts): Lookup =>
    (key) =>
      loaded.entries.has(key) ? { known: true, value: loaded.entries.get(key) } : { known: false };

  // One lookup for every warm check (they run synchronously, one at a time): no closure per call.
  let oldest = Number.MAX_SAFE_INTEGER;
  const UNKNOWN = { known: false } as const;
  const l1Lookup: Lookup = (key) => {
    const hit = cache.peek(key);
    if (!hit) return UNKNOWN;
    if (hit.r < oldest) oldest = hit.r;
    return { known: true, value: hit.v };
  };

  /** Sync, L1 only. Undefined when any piece is missing or the cache may not answer. */
  function fromL1(request: FactsRequest, minRevision: number): CheckResult | undefined {
    if (!cache.enabled || minRevision > cache.appliedUpTo) return undefined;
    oldest = Number.MAX_SAFE_INTEGER;
    const built = assemble(request.subjectId, request.resource, l1Lookup);
    if (!('facts' in built)) return undefined;
    // Cached facts hold until an invalidation arrives: they are current as of appliedUpTo.
    const revision =
      oldest === Number.MAX_SAFE_INTEGER ? cache.appliedUpTo : Math.max(oldest, cache.appliedUpTo);
    return { facts: built.facts, decision: decide(request.subjectId, built.facts), revision, cache: 'l1' };
  }

  /** Through the cache's layers (L2, single-flight loads); a miss costs one statement. */
  async function throughCache(request: FactsRequest): Promise<CheckResult> {
    let layer: Layer = 'l1';
    let oldest = Number.MAX_SAFE_INTEGER;
    const known = new Map<string, unknown>();
    const load = async () => {
      const loaded = await deps.loadFacts([request]);
      return { rev: loaded.revision, entries: loaded.entries };
    };
    for (let step = 0; step < 4; step++) {
      const built = assemble(request.subjectId, request.resource, (key) =>
        known.has(key) ? { known: true, value: known.get(key) } : { known: false },
      );
      if ('facts' in built) {
        if (oldest > highestRevision && oldest !== Number.MAX_SAFE_INTEGER) highestRevision = oldest;
        const revision = Math.max(oldest === Number.MAX_SAFE_INTEGER ? 0 : oldest, cache.appliedUpTo);
        return {
          facts: built.facts,
          decision: decide(request.subjectId, built.facts),
          revision,
          cache: layer,
        };
      }
      const got = await cache.get(built.missing, load);
      layer = worse(layer, got.layer);
      if (got.entry.r < oldest) oldest = got.entry.r;
      known.set(built.missing, got.entry.v);
    }
    throw new Error('authorization facts did not converge');
  }

  /** Straight from the database: for tokens newer than this process has seen, and the kill switch. */
  async function fromDatabase(requests: FactsRequest[], session?: PendingSession): Promise<CheckResult[]> {
    const loaded = await deps.loadFacts(requests, session?.sessionId);
    if (session) verifySession(session, fromLoad(loaded));
    if (loaded.revision > highestRevision) highestRevision = loaded.revision;
    if (cache.enabled) cache.warm(loaded.entries, loaded.revision);
    const lookup = fromLoad(loaded);
    return requests.map((request) => {
      const built = assemble(request.subjectId, request.resource, lookup);
      // A load answers every key its requests need; a missing one would be a loader bug.
      if (!('facts' in built)) throw new Error(`facts load did not return ${built.missing}`);
      return {
        facts: built.facts,
        decision: decide(request.subjectId, built.facts),
        revision: loaded.revision || highestRevision,
        cache: 'miss' as const,
      };
    });
  }

  /** A deferred access-token check, decided on the facts loaded with the resource's. */
  function verifySession(session: PendingSession, lookup: Lookup): void {
    const sess = lookup(credentialKeys.session(session.sessionId.toLowerCase()));
    const user = lookup(credentialKeys.user(session.userId.toLowerCase()));
    const role = sessionVerdict(
      sess.known ? (sess.value as SessionFact | null) : null,
      user.known ? (user.value as UserFact | null) : null,
      session.userId.toLowerCase(),
      now(),
    );
    if (role === null)
      throw unauthorized('Access token is missing, invalid, expired or revoked', 'invalid_token');
    session.verified = true;
  }

  async function check(
    subjectId: string,
    resource: ResourceRef,
    minRevision = 0,
    session?: PendingSession,
  ): Promise<CheckResult> {
    const request = normalise({ subjectId, resource });
    if (session) return (await fromDatabase([request], session))[0] as CheckResult;
    const warm = fromL1(request, minRevision);
    if (warm) return warm;
    if (!cache.enabled || minRevision > cache.appliedUpTo)
      return (await fromDatabase([request]))[0] as CheckResult;
    return throughCache(request);
  }

  /** Any number of checks: the warm ones from L1, all the others together in one statement. */
  async function checkMany(
    requests: FactsRequest[],
    minRevision = 0,
    session?: PendingSession,
  ): Promise<CheckResult[]> {
    const normalised = requests.map(normalise);
    if (session) return fromDatabase(normalised, session);
    const results: (CheckResult | undefined)[] = normalised.map((r) => fromL1(r, minRevision));
    const cold = normalised.filter((_, i) => results[i] === undefined);
    if (cold.length > 0) {
      const loaded = await fromDatabase(cold);
      let next = 0;
      for (let i = 0; i < results.length; i++) if (results[i] === undefined) results[i] = loaded[next++];
    }
    return results as CheckResult[];
  }

  return {
    check,
    checkMany,

    /**
     * Enforcement for routes: the subject must hold `permission` on the resource. A resource the
     * subject may not view answers 404 exactly like a missing one; a viewable resource without the
     * permission answers 403. Every denial is audited.
     */
    async require(
      subjectId: string,
      resource: ResourceRef,
      permission: Permission,
      context: AccessContext,
    ): Promise<CheckResult> {
      const result = await check(subjectId, resource, context.minRevision ?? 0, context.pendingSession);
      const held = result.decision.permissions;
      if (held.includes(permission)) return result;
      const visible = held.includes('view');
      deps.auditDenial({
        actorId: subjectId,
        action: `${resource.type}.${permission}`,
        resourceType: resource.type,
        resourceId: resource.id.slice(0, 100),
        decision: 'deny',
        reason: visible ? `lacks ${permission}` : result.decision.reason,
        requestId: context.requestId,
        ...(context.ip ? { ip: context.ip } : {}),
      });
      if (!visible) throw notFound(`${RESOURCE_NAMES[resource.type]} not found`);
      throw forbidden(`You cannot ${permission} this ${resource.type}`);
    },

    /** The highest revision this instance has read; a floor for consistency tokens. */
    currentRevision: () => Math.max(highestRevision, cache.appliedUpTo),

    /**
     * Whether a generation exists and neither it nor its project is deleted, from cached facts
     * (the media route's deletion check; no subject involved).
     */
    async generationIsLive(generationId: string): Promise<boolean> {
      const id = generationId.toLowerCase();
      if (!isUuid(id)) return false;
      const load = async () => {
        const loaded = await deps.loadFacts([{ subjectId: NOBODY, resource: { type: 'generation', id } }]);
        return { rev: loaded.revision, entries: loaded.entries };
      };
      const gen = (await cache.get<GenerationFact>(factKeys.generation(id), load)).entry.v;
      if (!gen || gen.deleted) return false;
      if (gen.projectId === null) return true;
      const project = (await cache.get<ProjectFact>(factKeys.project(gen.projectId), load)).entry.v;
      return project !== null && !project.deleted;
    },
  };
}
