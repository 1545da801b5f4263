-- Suspended executions by the time they should have woken: the sweeper's repair
-- of lost wake-ups (on brokers other than broker_pg) reads only the overdue
-- ones, however many sleep or wait.
CREATE INDEX executions_overdue ON executions (least(wake_at, deadline))
    WHERE run_owner IS NULL AND status IN ('sleeping', 'retrying', 'waiting');
