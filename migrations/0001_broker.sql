-- broker_pg: messages, dead letters, worker presence and results.
-- Applied with search_path set to the target schema; names are unqualified on purpose.

-- One row per delivery of a Dramatiq message. `id` is the broker's own key:
-- several rows may share a `message_id` (a retry, a delayed continuation).
CREATE TABLE messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_name  text        NOT NULL,
    message_id  text        NOT NULL,
    actor_name  text        NOT NULL,
    -- queued: claimable once eta <= now(); parked: waits for an explicit wake-up;
    -- claimed: leased to the worker in lease_owner.
    state       text        NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'parked', 'claimed')),
    priority    integer     NOT NULL DEFAULT 0,
    eta         timestamptz NOT NULL DEFAULT now(),
    payload     bytea       NOT NULL,
    lease_owner uuid,
    deliveries  integer     NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    claimed_at  timestamptz
) WITH (
    -- Every message leaves a dead row behind: vacuum after a few thousand, not 20 %.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim query: due rows of one queue in priority, then due-time order.
CREATE INDEX messages_ready ON messages (queue_name, priority, eta, id) WHERE state = 'queued';
-- Lease recovery scans only claimed rows.
CREATE INDEX messages_claimed ON messages (lease_owner) WHERE state = 'claimed';
-- No other index: a claim rewrites the row, so each index costs every message an
-- extra entry. join() and flush() are rare and may scan.

-- Messages that failed for good (nack) or kept killing their workers.
CREATE TABLE dead_letters (
    id          bigint PRIMARY KEY,
    queue_name  text        NOT NULL,
    message_id  text        NOT NULL,
    actor_name  text        NOT NULL,
    priority    integer     NOT NULL,
    payload     bytea       NOT NULL,
    deliveries  integer     NOT NULL,
    enqueued_at timestamptz NOT NULL,
    error       text,
    dead_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_queue ON dead_letters (queue_name, dead_at);

-- One row per live broker process that consumes. Leases are held by the worker
-- row: claimed messages return when it stops heartbeating or its session ends.
CREATE TABLE workers (
    id           uuid        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    backend_pid  integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- dramatiq.results backend storage.
CREATE TABLE results (
    key        text        PRIMARY KEY,
    value      bytea       NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX results_expiry ON results (expires_at);
