-- Safe deploys: journal entries keep their place in the body's order, patch markers
-- (zart.patched) are journal entries, and an execution whose replay diverged from its
-- journal is 'blocked' until code that replays it is deployed. Expand only: a worker
-- of the previous release writes no position (its entries are checked by key, as it
-- did), never writes a patch marker or a blocked status, and never acquires a blocked
-- execution (it is not among the statuses its acquire takes).

-- The status CHECKs take the new values. The old rows passed narrower ones, so the new
-- constraints are added NOT VALID: no scan of the table under its lock, and they hold
-- for every row written from now on all the same. (The executions CHECK of 0002 was
-- named by PostgreSQL: look it up rather than assume.)
DO $$
DECLARE
    name text;
BEGIN
    SELECT conname INTO name FROM pg_constraint
     WHERE conrelid = 'executions'::regclass AND contype = 'c'
       AND pg_get_constraintdef(oid) LIKE '%status%' AND pg_get_constraintdef(oid) LIKE '%retrying%';
    EXECUTE format('ALTER TABLE executions DROP CONSTRAINT %I', name);
END
$$;
ALTER TABLE executions ADD CONSTRAINT executions_status_check
    CHECK (status IN ('pending', 'running', 'sleeping', 'waiting', 'retrying', 'blocked',
                      'completed', 'failed', 'cancelled', 'timed_out')) NOT VALID;

ALTER TABLE steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('step', 'sleep', 'event', 'group', 'child', 'patch')) NOT VALID;

-- An entry's place among the body's journal calls in its generation, from 0 (-1: a call
-- made inside a step's function, part of that step). NULL for an entry recorded by a
-- previous release.
ALTER TABLE steps ADD COLUMN position integer;

-- Blocked executions, by actor: a worker wakes those of the actors it declares once
-- it runs other code than the code that blocked them.
CREATE INDEX executions_blocked ON executions (actor_name) WHERE status = 'blocked';

-- Where and why each blocked execution diverged, and what has tried to replay it since.
-- Kept after it unblocks (its status says it is no longer blocked); deleted with it.
CREATE TABLE blocked_executions (
    execution_id     text        PRIMARY KEY REFERENCES executions (id) ON DELETE CASCADE,
    generation       integer     NOT NULL,
    -- The first journal entry where the replay diverged, and how (NonDeterminismError).
    step_key         text        NOT NULL,
    divergence       jsonb       NOT NULL,
    -- Runs in a row blocked at this entry: the next try waits twice as long each time.
    blocks           integer     NOT NULL DEFAULT 1,
    -- Fingerprints of the code that replayed it at this entry: other code is tried at once.
    codes            text[]      NOT NULL,
    first_blocked_at timestamptz NOT NULL DEFAULT now(),
    blocked_at       timestamptz NOT NULL DEFAULT now()
);
