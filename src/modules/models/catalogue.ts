import type { Kysely } from 'kysely';
import type { DB, ModelsTable } from '../../platform/db/schema.js';

/** A catalogue entry as the API shows it (the sort order only orders the list). */
export type Model = Omit<ModelsTable, 'sort_order'>;

/**
 * The model catalogue, read from the database (seeded by migration) and kept in memory: it is read
 * on every generation request and changes only with a deploy. Reloaded on a timer so that a model
 * switched off in the database stops being offered within a minute.
 */
export class ModelCatalogue {
  private byId = new Map<string, Model>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly db: Kysely<DB>) {}

  async load(): Promise<void> {
    const rows = await this.db.selectFrom('models').selectAll().orderBy('sort_order').orderBy('id').execute();
    this.byId = new Map(rows.map((r) => [r.id, r]));
  }

  startRefreshing(everyMs: number, onError: (error: unknown) => void): void {
    this.timer = setInterval(() => this.load().catch(onError), everyMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Any model, active or not (running jobs of a model switched off still need it). */
  get(id: string): Model | undefined {
    return this.byId.get(id);
  }

  active(): Model[] {
    return [...this.byId.values()].filter((m) => m.is_active);
  }
}
