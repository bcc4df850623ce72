import { RULES_KEY } from '../cache/revision.js';
import type { AlertRule, Severity } from './alert-rules.js';

/**
 * Alert rules changed at run time (GET/PUT /api/v1/admin/alert-rules). The rules are defined in
 * code; an administrator overrides a rule's threshold, `for`, minimum samples or severity, or turns
 * it off, for the whole fleet. Overrides live in `alert_rule_overrides` (migration 007); a change is
 * a revision announced on the invalidation channel with key '!rules', and every instance re-reads
 * the table when it hears it, when it starts and after it reconnects. The Prometheus rules file
 * (`npm run generate:alerts`) keeps the code's values: it is what a Prometheus evaluates, and its
 * operator changes it in Prometheus.
 */
export interface RuleOverride {
  name: string;
  threshold: number | null;
  for_seconds: number | null;
  min_samples: number | null;
  severity: Severity | null;
  enabled: boolean;
  updated_at: string;
  updated_by: string | null;
}

export interface RuleChange {
  name: string;
  threshold?: number;
  for_seconds?: number;
  min_samples?: number;
  severity?: Severity;
  enabled?: boolean;
  /** Back to the code's values (the override is removed). */
  reset?: boolean;
}

export interface EffectiveRule {
  name: string;
  metric: string;
  comparison: 'gt' | 'lt';
  window: string;
  threshold: number;
  for_seconds: number;
  min_samples: number;
  severity: Severity;
  enabled: boolean;
  summary: string | null;
  overridden: boolean;
  defaults: { threshold: number; for_seconds: number; min_samples: number; severity: Severity };
  updated_at: string | null;
  updated_by: string | null;
}

/** Each code rule with its override applied (disabled ones included, marked). */
export function effectiveRules(
  defaults: readonly AlertRule[],
  overrides: readonly RuleOverride[],
): EffectiveRule[] {
  const byName = new Map(overrides.map((o) => [o.name, o]));
  return defaults.map((rule) => {
    const o = byName.get(rule.name);
    return {
      name: rule.name,
      metric: rule.metric,
      comparison: rule.comparison,
      window: rule.window,
      threshold: o?.threshold ?? rule.threshold,
      for_seconds: o?.for_seconds ?? rule.forSeconds ?? 0,
      min_samples: o?.min_samples ?? rule.minSamples,
      severity: o?.severity ?? rule.severity,
      enabled: o?.enabled ?? true,
      summary: rule.summary ?? null,
      overridden: o !== undefined,
      defaults: {
        threshold: rule.threshold,
        for_seconds: rule.forSeconds ?? 0,
        min_samples: rule.minSamples,
        severity: rule.severity,
      },
      updated_at: o?.updated_at ?? null,
      updated_by: o?.updated_by ?? null,
    };
  });
}

/** The rules the tracker evaluates: the enabled ones, with their effective settings. */
export function rulesToEvaluate(
  defaults: readonly AlertRule[],
  overrides: readonly RuleOverride[],
): AlertRule[] {
  const byName = new Map(defaults.map((r) => [r.name, r]));
  return effectiveRules(defaults, overrides)
    .filter((r) => r.enabled)
    .map((r) => ({
      ...(byName.get(r.name) as AlertRule),
      threshold: r.threshold,
      forSeconds: r.for_seconds,
      minSamples: r.min_samples,
      severity: r.severity,
    }));
}

/** Ratios and rates are between 0 and 1; everything else is a count or a duration. */
const isFraction = (metric: string) => metric.includes('ratio') || metric.includes('error_rate');

/** What is wrong with a change, as `[field, message]` pairs (empty when it is valid). */
export function validateChanges(
  defaults: readonly AlertRule[],
  changes: readonly RuleChange[],
): [string, string][] {
  const problems: [string, string][] = [];
  const byName = new Map(defaults.map((r) => [r.name, r]));
  const seen = new Set<string>();
  changes.forEach((change, i) => {
    const rule = byName.get(change.name);
    if (!rule) {
      problems.push([
        `body.rules.${i}.name`,
        `no rule is named "${change.name}"; rules: ${[...byName.keys()].join(', ')}`,
      ]);
      return;
    }
    if (seen.has(change.name)) problems.push([`body.rules.${i}.name`, `"${change.name}" is changed twice`]);
    seen.add(change.name);
    if (change.reset && Object.keys(change).some((k) => k !== 'name' && k !== 'reset')) {
      problems.push([`body.rules.${i}.reset`, 'reset takes the code values: give no other setting with it']);
    }
    if (change.threshold !== undefined && isFraction(rule.metric) && change.threshold > 1) {
      problems.push([
        `body.rules.${i}.threshold`,
        `${rule.metric} is a fraction: the threshold must be between 0 and 1`,
      ]);
    }
  });
  return problems;
}

interface Queryable {
  query: (text: string, values?: unknown[]) => Promise<{ rows: unknown[] }>;
}

export async function loadOverrides(db: Queryable): Promise<RuleOverride[]> {
  const { rows } = await db.query(
    `SELECT name, threshold, for_seconds, min_samples, severity, enabled,
            to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at,
            updated_by::text AS updated_by
       FROM alert_rule_overrides`,
  );
  return rows as RuleOverride[];
}

/**
 * Applies the changes in one transaction and announces them as one revision; returns it. A field
 * left out of a change keeps its current override (or the code's value).
 */
export async function saveChanges(
  pool: { connect: () => Promise<Queryable & { release: () => void }> },
  changes: readonly RuleChange[],
  actorId: string | null,
): Promise<number> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    for (const change of changes) {
      if (change.reset) {
        await client.query('DELETE FROM alert_rule_overrides WHERE name = $1', [change.name]);
        continue;
      }
      await client.query(
        `INSERT INTO alert_rule_overrides AS o (name, threshold, for_seconds, min_samples, severity, enabled, updated_by)
         VALUES ($1, $2, $3, $4, $5, coalesce($6, true), $7)
         ON CONFLICT (name) DO UPDATE SET
           threshold = coalesce($2, o.threshold),
           for_seconds = coalesce($3, o.for_seconds),
           min_samples = coalesce($4, o.min_samples),
           severity = coalesce($5, o.severity),
           enabled = coalesce($6, o.enabled),
           updated_at = now(),
           updated_by = $7`,
        [
          change.name,
          change.threshold ?? null,
          change.for_seconds ?? null,
          change.min_samples ?? null,
          change.severity ?? null,
          change.enabled ?? null,
          actorId,
        ],
      );
    }
    const { rows } = await client.query(
      `WITH bumped AS (UPDATE authz_revision SET rev = rev + 1 WHERE id RETURNING rev)
       SELECT rev, pg_notify('velro_authz', json_build_object('rev', rev, 'key', $1::text)::text) FROM bumped`,
      [RULES_KEY],
    );
    await client.query('COMMIT');
    return (rows[0] as { rev: number } | undefined)?.rev ?? 0;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}
