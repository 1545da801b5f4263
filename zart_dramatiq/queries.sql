-- Queries of the durable-execution layer. {schema} is bound to the configured schema.

-- name: insert_execution
INSERT INTO {schema}.executions
       (id, actor_name, queue_name, input_hash, input, deadline, resume_message)
VALUES (%(id)s, %(actor_name)s, %(queue_name)s, %(input_hash)s, %(input)s,
        now() + %(timeout_s)s * interval '1 second', %(message)s)
ON CONFLICT (id) DO NOTHING
RETURNING id

-- name: execution_identity
SELECT input_hash, actor_name, status FROM {schema}.executions WHERE id = %(id)s

-- name: acquire
-- Takes the body of an execution for one run, unless it is finished, the
-- delivery is stale, or a live worker runs it. Returns the whole journal.
UPDATE {schema}.executions AS e
   SET status = 'running', run_owner = %(worker_id)s, runs = e.runs + 1, updated_at = now(),
       waiting_for = NULL, wake_message = NULL
 WHERE e.id = %(id)s AND e.wake_seq = %(seq)s
   AND e.status IN ('pending', 'running', 'sleeping', 'waiting', 'retrying')
   AND (e.run_owner IS NULL OR NOT EXISTS (
        SELECT 1 FROM {schema}.workers AS w
         WHERE w.id = e.run_owner
           AND w.heartbeat_at > now() - %(lease_timeout)s * interval '1 second'
           AND EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = w.backend_pid)))
RETURNING e.deadline IS NOT NULL AND e.deadline <= now() AS expired,
          (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'key', s.step_key, 'kind', s.kind, 'fn', s.fn, 'status', s.status,
                      'result', s.result, 'error', s.error, 'attempts', s.attempts,
                      'started_at', s.started_at, 'wake_at', s.wake_at,
                      'due', s.wake_at IS NOT NULL AND s.wake_at <= now())), '[]'::jsonb)
             FROM {schema}.steps AS s WHERE s.execution_id = e.id) AS journal

-- name: delivery_outcome
-- Why acquire refused: the execution's state as a delivery sees it.
SELECT status, wake_seq, run_owner IS NOT NULL, result
  FROM {schema}.executions WHERE id = %(id)s

-- name: record_steps
-- Writes step outcomes (one per execution) if each writer still runs its
-- execution, and tells each body whether to go on: it may have been cancelled
-- or timed out meanwhile. Rows come back in input order.
WITH batch AS (
    SELECT *
      FROM unnest(%(ids)s::text[], %(worker_ids)s::uuid[], %(keys)s::text[], %(kinds)s::text[],
                  %(names)s::text[], %(fns)s::text[], %(statuses)s::text[], %(results)s::jsonb[],
                  %(errors)s::jsonb[], %(attempts)s::int[], %(durations_ms)s::float8[],
                  %(wake_ins_s)s::float8[])
           WITH ORDINALITY
           AS b (id, worker_id, key, kind, name, fn, status, result, error, attempts,
                 duration_ms, wake_in_s, n)
), owner AS (
    SELECT b.n, e.status, e.deadline IS NOT NULL AND e.deadline <= now() AS expired
      FROM batch AS b
      JOIN {schema}.executions AS e ON e.id = b.id AND e.run_owner = b.worker_id
), saved AS (
    INSERT INTO {schema}.steps
           (execution_id, step_key, kind, name, fn, status, result, error, attempts,
            started_at, finished_at, wake_at)
    SELECT b.id, b.key, b.kind, b.name, b.fn, b.status, b.result, b.error, b.attempts,
           now() - b.duration_ms * interval '1 millisecond',
           CASE WHEN b.status IN ('completed', 'failed', 'timed_out') THEN now() END,
           now() + b.wake_in_s * interval '1 second'
      FROM batch AS b JOIN owner USING (n)
    ON CONFLICT (execution_id, step_key) DO UPDATE
       SET status = excluded.status, result = excluded.result, error = excluded.error,
           attempts = excluded.attempts, finished_at = excluded.finished_at,
           wake_at = coalesce(excluded.wake_at, {schema}.steps.wake_at)
    RETURNING execution_id, step_key, wake_at
)
SELECT owner.status, owner.expired, saved.wake_at
  FROM batch AS b
  LEFT JOIN owner USING (n)
  LEFT JOIN saved ON saved.execution_id = b.id AND saved.step_key = b.key
 ORDER BY b.n

-- name: begin_wait
-- First encounter of a sleep or event wait fixes its due time; later runs
-- find the recorded one, so every replay waits for the same instant.
INSERT INTO {schema}.steps (execution_id, step_key, kind, name, status, wake_at)
VALUES (%(id)s, %(key)s, %(kind)s, %(name)s, 'waiting',
        coalesce(%(until)s, now() + %(seconds)s * interval '1 second'))
ON CONFLICT (execution_id, step_key) DO UPDATE SET wake_at = {schema}.steps.wake_at
RETURNING wake_at, wake_at IS NOT NULL AND wake_at <= now() AS due

-- name: lock_owned
SELECT status FROM {schema}.executions
 WHERE id = %(id)s AND run_owner = %(worker_id)s
   FOR UPDATE

-- name: consume_event
UPDATE {schema}.events SET consumed_by = %(key)s
 WHERE id = (SELECT id FROM {schema}.events
              WHERE execution_id = %(id)s AND name = %(name)s AND consumed_by IS NULL
              ORDER BY id LIMIT 1
                FOR UPDATE)
RETURNING payload

-- name: suspend
-- Releases the body and records what it waits for. Returns the milliseconds
-- until the resuming message is due (the wake-up or the deadline, whichever
-- comes first), or NULL when only an event can wake it.
UPDATE {schema}.executions
   SET status = %(status)s, run_owner = NULL, wake_seq = %(seq)s, waiting_for = %(waiting_for)s,
       wake_at = %(wake_at)s, resume_message = %(message)s, updated_at = now()
 WHERE id = %(id)s AND run_owner = %(worker_id)s
RETURNING CASE WHEN least(%(wake_at)s, deadline) IS NOT NULL
            THEN greatest(0, extract(epoch FROM least(%(wake_at)s, deadline) - now()) * 1000)::bigint
       END

-- name: set_wake_message
UPDATE {schema}.executions SET wake_message = %(row_id)s WHERE id = %(id)s

-- name: finish
-- A terminal outcome by the body's owner: completed, failed, timed_out or cancelled.
WITH done AS (
    UPDATE {schema}.executions
       SET status = %(status)s, result = %(result)s, error = %(error)s, run_owner = NULL,
           waiting_for = NULL, wake_at = NULL, finished_at = now(), updated_at = now()
     WHERE id = %(id)s AND run_owner = %(worker_id)s
    RETURNING id
)
SELECT {schema}.notify_execution_ended(%(channel)s, id, %(waiter)s) FROM done

-- name: release_after_error
UPDATE {schema}.executions
   SET status = 'retrying', error = %(error)s, run_owner = NULL, updated_at = now()
 WHERE id = %(id)s AND run_owner = %(worker_id)s

-- name: mark_failed
-- Dramatiq gave up on the message (retries exhausted, or no retries).
WITH done AS (
    UPDATE {schema}.executions
       SET status = 'failed', error = coalesce(%(error)s, error), run_owner = NULL,
           finished_at = now(), updated_at = now()
     WHERE id = %(id)s AND status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
    RETURNING id
)
SELECT {schema}.notify_execution_ended(%(channel)s, id, %(waiter)s) FROM done

-- name: cancel
WITH target AS (
    SELECT id, status, wake_message FROM {schema}.executions WHERE id = %(id)s FOR UPDATE
), done AS (
    UPDATE {schema}.executions AS e
       SET status = 'cancelled', waiting_for = NULL, wake_at = NULL, wake_message = NULL,
           finished_at = now(), updated_at = now()
      FROM target
     WHERE e.id = target.id
       AND target.status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
    RETURNING e.id
)
SELECT target.status, target.wake_message, (SELECT count({schema}.notify_execution_ended(%(channel)s, id, %(waiter)s)) FROM done)
  FROM target

-- name: lock_for_event
SELECT status, waiting_for, wake_message, wake_seq, resume_message
  FROM {schema}.executions WHERE id = %(id)s
   FOR UPDATE

-- name: insert_event
INSERT INTO {schema}.events (execution_id, name, key, payload)
VALUES (%(id)s, %(name)s, %(key)s, %(payload)s)
ON CONFLICT (execution_id, key) DO NOTHING
RETURNING id

-- name: get_execution
SELECT id, actor_name, queue_name, status, input, result, error, deadline, waiting_for,
       wake_at, runs, created_at, updated_at, finished_at
  FROM {schema}.executions WHERE id = %(id)s

-- name: get_steps
SELECT step_key, kind, name, fn, status, result, error, attempts, started_at, finished_at,
       wake_at
  FROM {schema}.steps WHERE execution_id = %(id)s
 ORDER BY started_at, step_key

-- name: list_executions
SELECT id, actor_name, queue_name, status, input, result, error, deadline, waiting_for,
       wake_at, runs, created_at, updated_at, finished_at
  FROM {schema}.executions
 WHERE (%(status)s::text IS NULL OR status = %(status)s)
 ORDER BY created_at DESC
 LIMIT %(limit)s

-- name: execution_status
SELECT status, result, error FROM {schema}.executions WHERE id = %(id)s

-- name: repair_lost_wakeups
-- For brokers other than broker_pg: an execution whose resuming message should
-- have run by now, but nothing took it, gets its message sent again. Stale
-- duplicates are harmless: a delivery is checked against wake_seq and run_owner.
UPDATE {schema}.executions AS e SET updated_at = now()
 WHERE e.run_owner IS NULL
   AND e.updated_at < now() - %(grace_s)s * interval '1 second'
   AND (e.status = 'pending'
        OR (e.status IN ('sleeping', 'retrying')
            AND least(e.wake_at, e.deadline) < now() - %(grace_s)s * interval '1 second')
        OR (e.status = 'waiting'
            AND (least(e.wake_at, e.deadline) < now() - %(grace_s)s * interval '1 second'
                 OR EXISTS (SELECT 1 FROM {schema}.events AS ev
                             WHERE ev.execution_id = e.id AND ev.name = e.waiting_for
                               AND ev.consumed_by IS NULL))))
RETURNING e.resume_message, e.wake_seq

-- name: retry_execution
-- Reopens an ended execution: the step that failed it is forgotten (so it runs
-- again), and the deadline restarts with the same length.
WITH target AS (
    SELECT id, status, error FROM {schema}.executions WHERE id = %(id)s FOR UPDATE
), forgotten AS (
    DELETE FROM {schema}.steps AS s USING target
     WHERE s.execution_id = target.id AND target.status = 'failed' AND s.status = 'failed'
       AND s.error ->> 'type' = target.error ->> 'type'
       AND s.error ->> 'message' = target.error ->> 'message'
), reopened AS (
    UPDATE {schema}.executions AS e
       SET status = 'pending', error = NULL, finished_at = NULL, run_owner = NULL,
           wake_seq = e.wake_seq + 1, updated_at = now(),
           deadline = now() + (e.deadline - e.created_at)
      FROM target
     WHERE e.id = target.id AND target.status IN ('failed', 'cancelled', 'timed_out')
    RETURNING e.wake_seq, e.resume_message
)
SELECT target.status, reopened.wake_seq, reopened.resume_message
  FROM target LEFT JOIN reopened ON true

-- name: purge_executions
-- One batch of ended executions older than the retention; steps and events go with them.
WITH gone AS (
    DELETE FROM {schema}.executions
     WHERE id IN (SELECT id FROM {schema}.executions
                   WHERE status IN ('completed', 'failed', 'cancelled', 'timed_out')
                     AND finished_at < now() - %(older_than_s)s * interval '1 second'
                   ORDER BY finished_at
                   LIMIT %(batch)s)
    RETURNING 1
)
SELECT count(*) FROM gone
