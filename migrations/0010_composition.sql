-- Composition: parallel groups of steps (zart.parallel, zart.map) and child
-- executions (zart.start_child). Expand only: workers of the previous release
-- never write the new kinds, columns or tables, and keep working.

-- A child execution names its parent and the parent's journal entry that waits
-- for it; an attached child (not detached) is cancelled with its parent.
ALTER TABLE executions ADD COLUMN parent_id text;
ALTER TABLE executions ADD COLUMN parent_step text;
ALTER TABLE executions ADD COLUMN detached boolean NOT NULL DEFAULT false;
CREATE INDEX executions_children ON executions (parent_id) WHERE parent_id IS NOT NULL;

-- A group and a child are journal entries of their parent, like steps.
ALTER TABLE steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('step', 'sleep', 'event', 'group', 'child'));

-- One row per group: the join counter and, for a map, its window.
CREATE TABLE step_groups (
    execution_id    text    NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    group_key       text    NOT NULL,
    -- all: every branch must complete; settled: every branch ends, either way;
    -- first: the first branch to complete wins.
    mode            text    NOT NULL CHECK (mode IN ('all', 'settled', 'first')),
    size            integer NOT NULL,
    max_concurrency integer,
    -- Branches not ended yet: the branch that takes it to zero (or fails an
    -- 'all' group, or wins a 'first' one) ends the group and wakes the parent.
    open            integer NOT NULL,
    -- Branches sent and not ended; a map sends the next one as one ends.
    in_flight       integer NOT NULL DEFAULT 0,
    -- No branch below this index is still to be sent.
    next_branch     integer NOT NULL DEFAULT 0,
    winner          integer,
    status          text    NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'completed', 'failed')),
    PRIMARY KEY (execution_id, group_key)
) WITH (fillfactor = 70);

-- One row per branch, identified by its group and its index in it.
CREATE TABLE branches (
    execution_id text    NOT NULL,
    group_key    text    NOT NULL,
    index        integer NOT NULL,
    name         text    NOT NULL,
    fn           text    NOT NULL,
    -- pending: not sent yet (a map's window); queued: sent; skipped: never run,
    -- its group ended first.
    status       text    NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'queued', 'completed', 'failed', 'skipped')),
    result       jsonb,
    error        jsonb,
    attempts     integer NOT NULL DEFAULT 0,
    -- The branch's message while it may still have to be sent (again).
    message      bytea,
    queued_at    timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (execution_id, group_key, index),
    FOREIGN KEY (execution_id, group_key)
        REFERENCES step_groups (execution_id, group_key) ON DELETE CASCADE
);
-- The sweeper's repair of branch messages lost by brokers other than broker_pg.
CREATE INDEX branches_queued ON branches (queued_at) WHERE status = 'queued';
