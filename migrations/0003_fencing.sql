-- Fencing and liveness: each worker row carries its own lease, each claim a token,
-- and each run of an execution is fenced by the execution's run counter.

-- One lease setting per worker row, read by everyone who judges it (broker
-- recovery and durable takeovers alike).
ALTER TABLE workers ADD COLUMN lease_timeout float8 NOT NULL DEFAULT 30;
-- The server incarnation the row's session belongs to: a session that ended
-- says the worker died only within the same incarnation (not after a restart).
ALTER TABLE workers ADD COLUMN server_started_at timestamptz NOT NULL DEFAULT pg_postmaster_start_time();

-- The claim round that leased a message: a claim whose reply was lost hands
-- back exactly the rows of that round.
ALTER TABLE messages ADD COLUMN claim_token uuid;

-- The delivery that completed an execution: on brokers other than broker_pg a
-- redelivery of that very message (a crash between commit and ack) replays the
-- result; any other copy is a stale duplicate.
ALTER TABLE executions ADD COLUMN finished_by text;
-- The sweeper finds runs that ended without releasing their execution (this
-- process's own, or a lost worker's) through this index.
CREATE INDEX executions_owned ON executions (run_owner) WHERE run_owner IS NOT NULL;

-- Result waiters now share their process's LISTEN session, whose name starts
-- with the waiter's name while they wait (the session's own name follows).
CREATE OR REPLACE FUNCTION notify_execution_ended(channel text, execution_id text, waiter text)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify(channel, execution_id)
     WHERE EXISTS (SELECT 1 FROM pg_stat_activity
                    WHERE datname = current_database()
                      AND application_name LIKE waiter || '%')
$$;
