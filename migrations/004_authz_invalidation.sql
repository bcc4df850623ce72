-- Every change to an authorization fact advances the revision and announces the cache key it
-- affects, from the database itself: no code path (API, admin SQL, cascades) can forget to.
--
-- The revision is the single row of authz_revision, incremented inside the writing transaction:
-- its row lock orders revisions exactly as the transactions commit, and a rolled-back transaction
-- gives its number back, so committed revisions are contiguous (SPEC §6, rules 1 and 3). The
-- NOTIFY is transactional too: delivered when, and only if, the change commits.

-- An operator's flush (POST /admin/cache/flush) advances the revision and records it here: every
-- instance, including one started later, ignores shared (L2) entries read before it.
ALTER TABLE authz_revision ADD COLUMN flush_floor bigint NOT NULL DEFAULT 0;

-- One row, updated by every fact-changing write: keep its dead versions few and on one page.
ALTER TABLE authz_revision SET (fillfactor = 10, autovacuum_vacuum_threshold = 1000,
                                autovacuum_vacuum_scale_factor = 0);

-- The cache key of a fact, built exactly as src/platform/cache/keys.ts builds it.
CREATE FUNCTION authz_key(kind text, VARIADIC fields text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT kind || coalesce(string_agg('|' || length(f)::text || ':' || f, '' ORDER BY i), '')
    FROM unnest(fields) WITH ORDINALITY AS t(f, i)
$$;

CREATE FUNCTION authz_publish(key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  r bigint;
BEGIN
  UPDATE authz_revision SET rev = rev + 1 WHERE id RETURNING rev INTO r;
  PERFORM pg_notify('velro_authz', json_build_object('rev', r, 'key', key)::text);
END
$$;

CREATE FUNCTION authz_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  row_data record;
BEGIN
  IF TG_OP = 'DELETE' THEN row_data := OLD; ELSE row_data := NEW; END IF;
  CASE TG_TABLE_NAME
    WHEN 'generations' THEN PERFORM authz_publish(authz_key('gen', row_data.id::text));
    WHEN 'projects' THEN PERFORM authz_publish(authz_key('proj', row_data.id::text));
    WHEN 'teams' THEN PERFORM authz_publish(authz_key('team', row_data.id::text));
    -- A subject's memberships are cached as one entry (all their teams).
    WHEN 'team_members' THEN PERFORM authz_publish(authz_key('mems', row_data.user_id::text));
    WHEN 'sessions' THEN PERFORM authz_publish(authz_key('sess', row_data.id::text));
    WHEN 'users' THEN PERFORM authz_publish(authz_key('user', row_data.id::text));
    WHEN 'service_keys' THEN PERFORM authz_publish(authz_key('svckey', encode(row_data.secret_hash, 'hex')));
  END CASE;
  RETURN NULL;
END
$$;

-- Creating a row with a fresh random id changes no fact anyone can have cached, except a
-- membership (a "not a member" answer may be cached): only team_members fires on INSERT.
CREATE TRIGGER generations_authz AFTER UPDATE OF deleted_at, project_id, user_id ON generations
  FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
                     OR OLD.project_id IS DISTINCT FROM NEW.project_id
                     OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_changed();
CREATE TRIGGER generations_authz_delete AFTER DELETE ON generations
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

CREATE TRIGGER projects_authz AFTER UPDATE OF owner_id, team_id, visibility, deleted_at ON projects
  FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id
                     OR OLD.team_id IS DISTINCT FROM NEW.team_id
                     OR OLD.visibility IS DISTINCT FROM NEW.visibility
                     OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
  EXECUTE FUNCTION authz_changed();
CREATE TRIGGER projects_authz_delete AFTER DELETE ON projects
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

CREATE TRIGGER teams_authz AFTER UPDATE OF owner_id ON teams
  FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id)
  EXECUTE FUNCTION authz_changed();
CREATE TRIGGER teams_authz_delete AFTER DELETE ON teams
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

CREATE TRIGGER team_members_authz_insert AFTER INSERT ON team_members
  FOR EACH ROW EXECUTE FUNCTION authz_changed();
CREATE TRIGGER team_members_authz AFTER UPDATE OF role, is_active, team_id ON team_members
  FOR EACH ROW WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.is_active IS DISTINCT FROM NEW.is_active
                     OR OLD.team_id IS DISTINCT FROM NEW.team_id)
  EXECUTE FUNCTION authz_changed();
-- Moving a membership row to another user changes both users' facts.
CREATE FUNCTION authz_membership_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM authz_publish(authz_key('mems', OLD.user_id::text));
  PERFORM authz_publish(authz_key('mems', NEW.user_id::text));
  RETURN NULL;
END
$$;
CREATE TRIGGER team_members_authz_moved AFTER UPDATE OF user_id ON team_members
  FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_membership_moved();
CREATE TRIGGER team_members_authz_delete AFTER DELETE ON team_members
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

CREATE TRIGGER sessions_authz AFTER UPDATE OF revoked_at, expires_at, user_id ON sessions
  FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
                     OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
                     OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_changed();
CREATE TRIGGER sessions_authz_delete AFTER DELETE ON sessions
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

CREATE TRIGGER users_authz AFTER UPDATE OF is_active, role ON users
  FOR EACH ROW WHEN (OLD.is_active IS DISTINCT FROM NEW.is_active OR OLD.role IS DISTINCT FROM NEW.role)
  EXECUTE FUNCTION authz_changed();
CREATE TRIGGER users_authz_delete AFTER DELETE ON users
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

CREATE TRIGGER service_keys_authz AFTER UPDATE OF revoked_at, expires_at, scopes, user_id ON service_keys
  FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
                     OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
                     OR OLD.scopes IS DISTINCT FROM NEW.scopes
                     OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_changed();
CREATE TRIGGER service_keys_authz_delete AFTER DELETE ON service_keys
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

-- Seed 000's materialized views, for warming and analytics only: they lag, so no live decision
-- ever reads them. Unique indexes allow REFRESH … CONCURRENTLY.
CREATE MATERIALIZED VIEW mv_user_authorization_context AS
SELECT u.id AS user_id,
       u.role,
       u.is_active,
       (SELECT count(*) FROM projects p WHERE p.owner_id = u.id AND p.deleted_at IS NULL) AS owned_projects,
       (SELECT count(*) FROM team_members tm WHERE tm.user_id = u.id AND tm.is_active) AS active_memberships,
       (SELECT max(s.last_refreshed_at) FROM sessions s WHERE s.user_id = u.id) AS last_seen_at,
       -- live generations only: served by generations_user_idx (no scan of the table per user)
       (SELECT max(g.created_at) FROM generations g WHERE g.user_id = u.id AND g.deleted_at IS NULL)
         AS last_generation_at
  FROM users u;
CREATE UNIQUE INDEX mv_user_authorization_context_pk ON mv_user_authorization_context (user_id);

CREATE MATERIALIZED VIEW mv_generation_access_patterns AS
SELECT g.id AS generation_id,
       g.user_id AS creator_id,
       g.project_id,
       p.owner_id AS project_owner_id,
       p.team_id,
       p.visibility,
       g.created_at,
       g.updated_at
  FROM generations g
  LEFT JOIN projects p ON p.id = g.project_id
 WHERE g.deleted_at IS NULL AND (p.id IS NULL OR p.deleted_at IS NULL)
   AND g.created_at > now() - interval '30 days';
CREATE UNIQUE INDEX mv_generation_access_patterns_pk ON mv_generation_access_patterns (generation_id);
CREATE INDEX mv_generation_access_patterns_recent ON mv_generation_access_patterns (updated_at DESC);
