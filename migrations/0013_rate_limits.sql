-- State of Dramatiq's rate limiters and barriers (broker_pg.rate_limits.PostgresRateLimiterBackend).
-- Expand only: a new table, which nothing older reads or writes.
--
-- One row per key: its value until expires_at. A row past expires_at is absent
-- to every query of broker_pg/rate_limits.sql, and deleted later, a bounded
-- batch at a time, by PostgresRateLimiterBackend.purge_expired().
--
-- UNLOGGED: every acquire and release rewrites a row, and none of it needs to
-- outlive its ttl (minutes at most). Without WAL these writes cost no log
-- flush and no replication traffic. The price: after a crash of the server the
-- table is empty (every limiter starts afresh: held slots and windows are
-- forgotten, a barrier is gone), and it is not copied to standbys, so a
-- failover starts it afresh too. That is what Redis without persistence, the
-- usual backend of these limiters, does as well. A limiter whose bound must
-- survive a crash needs a logged table: ALTER TABLE rate_limits SET LOGGED.
CREATE UNLOGGED TABLE rate_limits (
    key        text        PRIMARY KEY,
    value      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
) WITH (
    -- Every acquire and release leaves a dead row behind: vacuum after a few
    -- thousand, not after 20 % of a table that stays small.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000
);

-- purge_expired: the oldest expired rows first, whatever the table's size.
CREATE INDEX rate_limits_expiry ON rate_limits (expires_at);
