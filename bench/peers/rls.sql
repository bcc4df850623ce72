-- The baseline Velro replaces: authorization by PostgreSQL row-level security, the Supabase way,
-- queried the way PostgREST queries it (bench/peers/rls.ts). Applied by the bench to its own
-- database after seeding; Velro connects as the tables' owner, which RLS does not restrict, so
-- enabling it here changes nothing for the other cases.

CREATE SCHEMA IF NOT EXISTS auth;

-- Supabase's own definition: the `sub` claim of the JWT that PostgREST put into the transaction.
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

-- Supabase's roles: PostgREST logs in as `authenticator` (NOINHERIT, so it holds no rights of its
-- own) and switches to `authenticated` per request with set_config('role', …, true).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
    CREATE ROLE authenticator LOGIN NOINHERIT;
  END IF;
END
$$;
GRANT authenticated TO authenticator;
GRANT USAGE ON SCHEMA auth TO authenticated;
GRANT USAGE ON SCHEMA public TO authenticated;
GRANT EXECUTE ON FUNCTION auth.uid() TO authenticated;
GRANT SELECT ON generations, projects, team_members TO authenticated;

-- SPEC §3 for `view` on a generation, as one policy. `(SELECT auth.uid())` rather than a bare
-- call, as Supabase's performance guide says: an initPlan evaluated once per statement, not once
-- per row. `TO authenticated`, so other roles skip the policy entirely. Rule by rule:
--   1. the generation or its project soft-deleted: nobody;
--   2. the creator;  3. the project's owner;
--   4. an active member of the project's team when visibility is `team` (or `public`, where rule 5
--      grants view anyway);  5. anyone when the project is public;  6. nobody else.
-- The indexes it needs are the primary keys it probes: generations (id) for the lookup itself,
-- projects (id) for the project, team_members (team_id, user_id) for the membership — all there
-- from migrations/002 (the bench prints the plan once to show they are used).
ALTER TABLE generations ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS generations_select ON generations;
CREATE POLICY generations_select ON generations FOR SELECT TO authenticated USING (
  deleted_at IS NULL
  AND (
    (project_id IS NULL AND user_id = (SELECT auth.uid()))
    OR EXISTS (
      SELECT 1
        FROM projects p
       WHERE p.id = generations.project_id
         AND p.deleted_at IS NULL
         AND (
           generations.user_id = (SELECT auth.uid())
           OR p.owner_id = (SELECT auth.uid())
           OR p.visibility = 'public'
           OR (
             p.visibility = 'team'
             AND EXISTS (
               SELECT 1
                 FROM team_members tm
                WHERE tm.team_id = p.team_id
                  AND tm.user_id = (SELECT auth.uid())
                  AND tm.is_active
             )
           )
         )
    )
  )
);
