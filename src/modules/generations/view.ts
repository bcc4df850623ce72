import type { GenerationStatus } from '../../platform/db/schema.js';

/** The public shape of a generation (a table row is never returned as it is). */
export interface GenerationView {
  id: string;
  user_id: string;
  project_id: string | null;
  model_id: string;
  prompt: string;
  negative_prompt: string | null;
  parameters: Record<string, unknown>;
  status: GenerationStatus;
  progress: number;
  error: string | null;
  cost_credits: number;
  is_favorite: boolean;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  completed_at: string | null;
}

export const GENERATION_COLUMNS = [
  'id',
  'user_id',
  'project_id',
  'model_id',
  'prompt',
  'negative_prompt',
  'parameters',
  'status',
  'progress',
  'error',
  'cost_credits',
  'is_favorite',
  'created_at',
  'updated_at',
  'started_at',
  'completed_at',
] as const;

type Row = {
  [K in keyof GenerationView]: K extends 'created_at' | 'updated_at'
    ? Date
    : K extends 'started_at' | 'completed_at'
      ? Date | null
      : GenerationView[K];
};

/** Field by field, so columns added to the table never reach clients by accident. */
export function toGenerationView(row: Row): GenerationView {
  return {
    id: row.id,
    user_id: row.user_id,
    project_id: row.project_id,
    model_id: row.model_id,
    prompt: row.prompt,
    negative_prompt: row.negative_prompt,
    parameters: row.parameters,
    status: row.status,
    progress: row.progress,
    error: row.error,
    cost_credits: row.cost_credits,
    is_favorite: row.is_favorite,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
    started_at: row.started_at?.toISOString() ?? null,
    completed_at: row.completed_at?.toISOString() ?? null,
  };
}
