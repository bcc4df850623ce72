-- The model catalogue and the columns the generation pipeline needs to be crash-safe.

CREATE TABLE models (
  id text PRIMARY KEY,
  name text NOT NULL,
  kind text NOT NULL CHECK (kind IN ('image', 'video')),
  provider text NOT NULL,
  -- The model's name at its provider (for `http`, the remote API's model id).
  provider_model text NOT NULL,
  description text NOT NULL DEFAULT '',
  cost_credits integer NOT NULL CHECK (cost_credits >= 0),
  min_width integer NOT NULL DEFAULT 64,
  max_width integer NOT NULL,
  min_height integer NOT NULL DEFAULT 64,
  max_height integer NOT NULL,
  default_width integer NOT NULL,
  default_height integer NOT NULL,
  max_steps integer NOT NULL,
  default_steps integer NOT NULL,
  supports_reference_image boolean NOT NULL DEFAULT false,
  is_active boolean NOT NULL DEFAULT true,
  sort_order integer NOT NULL DEFAULT 0
);

INSERT INTO models (id, name, kind, provider, provider_model, description, cost_credits,
                    max_width, max_height, default_width, default_height, max_steps, default_steps,
                    supports_reference_image, sort_order)
VALUES
  ('velro-sketch', 'Velro Sketch', 'image', 'local', 'sketch-v1',
   'Fast drafts for exploring an idea.', 5, 768, 768, 512, 512, 20, 8, false, 1),
  ('velro-studio', 'Velro Studio', 'image', 'local', 'studio-v1',
   'Balanced quality and speed for everyday work.', 20, 1024, 1024, 768, 768, 40, 20, true, 2),
  ('velro-photon', 'Velro Photon', 'image', 'local', 'photon-v1',
   'Detailed, photographic renders.', 50, 1536, 1536, 1024, 1024, 60, 30, true, 3),
  ('velro-ultra', 'Velro Ultra', 'image', 'local', 'ultra-v1',
   'Large canvases for print.', 120, 2048, 2048, 1536, 1536, 80, 40, true, 4);

ALTER TABLE generations
  ADD CONSTRAINT generations_model_fk FOREIGN KEY (model_id) REFERENCES models (id),
  -- Fencing: every attempt at running the job increments it, and only the attempt that holds the
  -- current number may finish the generation. A worker that was presumed dead and comes back
  -- cannot overwrite the outcome of the one that replaced it.
  ADD COLUMN attempt integer NOT NULL DEFAULT 0,
  -- Attempts that failed or were lost (not those handed back at shutdown): the retry budget.
  ADD COLUMN failures integer NOT NULL DEFAULT 0,
  -- The queue job currently responsible. Retries and hand-backs enqueue a fresh job; a job that
  -- is no longer the current one can never claim the generation.
  ADD COLUMN job_id uuid,
  ADD COLUMN heartbeat_at timestamptz,
  ADD COLUMN worker_id text,
  ADD COLUMN idempotency_hash text,
  ADD COLUMN reference_key text,
  ADD COLUMN reference_mime text;

-- Newest generations across projects, for lookups that walk public projects' generations.
CREATE INDEX generations_recent_in_project_idx ON generations (created_at DESC, id DESC)
  WHERE deleted_at IS NULL AND project_id IS NOT NULL;

CREATE INDEX generations_live_idx ON generations (status, heartbeat_at)
  WHERE status IN ('pending', 'processing');

-- At most one charge and one refund per generation, whatever the code does: the ledger itself
-- refuses a double charge or a double refund.
CREATE UNIQUE INDEX credit_transactions_one_charge_idx ON credit_transactions (generation_id)
  WHERE reason = 'generation_charge';
CREATE UNIQUE INDEX credit_transactions_one_refund_idx ON credit_transactions (generation_id)
  WHERE reason = 'generation_refund';
