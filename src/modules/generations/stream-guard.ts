import type { InvalidationBus } from '../../platform/cache/bus.js';
import { kindOf } from '../../platform/cache/keys.js';

export interface StreamGuardOptions {
  bus: InvalidationBus;
  /** The cache keys the stream's authorization rests on now (they can change after a re-check). */
  watched: () => ReadonlySet<string>;
  /**
   * Re-authenticates and re-authorizes the reader on facts at least `minRevision` fresh; false
   * (or a rejection) when the reader lost the credential or the view.
   */
  recheck: (minRevision: number) => Promise<boolean>;
  /** Called once, when the reader lost access. */
  onLost: () => void;
}

/**
 * Keeps a long-lived answer (an event stream) authorized. A stream was authorized when it opened;
 * from then on every invalidation that touches one of the facts it rests on (the generation, its
 * project, the reader's memberships, session, user or service keys), and every moment the bus
 * distrusts its cache (a gap, a flush, a lost connection), re-checks the reader at the
 * invalidation's revision. Losing the view or the credential ends the stream at once: driven by
 * the invalidation, not by a poll. Returns the function that stops watching.
 */
export function guardStream(options: StreamGuardOptions): () => void {
  const { bus } = options;
  let stopped = false;
  let running = false;
  /** The revision the next re-check must reach (0: none pending). */
  let pending = 0;

  const run = async () => {
    if (running || stopped) return;
    running = true;
    try {
      while (pending > 0 && !stopped) {
        const minRevision = pending;
        pending = 0;
        const ok = await options.recheck(minRevision).catch(() => false);
        if (!ok && !stopped) {
          stop();
          options.onLost();
        }
      }
    } finally {
      running = false;
    }
  };

  const request = (rev: number) => {
    if (rev > pending) pending = rev;
    void run();
  };
  const onInvalidated = (key: string, rev: number) => {
    // Service keys are cached by the hash of their secret, which the stream does not keep: any key
    // revocation re-checks (they are rare).
    if (options.watched().has(key) || kindOf(key) === 'svckey') request(rev);
  };
  const onDistrust = () => request(1);

  bus.on('invalidated', onInvalidated);
  bus.on('distrust', onDistrust);
  const stop = () => {
    stopped = true;
    bus.off('invalidated', onInvalidated);
    bus.off('distrust', onDistrust);
  };
  return stop;
}
