-- mv_user_authorization_context (004) takes, per user, the latest last_refreshed_at of all of their
-- sessions, revoked ones included. The only index on sessions.user_id is partial (live sessions), so
-- each user's lookup scanned the whole sessions table: the periodic refresh (every 5 minutes, to
-- choose what to warm) grew with users × sessions — 4.6 s of PostgreSQL CPU for 1,203 users and
-- 45,655 sessions, where the rest of the refresh takes about 0.2 s. With this index it is one short
-- index scan per user.
CREATE INDEX sessions_user_seen_idx ON sessions (user_id, last_refreshed_at DESC);
