-- Revisions taken at commit (issue: overload). Until now a fact-changing write advanced the
-- revision at its first fact change, and the row lock on authz_revision that orders revisions was
-- held from there to the commit: through every later statement of the transaction and the round
-- trips between them. Under load those round trips wait for a busy event loop, so writes that
-- change facts queued behind each other for seconds (seen as Lock:transactionid waits).
--
-- The same triggers now run at commit (constraint triggers, DEFERRABLE INITIALLY DEFERRED): the
-- revision is still advanced inside the writing transaction, under the same row lock, so
-- revisions still follow commit order, stay contiguous (a rollback gives its number back) and are
-- announced on commit only; but the lock is held only while the commit itself runs in the server.
-- The WHEN conditions are evaluated at each change, exactly as before; the deferred event keeps
-- the row's old and new values.
--
-- Inside a transaction the revision it will commit at is therefore not known until commit. The
-- service reads its consistency token after the commit (src/platform/cache/revision.ts); a
-- transaction that must know it before (none in the service) can call authz_settle(), which runs
-- the pending changes' triggers at once and returns the revision (holding the lock from there).

DROP TRIGGER generations_authz ON generations;
CREATE CONSTRAINT TRIGGER generations_authz AFTER UPDATE OF deleted_at, project_id, user_id ON generations
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
                     OR OLD.project_id IS DISTINCT FROM NEW.project_id
                     OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_changed();

DROP TRIGGER generations_authz_delete ON generations;
CREATE CONSTRAINT TRIGGER generations_authz_delete AFTER DELETE ON generations
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

DROP TRIGGER projects_authz ON projects;
CREATE CONSTRAINT TRIGGER projects_authz AFTER UPDATE OF owner_id, team_id, visibility, deleted_at ON projects
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id
                     OR OLD.team_id IS DISTINCT FROM NEW.team_id
                     OR OLD.visibility IS DISTINCT FROM NEW.visibility
                     OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
  EXECUTE FUNCTION authz_changed();

DROP TRIGGER projects_authz_delete ON projects;
CREATE CONSTRAINT TRIGGER projects_authz_delete AFTER DELETE ON projects
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

DROP TRIGGER teams_authz ON teams;
CREATE CONSTRAINT TRIGGER teams_authz AFTER UPDATE OF owner_id ON teams
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id)
  EXECUTE FUNCTION authz_changed();

DROP TRIGGER teams_authz_delete ON teams;
CREATE CONSTRAINT TRIGGER teams_authz_delete AFTER DELETE ON teams
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

DROP TRIGGER team_members_authz_insert ON team_members;
CREATE CONSTRAINT TRIGGER team_members_authz_insert AFTER INSERT ON team_members
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

DROP TRIGGER team_members_authz ON team_members;
CREATE CONSTRAINT TRIGGER team_members_authz AFTER UPDATE OF role, is_active, team_id ON team_members
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.is_active IS DISTINCT FROM NEW.is_active
                     OR OLD.team_id IS DISTINCT FROM NEW.team_id)
  EXECUTE FUNCTION authz_changed();

DROP TRIGGER team_members_authz_moved ON team_members;
CREATE CONSTRAINT TRIGGER team_members_authz_moved AFTER UPDATE OF user_id ON team_members
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_membership_moved();

DROP TRIGGER team_members_authz_delete ON team_members;
CREATE CONSTRAINT TRIGGER team_members_authz_delete AFTER DELETE ON team_members
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

DROP TRIGGER sessions_authz ON sessions;
CREATE CONSTRAINT TRIGGER sessions_authz AFTER UPDATE OF revoked_at, expires_at, user_id ON sessions
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
                     OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
                     OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_changed();

DROP TRIGGER sessions_authz_delete ON sessions;
CREATE CONSTRAINT TRIGGER sessions_authz_delete AFTER DELETE ON sessions
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

DROP TRIGGER users_authz ON users;
CREATE CONSTRAINT TRIGGER users_authz AFTER UPDATE OF is_active, role ON users
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.is_active IS DISTINCT FROM NEW.is_active OR OLD.role IS DISTINCT FROM NEW.role)
  EXECUTE FUNCTION authz_changed();

DROP TRIGGER users_authz_delete ON users;
CREATE CONSTRAINT TRIGGER users_authz_delete AFTER DELETE ON users
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

DROP TRIGGER service_keys_authz ON service_keys;
CREATE CONSTRAINT TRIGGER service_keys_authz AFTER UPDATE OF revoked_at, expires_at, scopes, user_id ON service_keys
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
                     OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
                     OR OLD.scopes IS DISTINCT FROM NEW.scopes
                     OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION authz_changed();

DROP TRIGGER service_keys_authz_delete ON service_keys;
CREATE CONSTRAINT TRIGGER service_keys_authz_delete AFTER DELETE ON service_keys
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION authz_changed();

CREATE FUNCTION authz_settle() RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
  SET CONSTRAINTS ALL IMMEDIATE;
  RETURN (SELECT rev FROM authz_revision WHERE id);
END
$$;
