-- Operators pause one execution or every execution of an actor. Expand only:
-- a nullable column and a new table. A worker of the previous release ignores
-- both, so it keeps running paused executions until it is replaced.

-- Set while an operator holds this execution: no run of it starts until it is
-- resumed. A run already going continues to its next suspension.
ALTER TABLE executions ADD COLUMN paused_at timestamptz;

-- One row per paused actor: no run of its executions starts, new or resumed.
CREATE TABLE paused_actors (
    actor_name text        PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now()
);
