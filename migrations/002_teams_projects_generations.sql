-- Teams, projects, generations and media: the resources authorization decides about, and the
-- revision counter that stamps every change to authorization facts.

-- A single row. Every write that changes authorization facts increments it inside its own
-- transaction (UPDATE … SET rev = rev + 1 RETURNING rev): the row lock makes revision order equal
-- commit order, which a sequence or a transaction id would not (SPEC §6).
CREATE TABLE authz_revision (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  rev bigint NOT NULL
);
INSERT INTO authz_revision (id, rev) VALUES (true, 1);

CREATE TABLE teams (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  -- Always an active member with role owner (kept so by the teams service).
  owner_id uuid NOT NULL REFERENCES users (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX teams_owner_idx ON teams (owner_id);

CREATE TABLE team_members (
  team_id uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  role text NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'viewer')),
  is_active boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (team_id, user_id)
);
-- "Which teams am I in" (lookups, lists) without touching the heap.
CREATE INDEX team_members_user_idx ON team_members (user_id, team_id) INCLUDE (role, is_active);

CREATE TABLE projects (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  owner_id uuid NOT NULL REFERENCES users (id),
  team_id uuid REFERENCES teams (id) ON DELETE SET NULL,
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  description text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
  visibility text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'team', 'public')),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE INDEX projects_owner_idx ON projects (owner_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX projects_team_idx ON projects (team_id, created_at DESC, id DESC)
  WHERE deleted_at IS NULL AND team_id IS NOT NULL;
CREATE INDEX projects_public_idx ON projects (created_at DESC, id DESC)
  WHERE deleted_at IS NULL AND visibility = 'public';

CREATE TABLE generations (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES users (id),
  project_id uuid REFERENCES projects (id),
  model_id text NOT NULL,
  prompt text NOT NULL CHECK (length(prompt) BETWEEN 1 AND 4000),
  negative_prompt text CHECK (negative_prompt IS NULL OR length(negative_prompt) <= 4000),
  parameters jsonb NOT NULL DEFAULT '{}',
  status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
  progress smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
  error text,
  cost_credits integer NOT NULL DEFAULT 0 CHECK (cost_credits >= 0),
  is_favorite boolean NOT NULL DEFAULT false,
  idempotency_key text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  completed_at timestamptz,
  deleted_at timestamptz
);
-- Seed 001's hot-path index, adapted: a creator's generations, newest first.
CREATE INDEX generations_user_idx ON generations (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX generations_project_idx ON generations (project_id, created_at DESC, id DESC)
  WHERE deleted_at IS NULL AND project_id IS NOT NULL;
CREATE UNIQUE INDEX generations_idempotency_idx ON generations (user_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL;

CREATE TABLE media (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  generation_id uuid NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
  mime text NOT NULL,
  width integer NOT NULL CHECK (width > 0),
  height integer NOT NULL CHECK (height > 0),
  bytes bigint NOT NULL CHECK (bytes >= 0),
  sha256 text NOT NULL,
  storage_key text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_generation_idx ON media (generation_id);

ALTER TABLE credit_transactions
  ADD CONSTRAINT credit_transactions_generation_fk FOREIGN KEY (generation_id) REFERENCES generations (id);
