-- Alert rules changed at run time by an administrator (PUT /api/v1/admin/alert-rules). The rules
-- themselves are defined in code (src/platform/observability/alert-rules.ts); a row here overrides
-- some of one rule's settings for the whole fleet. A change is a revision of its own, announced on
-- the invalidation channel with key '!rules', so every instance applies it (and one started later
-- reads this table at start).
CREATE TABLE alert_rule_overrides (
  name text PRIMARY KEY,
  threshold double precision CHECK (threshold IS NULL OR threshold >= 0),
  for_seconds integer CHECK (for_seconds IS NULL OR for_seconds BETWEEN 0 AND 86400),
  min_samples integer CHECK (min_samples IS NULL OR min_samples BETWEEN 1 AND 1000000),
  severity text CHECK (severity IS NULL OR severity IN ('info', 'warning', 'critical')),
  enabled boolean NOT NULL DEFAULT true,
  updated_at timestamptz NOT NULL DEFAULT now(),
  updated_by uuid REFERENCES users (id) ON DELETE SET NULL
);
