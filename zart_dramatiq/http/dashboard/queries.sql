-- Read-only queries of the dashboard. {schema} is bound to the configured schema.
-- Each is served by an index of the executions table, whatever its parameters,
-- as every statement of ours is (tests/test_dashboard.py reads their plans).

-- name: now
-- The database's clock: ages and overdue wake-ups are measured by it, as the
-- workers measure them, not by this process's.
SELECT statement_timestamp()

-- name: started
-- Executions created since %(since)s, by actor and by how many buckets of
-- %(bucket_s)s seconds before %(now)s they were (index executions_created).
SELECT actor_name,
       floor(extract(epoch FROM %(now)s::timestamptz - created_at) / %(bucket_s)s)::int,
       count(*)
  FROM {schema}.executions
 WHERE created_at > %(since)s
 GROUP BY 1, 2

-- name: ended
-- Executions that ended since %(since)s, by status, actor and bucket (the partial
-- index executions_finished, whose predicate the status list repeats).
SELECT status, actor_name,
       floor(extract(epoch FROM %(now)s::timestamptz - finished_at) / %(bucket_s)s)::int,
       count(*)
  FROM {schema}.executions
 WHERE finished_at > %(since)s
   AND status IN ('completed', 'failed', 'cancelled', 'timed_out')
 GROUP BY 1, 2, 3

-- name: oldest
-- For each status an execution can be stuck in, the one that has been in it
-- the longest: one probe of executions_active per status.
SELECT s.status, e.id, e.actor_name, e.queue_name, e.updated_at, e.waiting_for, e.wake_at,
       e.deadline
  FROM unnest(ARRAY['pending', 'running', 'sleeping', 'waiting', 'retrying']) AS s(status)
  CROSS JOIN LATERAL (
      SELECT * FROM {schema}.executions AS x
       WHERE x.status = s.status
         AND x.status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
       ORDER BY x.updated_at
       LIMIT 1) AS e

-- name: overdue
-- Suspended executions whose wake-up (or deadline) passed before %(before)s and
-- that no run holds: their resuming message has not run. The earliest first,
-- read from executions_overdue; counted up to %(cap)s.
WITH overdue AS (
    SELECT id, actor_name, queue_name, status, waiting_for, least(wake_at, deadline) AS due
      FROM {schema}.executions
     WHERE run_owner IS NULL AND status IN ('sleeping', 'retrying', 'waiting')
       AND least(wake_at, deadline) < %(before)s
     ORDER BY least(wake_at, deadline)
     LIMIT %(cap)s
)
SELECT (SELECT count(*) FROM overdue), o.*
  FROM (SELECT 1) AS one
  LEFT JOIN (SELECT * FROM overdue LIMIT %(limit)s) AS o ON true
 ORDER BY o.due

-- name: unclaimed
-- Executions pending since before %(before)s: started (or retried) and not yet
-- taken by any worker. The oldest first, from executions_active; counted up to %(cap)s.
WITH unclaimed AS (
    SELECT id, actor_name, queue_name, updated_at
      FROM {schema}.executions
     WHERE status = 'pending'
       AND status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
       AND updated_at < %(before)s
     ORDER BY updated_at
     LIMIT %(cap)s
)
SELECT (SELECT count(*) FROM unclaimed), u.*
  FROM (SELECT 1) AS one
  LEFT JOIN (SELECT * FROM unclaimed LIMIT %(limit)s) AS u ON true
 ORDER BY u.updated_at

-- name: orphaned
-- Running executions, since before %(before)s, whose run no live worker holds:
-- the worker was presumed lost (its row is gone) or let go. They run again once
-- their message is redelivered. From executions_active; counted up to %(cap)s.
WITH orphaned AS (
    SELECT e.id, e.actor_name, e.queue_name, e.updated_at
      FROM {schema}.executions AS e
     WHERE e.status = 'running'
       AND e.status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
       AND e.updated_at < %(before)s
       AND (e.run_owner IS NULL
            OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = e.run_owner))
     ORDER BY e.updated_at
     LIMIT %(cap)s
)
SELECT (SELECT count(*) FROM orphaned), o.*
  FROM (SELECT 1) AS one
  LEFT JOIN (SELECT * FROM orphaned LIMIT %(limit)s) AS o ON true
 ORDER BY o.updated_at

-- name: run_holder
-- Who holds an execution's run: whether a worker does, and whether that worker
-- is still alive (its row exists).
SELECT e.run_owner IS NOT NULL,
       EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = e.run_owner)
  FROM {schema}.executions AS e
 WHERE e.id = %(id)s
