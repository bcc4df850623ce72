import type pg from 'pg';

/** Generations are created by the pipeline's route; tests that only need rows insert them here. */
export async function insertGeneration(
  sql: pg.Client,
  row: { userId: string; projectId?: string | null; prompt?: string; deleted?: boolean },
): Promise<string> {
  const result = await sql.query<{ id: string }>(
    `INSERT INTO generations (user_id, project_id, model_id, prompt, deleted_at)
     VALUES ($1, $2, 'velro-sketch', $3, CASE WHEN $4 THEN now() END) RETURNING id`,
    [row.userId, row.projectId ?? null, row.prompt ?? 'a lighthouse at dusk', row.deleted ?? false],
  );
  return result.rows[0]!.id;
}
