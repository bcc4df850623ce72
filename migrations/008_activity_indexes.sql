-- The dashboard's activity panels (GET /api/v1/performance/dashboard, `activity.fleet`) count the
-- last hour's events per minute in one grouped statement on the analytics pool. Each branch must be
-- a range scan on the event's time, so that its cost follows the hour's events and not the size of
-- the table. Sign-ins already have audit_events_action_at_idx (action, at, id) from 006.

-- Generations created per minute.
CREATE INDEX generations_created_at_idx ON generations (created_at);
-- Generations finished per minute, by status (completed, failed, cancelled): only finished rows.
CREATE INDEX generations_finished_at_idx ON generations (completed_at) INCLUDE (status)
  WHERE completed_at IS NOT NULL;
-- Credits spent and refunded per minute: only the generation charges and refunds of the ledger.
CREATE INDEX credit_transactions_spending_at_idx ON credit_transactions (created_at) INCLUDE (reason, amount)
  WHERE reason IN ('generation_charge', 'generation_refund');
