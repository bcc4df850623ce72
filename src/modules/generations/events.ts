import { type Kysely, sql } from 'kysely';
import type { PgListener } from '../../platform/db/listener.js';
import type { GenerationStatus } from '../../platform/db/schema.js';

export const GENERATION_CHANNEL = 'velro_generation';

export interface GenerationEvent {
  id: string;
  status: GenerationStatus;
  progress: number;
  error: string | null;
}

export const TERMINAL: ReadonlySet<GenerationStatus> = new Set(['completed', 'failed', 'cancelled']);

/** NOTIFY in the caller's transaction: listeners on every instance hear it when it commits. */
export async function publishGenerationEvent<T>(db: Kysely<T>, event: GenerationEvent): Promise<void> {
  await sql`SELECT pg_notify(${GENERATION_CHANNEL}, ${JSON.stringify(event)})`.execute(db);
}

type Subscriber = (event: GenerationEvent) => void;

/**
 * Fans the generation channel of this process's listener out to per-generation subscribers (SSE
 * streams, the worker's cancellation watch). Events come from any instance through PostgreSQL.
 */
export class GenerationEventHub {
  private readonly subscribers = new Map<string, Set<Subscriber>>();

  constructor(listener: PgListener) {
    listener.on('notification', (channel: string, payload: string) => {
      if (channel !== GENERATION_CHANNEL) return;
      let event: GenerationEvent;
      try {
        event = JSON.parse(payload) as GenerationEvent;
      } catch {
        return;
      }
      const set = this.subscribers.get(event.id);
      if (set) for (const fn of [...set]) fn(event);
    });
  }

  subscribe(id: string, fn: Subscriber): () => void {
    let set = this.subscribers.get(id);
    if (!set) {
      set = new Set();
      this.subscribers.set(id, set);
    }
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0) this.subscribers.delete(id);
    };
  }

  get subscriptionCount(): number {
    let n = 0;
    for (const set of this.subscribers.values()) n += set.size;
    return n;
  }
}
