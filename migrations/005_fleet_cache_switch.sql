-- The cache kill switch is the operator's word for the whole fleet, not for the one instance that
-- received the call: it lives on the revision row, changes as a revision of its own and is announced
-- on the invalidation channel (key '!flags'), so every instance applies it in commit order with the
-- invalidations, and an instance started later reads it at start. `cache_flag_rev` is the revision
-- of the last change.
ALTER TABLE authz_revision
  ADD COLUMN cache_enabled boolean NOT NULL DEFAULT true,
  ADD COLUMN cache_flag_rev bigint NOT NULL DEFAULT 0;

-- Which instance applied which state of the switch, and when (GET /admin/cache/stats shows it).
CREATE TABLE cache_flag_acks (
  instance_id text PRIMARY KEY,
  flag_rev bigint NOT NULL,
  cache_enabled boolean NOT NULL,
  acknowledged_at timestamptz NOT NULL DEFAULT now()
);
