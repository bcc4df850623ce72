-- The audit log becomes readable (GET /api/v1/admin/audit, GET /api/v1/auth/security-events).
-- Both list newest first with a keyset on (at, id): every index ends in (at DESC, id DESC), so a
-- filtered page is one index range scan that stops after `limit + 1` rows, whatever the filter,
-- and the cursor condition (at, id) < (…) is an index bound, not a filter.
--
-- The two indexes of 001 end in `at` only (ties of one transaction's events were sorted after the
-- fetch); the new ones replace them.
DROP INDEX IF EXISTS audit_events_at_idx;
DROP INDEX IF EXISTS audit_events_actor_idx;

-- No filter, or a time range alone.
CREATE INDEX audit_events_at_id_idx ON audit_events (at DESC, id DESC);
-- actor
CREATE INDEX audit_events_actor_at_idx ON audit_events (actor_id, at DESC, id DESC);
-- A user's own security history (GET /auth/security-events): their events among these actions
-- only, so that a page never walks past the subject's other events (denials can be millions). The
-- list is SECURITY_ACTIONS in src/modules/audit/read.ts; a new security action needs a new index.
CREATE INDEX audit_events_security_idx ON audit_events (actor_id, at DESC, id DESC)
  WHERE action IN ('auth.register', 'auth.login', 'auth.logout', 'auth.logout_all',
                   'auth.refresh_token_reuse', 'auth.password_changed', 'auth.password_change_failed',
                   'service_key.create', 'service_key.revoke');
-- action
CREATE INDEX audit_events_action_at_idx ON audit_events (action, at DESC, id DESC);
-- resource id (ids are unique across types in practice; a type given with it is a filter on few rows)
CREATE INDEX audit_events_resource_id_at_idx ON audit_events (resource_id, at DESC, id DESC)
  WHERE resource_id IS NOT NULL;
-- resource type alone
CREATE INDEX audit_events_resource_type_at_idx ON audit_events (resource_type, at DESC, id DESC)
  WHERE resource_type IS NOT NULL;
-- decision (most events record none: only those that do are indexed)
CREATE INDEX audit_events_decision_at_idx ON audit_events (decision, at DESC, id DESC)
  WHERE decision IS NOT NULL;
