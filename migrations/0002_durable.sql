-- zart_dramatiq: durable executions, their step journal and their event inbox.

CREATE TABLE executions (
    id           text        PRIMARY KEY,
    actor_name   text        NOT NULL,
    queue_name   text        NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'sleeping', 'waiting', 'retrying',
                                   'completed', 'failed', 'cancelled', 'timed_out')),
    input_hash   text        NOT NULL,
    input        jsonb       NOT NULL,
    result       jsonb,
    error        jsonb,
    deadline     timestamptz,
    -- What a suspended execution waits for, and the message that resumes it.
    waiting_for  text,
    wake_at      timestamptz,
    wake_message bigint,
    -- Bumped at every suspension: a delivery carrying an older value is stale.
    wake_seq     integer     NOT NULL DEFAULT 0,
    -- The Dramatiq message a sweeper re-sends when a broker other than
    -- broker_pg lost the gap between a commit and its enqueue.
    resume_message bytea     NOT NULL,
    run_owner    uuid,
    runs         integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
) WITH (fillfactor = 70);

CREATE INDEX executions_active ON executions (status, updated_at)
    WHERE status NOT IN ('completed', 'failed', 'cancelled', 'timed_out');
CREATE INDEX executions_created ON executions (created_at);
-- Retention: purge_executions deletes ended executions by age.
CREATE INDEX executions_finished ON executions (finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'timed_out');

-- One row per step, sleep or event wait; keyed by kind, name and occurrence.
CREATE TABLE steps (
    execution_id text        NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step_key     text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('step', 'sleep', 'event')),
    name         text        NOT NULL,
    fn           text,
    status       text        NOT NULL
                 CHECK (status IN ('completed', 'failed', 'waiting', 'retrying', 'timed_out')),
    result       jsonb,
    error        jsonb,
    attempts     integer     NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    wake_at      timestamptz,
    PRIMARY KEY (execution_id, step_key)
);

-- The inbox: events are kept until a wait consumes them, in arrival order.
CREATE TABLE events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id text        NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    key          text,
    payload      jsonb       NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    consumed_by  text,
    UNIQUE (execution_id, key)
);
CREATE INDEX events_unconsumed ON events (execution_id, name, id) WHERE consumed_by IS NULL;

-- Tells waiting handle.result() calls that an execution ended. A NOTIFY costs a
-- transaction in every LISTENing session of the database (each worker has one),
-- so it is sent only while some session waits for results: those connect under
-- the application name given as `waiter`.
CREATE FUNCTION notify_execution_ended(channel text, execution_id text, waiter text)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify(channel, execution_id)
     WHERE EXISTS (SELECT 1 FROM pg_stat_activity
                    WHERE datname = current_database() AND application_name = waiter)
$$;
