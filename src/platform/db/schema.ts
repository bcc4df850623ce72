import type { ColumnType, Generated } from 'kysely';

/** Table types for Kysely. Rows are never returned to clients as they are: modules map them. */
type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;

export interface UsersTable {
  id: Generated<string>;
  email: string;
  password_hash: string;
  display_name: string;
  role: ColumnType<'user' | 'admin', 'user' | 'admin' | undefined, 'user' | 'admin'>;
  credits_balance: ColumnType<number, number | undefined, number>;
  is_active: ColumnType<boolean, boolean | undefined, boolean>;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface SessionsTable {
  id: Generated<string>;
  user_id: string;
  created_at: Timestamp;
  last_refreshed_at: NullableTimestamp;
  expires_at: Timestamp;
  revoked_at: NullableTimestamp;
  revoked_reason: string | null;
  user_agent: string | null;
  ip: string | null;
}

export interface RefreshTokensTable {
  token_hash: Buffer;
  session_id: string;
  created_at: Timestamp;
  used_at: NullableTimestamp;
}

export interface ServiceKeysTable {
  id: Generated<string>;
  user_id: string;
  name: string;
  prefix: string;
  secret_hash: Buffer;
  scopes: string[];
  expires_at: NullableTimestamp;
  revoked_at: NullableTimestamp;
  last_used_at: NullableTimestamp;
  created_at: Timestamp;
}

export type CreditReason = 'signup' | 'generation_charge' | 'generation_refund' | 'admin_grant';

export interface CreditTransactionsTable {
  id: Generated<string>;
  user_id: string;
  amount: number;
  balance_after: number;
  reason: CreditReason;
  generation_id: string | null;
  created_at: Timestamp;
}

export interface AuditEventsTable {
  id: Generated<string>;
  at: Timestamp;
  actor_id: string | null;
  action: string;
  resource_type: string | null;
  resource_id: string | null;
  decision: 'allow' | 'deny' | null;
  reason: string | null;
  request_id: string | null;
  ip: string | null;
  details: unknown;
}

export interface AuthzRevisionTable {
  id: ColumnType<boolean, boolean | undefined, never>;
  rev: number;
}

export type TeamRoleColumn = 'owner' | 'admin' | 'editor' | 'viewer';

export interface TeamsTable {
  id: Generated<string>;
  name: string;
  owner_id: string;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface TeamMembersTable {
  team_id: string;
  user_id: string;
  role: TeamRoleColumn;
  is_active: ColumnType<boolean, boolean | undefined, boolean>;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface ProjectsTable {
  id: Generated<string>;
  owner_id: string;
  team_id: string | null;
  name: string;
  description: ColumnType<string, string | undefined, string>;
  visibility: ColumnType<
    'private' | 'team' | 'public',
    'private' | 'team' | 'public' | undefined,
    'private' | 'team' | 'public'
  >;
  created_at: Timestamp;
  updated_at: Timestamp;
  deleted_at: NullableTimestamp;
}

export type GenerationStatus = 'pending' | 'processing' | 'completed' | 'failed' | 'cancelled';

export interface GenerationsTable {
  id: Generated<string>;
  user_id: string;
  project_id: string | null;
  model_id: string;
  prompt: string;
  negative_prompt: string | null;
  parameters: ColumnType<Record<string, unknown>, string | undefined, string>;
  status: ColumnType<GenerationStatus, GenerationStatus | undefined, GenerationStatus>;
  progress: ColumnType<number, number | undefined, number>;
  error: string | null;
  cost_credits: ColumnType<number, number | undefined, number>;
  is_favorite: ColumnType<boolean, boolean | undefined, boolean>;
  idempotency_key: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
  started_at: NullableTimestamp;
  completed_at: NullableTimestamp;
  deleted_at: NullableTimestamp;
  attempt: ColumnType<number, number | undefined, number>;
  failures: ColumnType<number, number | undefined, number>;
  job_id: string | null;
  heartbeat_at: NullableTimestamp;
  worker_id: string | null;
  idempotency_hash: string | null;
  reference_key: string | null;
  reference_mime: string | null;
}

export interface ModelsTable {
  id: string;
  name: string;
  kind: 'image' | 'video';
  provider: string;
  provider_model: string;
  description: string;
  cost_credits: number;
  min_width: number;
  max_width: number;
  min_height: number;
  max_height: number;
  default_width: number;
  default_height: number;
  max_steps: number;
  default_steps: number;
  supports_reference_image: boolean;
  is_active: boolean;
  sort_order: number;
}

export interface MediaTable {
  id: Generated<string>;
  generation_id: string;
  mime: string;
  width: number;
  height: number;
  bytes: number;
  sha256: string;
  storage_key: string;
  created_at: Timestamp;
}

export interface DB {
  authz_revision: AuthzRevisionTable;
  teams: TeamsTable;
  team_members: TeamMembersTable;
  projects: ProjectsTable;
  generations: GenerationsTable;
  media: MediaTable;
  models: ModelsTable;
  users: UsersTable;
  sessions: SessionsTable;
  refresh_tokens: RefreshTokensTable;
  service_keys: ServiceKeysTable;
  credit_transactions: CreditTransactionsTable;
  audit_events: AuditEventsTable;
}
