import type { Layer } from '../cache/fact-cache.js';

/**
 * Authorization decisions and denials, counted on the warm path for `/metrics` and for the
 * probing rule (`authz_denial_spike`).
 *
 * A warm check takes a couple of microseconds, so counting must cost nanoseconds: a decision is one
 * increment of a typed-array slot chosen by arithmetic (no label object, no hashing, no Map), and
 * prom-client's counters take the accumulated deltas at scrape time through pre-bound label
 * children (see `createAppMetrics`). Only a denial of a resource the subject cannot see (what probing
 * for ids produces) also touches a Map, keyed by subject.
 *
 * Per-subject figures never become Prometheus labels (unbounded cardinality): the tally judges
 * subjects in process and exports one number, the most denials any single subject had in a
 * window.
 */

export type DecisionResult = 'allow' | 'deny';
/** How the caller authenticated: a user's session (access token) or a service key. */
export type DecisionMethod = 'session' | 'service_key';
/** Where the decision's facts came from: `db` is a fresh load (cache miss, or a write's own read). */
export type DecisionLayer = 'l1' | 'l2' | 'db';

/**
 * Why a decision denied: the resource does not exist (`not_found`), is deleted (`deleted`), exists
 * but grants the subject nothing (`no_access`) — all three answer 404 — or is visible but lacks the
 * permission asked for (`lacks_permission`, 403).
 */
export const DENIAL_REASONS = ['not_found', 'deleted', 'no_access', 'lacks_permission'] as const;
export type DenialReason = (typeof DENIAL_REASONS)[number];

const LAYER_SLOT: Readonly<Record<Layer, number>> = Object.freeze({ l1: 0, l2: 1, miss: 2 });
const LAYER_LABEL: readonly DecisionLayer[] = ['l1', 'l2', 'db'];
const METHOD_LABEL: readonly DecisionMethod[] = ['session', 'service_key'];
const RESULT_LABEL: readonly DecisionResult[] = ['allow', 'deny'];

/** The label values of each decision slot, in slot order: result × method × layer. */
export const DECISION_LABELS: readonly {
  result: DecisionResult;
  method: DecisionMethod;
  layer: DecisionLayer;
}[] = RESULT_LABEL.flatMap((result) =>
  METHOD_LABEL.flatMap((method) => LAYER_LABEL.map((layer) => ({ result, method, layer }))),
);

/** Subjects tracked per bucket; beyond it a bucket counts denials without attributing them. */
const MAX_SUBJECTS_PER_BUCKET = 10_000;
export const BUCKET_MS = 10_000;
/** Buckets kept: five minutes, the longest window a rule may judge. */
const BUCKETS = 30;

export interface ProbingFigures {
  /** The most denials of hidden resources any one subject had in the window. */
  maxPerSubject: number;
  /** Every denial in the window (all reasons, all subjects): the rule's sample count. */
  denials: number;
}

/** `array[slot] += 1` (the index is always in range: computed from fixed label tables). */
const bump = (array: Float64Array, slot: number) => {
  array[slot] = (array[slot] as number) + 1;
};

export class AuthzTally {
  /** Decisions by slot (see DECISION_LABELS); cumulative since start. */
  readonly decisions = new Float64Array(DECISION_LABELS.length);
  /** Denials by reason (DENIAL_REASONS order); cumulative since start. */
  readonly denials = new Float64Array(DENIAL_REASONS.length);
  /** Hidden-resource denials per subject in the current bucket. */
  private current = new Map<string, number>();
  private currentDenials = 0;
  /** Closed buckets, oldest first. */
  private readonly closed: { subjects: Map<string, number>; denials: number }[] = [];
  private timer: NodeJS.Timeout | null = null;

  /** An allowed decision. `byKey`: the caller is a service key. */
  allowed(byKey: boolean, layer: Layer): void {
    bump(this.decisions, (byKey ? 3 : 0) + LAYER_SLOT[layer]);
  }

  /**
   * A denied decision. `subjectId` is who asked (the caller): a denial of a resource they cannot
   * see (every reason but `lacks_permission`) counts towards their probing figure.
   */
  denied(byKey: boolean, layer: Layer, reason: DenialReason, subjectId: string): void {
    bump(this.decisions, 6 + (byKey ? 3 : 0) + LAYER_SLOT[layer]);
    this.currentDenials += 1;
    switch (reason) {
      case 'lacks_permission':
        bump(this.denials, 3);
        return;
      case 'not_found':
        bump(this.denials, 0);
        break;
      case 'deleted':
        bump(this.denials, 1);
        break;
      default:
        bump(this.denials, 2);
    }
    const seen = this.current.get(subjectId);
    if (seen !== undefined) this.current.set(subjectId, seen + 1);
    else if (this.current.size < MAX_SUBJECTS_PER_BUCKET) this.current.set(subjectId, 1);
  }

  /** Closes the current bucket (every BUCKET_MS once started; tests call it themselves). */
  rotate(): void {
    this.closed.push({ subjects: this.current, denials: this.currentDenials });
    if (this.closed.length > BUCKETS - 1) this.closed.shift();
    this.current = new Map();
    this.currentDenials = 0;
  }

  /** Over the last `windowMs` (whole buckets, the current one included). */
  probing(windowMs: number): ProbingFigures {
    const count = Math.max(1, Math.min(BUCKETS, Math.round(windowMs / BUCKET_MS)));
    const parts = count > 1 ? this.closed.slice(-(count - 1)) : [];
    parts.push({ subjects: this.current, denials: this.currentDenials });
    let denials = 0;
    let maxPerSubject = 0;
    const merged = new Map<string, number>();
    for (const part of parts) {
      denials += part.denials;
      for (const [subject, n] of part.subjects) {
        const total = (merged.get(subject) ?? 0) + n;
        merged.set(subject, total);
        if (total > maxPerSubject) maxPerSubject = total;
      }
    }
    return { maxPerSubject, denials };
  }

  start(bucketMs = BUCKET_MS): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.rotate(), bucketMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
