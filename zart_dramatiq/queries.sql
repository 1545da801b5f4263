-- Queries of the durable-execution layer. {schema} is bound to the configured schema.

-- name: insert_execution
-- An attached child without a timeout of its own inherits its parent's deadline.
INSERT INTO {schema}.executions
       (id, actor_name, queue_name, input_hash, input, deadline, resume_message,
        parent_id, parent_step, detached, slot_key, slot_scope, priority)
VALUES (%(id)s, %(actor_name)s, %(queue_name)s, %(input_hash)s, %(input)s,
        coalesce(statement_timestamp() + %(timeout_s)s * interval '1 second',
                 (SELECT deadline FROM {schema}.executions
                   WHERE id = %(parent_id)s AND NOT %(detached)s)),
        %(message)s, %(parent_id)s, %(parent_step)s, %(detached)s,
        %(slot_key)s, %(slot_scope)s, %(priority)s)
ON CONFLICT (id) DO NOTHING
RETURNING id

-- name: execution_identity
SELECT input_hash, actor_name, status, parent_id FROM {schema}.executions WHERE id = %(id)s

-- name: acquire
-- Takes the execution for a new run. The run counter it bumps is the run's
-- fencing token: every later write of the run names it and is refused once
-- another run has taken over. A run held by a worker whose row is gone
-- (presumed lost) may be taken over; one held by this worker is taken only
-- when the caller knows no run of it is active here.
UPDATE {schema}.executions AS e
   SET status = 'running', run_owner = %(worker_id)s, runs = e.runs + 1, updated_at = now(),
       waiting_for = NULL, wake_message = NULL
 WHERE e.id = %(id)s AND e.wake_seq = %(seq)s AND e.status = ANY(%(sources)s)
   AND (e.run_owner IS NULL OR e.run_owner = %(worker_id)s
        OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = e.run_owner))
   -- A limited one runs only with a slot of its key (concurrency.py admits it).
   AND (e.slot_key IS NULL OR e.slot_admitted)
   -- An operator's pause holds it: resume sends its wake-up again if it is due.
   AND e.paused_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM {schema}.paused_actors AS p WHERE p.actor_name = e.actor_name)
RETURNING e.runs,
          e.deadline IS NOT NULL AND e.deadline <= statement_timestamp() AS expired,
          e.generation,
          e.parent_id,
          extract(epoch FROM statement_timestamp() - e.created_at)::float8 AS age_s,
          -- How late a wake-up at a time is served (negative: woken early, by an event).
          extract(epoch FROM statement_timestamp() - e.wake_at)::float8 AS lateness_s,
          e.slot_key, e.slot_scope

-- name: journal
-- The whole journal of the run that acquire just started, read by a statement
-- of its own: acquire may have waited for the lock of a run that recorded a
-- step as it committed, and a subquery of acquire would read from before that.
SELECT coalesce(jsonb_agg(jsonb_build_object(
           'key', s.step_key, 'kind', s.kind, 'fn', s.fn, 'status', s.status,
           'result', s.result, 'error', s.error, 'attempts', s.attempts,
           'elapsed_s', extract(epoch FROM statement_timestamp() - s.started_at),
           'due', s.wake_at IS NOT NULL AND s.wake_at <= statement_timestamp(),
           -- Its place among the body's calls (timeline.py); NULL before migration 0015.
           'position', s.position)),
       '[]'::jsonb)
  FROM {schema}.steps AS s WHERE s.execution_id = %(id)s

-- name: delivery_outcome
-- Why acquire refused: the execution as a delivery sees it.
SELECT e.status, e.wake_seq, e.run_owner IS NOT NULL, e.result, e.finished_by,
       e.paused_at IS NOT NULL
       OR EXISTS (SELECT 1 FROM {schema}.paused_actors AS p WHERE p.actor_name = e.actor_name),
       e.slot_key IS NOT NULL AND NOT e.slot_admitted
  FROM {schema}.executions AS e WHERE e.id = %(id)s

-- name: fence_state
-- Whether a run's refused write was in fact its own earlier commit (a lost reply).
SELECT status, runs FROM {schema}.executions WHERE id = %(id)s

-- name: record_steps
-- Writes step outcomes, each only while its run is the execution's current one
-- (same token, and still running, or cancelled while the step ran: the step
-- did happen). A step row that reached a final state is never rewritten: a
-- write that comes second — a run that was taken over as it wrote, or a
-- repeated write whose first reply was lost — gets the recorded outcome back,
-- and its body goes on with that. No row lock is needed: a write racing a
-- takeover either lands before it or is refused, and the new run adopts
-- whatever was recorded first. Rows come back in input order.
WITH batch AS (
    SELECT *
      FROM ROWS FROM (jsonb_to_recordset(%(batch)s::jsonb)
                      AS (execution_id text, token int, key text, kind text, name text,
                          fn text, status text, result jsonb, error jsonb, attempts int,
                          duration_ms float8, wake_in_s float8, position int))
           WITH ORDINALITY
           AS b (id, token, key, kind, name, fn, status, result, error, attempts,
                 duration_ms, wake_in_s, position, n)
), fence AS (
    SELECT b.n, e.deadline IS NOT NULL AND e.deadline <= statement_timestamp() AS expired
      FROM batch AS b
      JOIN {schema}.executions AS e
        ON e.id = b.id AND e.runs = b.token AND e.status IN ('running', 'cancelled')
), saved AS (
    INSERT INTO {schema}.steps AS s
           (execution_id, step_key, kind, name, fn, status, result, error, attempts,
            started_at, finished_at, wake_at, position)
    SELECT b.id, b.key, b.kind, b.name, b.fn, b.status, b.result, b.error, b.attempts,
           statement_timestamp() - b.duration_ms * interval '1 millisecond',
           CASE WHEN b.status IN ('completed', 'failed', 'timed_out') THEN statement_timestamp() END,
           statement_timestamp() + b.wake_in_s * interval '1 second', b.position
      FROM batch AS b JOIN fence USING (n)
    ON CONFLICT (execution_id, step_key) DO UPDATE
       SET status = CASE WHEN s.status IN ('completed', 'failed', 'timed_out')
                         THEN s.status ELSE excluded.status END,
           result = CASE WHEN s.status IN ('completed', 'failed', 'timed_out')
                         THEN s.result ELSE excluded.result END,
           error = CASE WHEN s.status IN ('completed', 'failed', 'timed_out')
                        THEN s.error ELSE excluded.error END,
           attempts = CASE WHEN s.status IN ('completed', 'failed', 'timed_out')
                           THEN s.attempts ELSE excluded.attempts END,
           finished_at = coalesce(s.finished_at, excluded.finished_at),
           wake_at = coalesce(excluded.wake_at, s.wake_at)
    RETURNING s.execution_id, s.step_key, s.status, s.result, s.error, s.wake_at
)
SELECT fence.n IS NOT NULL, e.status, fence.expired,
       saved.status, saved.result, saved.error, saved.wake_at
  FROM batch AS b
  LEFT JOIN fence USING (n)
  LEFT JOIN {schema}.executions AS e ON e.id = b.id
  LEFT JOIN saved ON saved.execution_id = b.id AND saved.step_key = b.key
 ORDER BY b.n

-- name: begin_wait
-- First encounter of a sleep or event wait fixes its due time; later runs
-- find the recorded one, so every replay waits for the same instant.
INSERT INTO {schema}.steps (execution_id, step_key, kind, name, status, wake_at, position)
VALUES (%(id)s, %(key)s, %(kind)s, %(name)s, 'waiting',
        coalesce(%(until)s, statement_timestamp() + %(seconds)s * interval '1 second'),
        %(position)s)
ON CONFLICT (execution_id, step_key) DO UPDATE SET wake_at = {schema}.steps.wake_at
RETURNING wake_at, wake_at IS NOT NULL AND wake_at <= statement_timestamp() AS due

-- name: lock_current
-- Holds the execution for the rest of the transaction, if the run is still its current one.
SELECT status FROM {schema}.executions
 WHERE id = %(id)s AND runs = %(token)s AND status = 'running'
   FOR UPDATE

-- name: consume_event
-- (The execution id in the outer WHERE too: on a table distributed by it, one node.)
UPDATE {schema}.events SET consumed_by = %(key)s
 WHERE execution_id = %(id)s
   AND id = (SELECT id FROM {schema}.events
              WHERE execution_id = %(id)s AND name = %(name)s AND consumed_by IS NULL
              ORDER BY id LIMIT 1
                FOR UPDATE)
RETURNING payload

-- name: suspend
-- running -> sleeping, waiting or retrying: releases the body and records what
-- it waits for. Returns the milliseconds until the resuming message is due (the
-- wake-up or the deadline, whichever comes first), or NULL when only an event
-- can wake it.
WITH paused AS (
    UPDATE {schema}.executions
       SET status = %(status)s, run_owner = NULL, wake_seq = %(seq)s,
           waiting_for = %(waiting_for)s,
           slot_admitted = slot_admitted AND slot_scope IS DISTINCT FROM 'running',
           wake_at = coalesce(%(wake_at)s, statement_timestamp() + %(wake_in_s)s * interval '1 second'),
           resume_message = %(message)s, updated_at = now()
     WHERE id = %(id)s AND runs = %(token)s AND status = ANY(%(sources)s)
    RETURNING wake_at, deadline
)
SELECT CASE WHEN least(wake_at, deadline) IS NOT NULL
            THEN greatest(0, extract(epoch FROM least(wake_at, deadline) - statement_timestamp())
                             * 1000)::bigint
       END
  FROM paused

-- name: set_wake_message
UPDATE {schema}.executions SET wake_message = %(row_id)s WHERE id = %(id)s

-- name: finish
-- running -> completed, failed or timed_out, by the current run only: a cancel
-- (or a takeover) that came first wins over a late finish.
WITH done AS (
    UPDATE {schema}.executions
       SET status = %(status)s, result = %(result)s, error = %(error)s, run_owner = NULL,
           waiting_for = NULL, wake_at = NULL, finished_by = %(delivery)s,
           finished_at = now(), updated_at = now()
     WHERE id = %(id)s AND runs = %(token)s AND status = ANY(%(sources)s)
    RETURNING id
)
-- The end is notified only while someone waits for results (see listeners).
SELECT id, (SELECT pg_notify(%(channel)s, id)
             WHERE EXISTS (SELECT 1 FROM {schema}.listeners WHERE channel = %(channel)s))
  FROM done

-- name: release_owner
-- A run that stopped (cancelled, or taken over) lets go of its execution, so a
-- retry can start a new run; a run that was taken over matches nothing.
UPDATE {schema}.executions SET run_owner = NULL, updated_at = now()
 WHERE id = %(id)s AND runs = %(token)s AND status <> 'running'

-- name: owned_runs
-- Runs held by this worker, and runs held by lost workers: the sweeper checks
-- each against the runs active in this process.
SELECT e.id, e.runs, e.status, e.run_owner = %(worker_id)s
  FROM {schema}.executions AS e
 WHERE e.run_owner IS NOT NULL
   AND (e.run_owner = %(worker_id)s
        OR (e.status = 'running'
            AND NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = e.run_owner)))

-- name: abandon
-- running -> retrying for a run that ended without recording its end (its
-- worker died, or its writes kept failing): a new run starts from the journal.
UPDATE {schema}.executions
   SET status = 'retrying', run_owner = NULL, wake_seq = wake_seq + 1,
       wake_at = statement_timestamp(), updated_at = now(),
       slot_admitted = slot_admitted AND slot_scope IS DISTINCT FROM 'running'
 WHERE id = %(id)s AND runs = %(token)s AND status = ANY(%(sources)s)
RETURNING wake_seq, resume_message

-- name: continue_as_new
-- running -> pending, by the current run only: the execution starts afresh as
-- its next generation, with new input and an empty journal (this generation's
-- steps are deleted). The inbox is kept: unconsumed events wait for the next
-- generation, consumed ones stay consumed (and their keys keep deduplicating).
-- input_hash stays the start's, so repeating that start still finds it.
WITH renewed AS (
    UPDATE {schema}.executions
       SET status = 'pending', generation = generation + 1, input = %(input)s,
           run_owner = NULL, wake_seq = %(seq)s, waiting_for = NULL, wake_at = NULL,
           resume_message = %(message)s, updated_at = now(),
           slot_admitted = slot_admitted AND slot_scope IS DISTINCT FROM 'running'
     WHERE id = %(id)s AND runs = %(token)s AND status = ANY(%(sources)s)
    RETURNING id, generation
), cleared AS (
    DELETE FROM {schema}.steps AS s USING renewed WHERE s.execution_id = renewed.id
), groups_cleared AS (
    -- A late branch of a group of the last generation finds nothing to join.
    DELETE FROM {schema}.step_groups AS g USING renewed WHERE g.execution_id = renewed.id
)
SELECT generation FROM renewed

-- name: cancel
WITH target AS (
    SELECT id, status, wake_message, parent_id, actor_name, slot_key
      FROM {schema}.executions WHERE id = %(id)s FOR UPDATE
), done AS (
    UPDATE {schema}.executions AS e
       SET status = 'cancelled', waiting_for = NULL, wake_at = NULL, wake_message = NULL,
           finished_at = now(), updated_at = now()
      FROM target
     WHERE e.id = target.id AND target.status = ANY(%(sources)s)
    RETURNING e.id
)
SELECT target.status, target.wake_message, target.parent_id, target.actor_name, target.slot_key,
       (SELECT count(pg_notify(%(channel)s, id)) FROM done
         WHERE EXISTS (SELECT 1 FROM {schema}.listeners WHERE channel = %(channel)s))
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

-- name: event_key_taken
SELECT 1 FROM {schema}.events WHERE execution_id = %(id)s AND key = %(key)s

-- name: get_execution
SELECT id, actor_name, queue_name, status, input, result, error, deadline, waiting_for,
       wake_at, runs, generation, created_at, updated_at, finished_at, parent_id, detached,
       paused_at
  FROM {schema}.executions WHERE id = %(id)s

-- name: get_steps
SELECT step_key, kind, name, fn, status, result, error, attempts, started_at, finished_at,
       wake_at
  FROM {schema}.steps WHERE execution_id = %(id)s
 ORDER BY started_at, step_key

-- name: list_executions
SELECT id, actor_name, queue_name, status, input, result, error, deadline, waiting_for,
       wake_at, runs, generation, created_at, updated_at, finished_at, parent_id, detached,
       paused_at
  FROM {schema}.executions
 WHERE (%(status)s::text IS NULL OR status = %(status)s)
 ORDER BY created_at DESC
 LIMIT %(limit)s

-- name: search_executions
-- One page of executions, newest first, after the keyset cursor (created_at, id)
-- when given, with how many match over every page; every filter is optional.
-- An empty page is one row of NULLs with the total.
WITH matching AS MATERIALIZED (
    SELECT created_at, id FROM {schema}.executions
     WHERE (%(status)s::text IS NULL OR status = %(status)s)
       AND (%(actor)s::text IS NULL OR actor_name = %(actor)s)
       AND (%(id_prefix)s::text IS NULL OR starts_with(id, %(id_prefix)s))
       AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s)
       AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s)
       AND (%(finished_after)s::timestamptz IS NULL OR finished_at >= %(finished_after)s)
       AND (%(finished_before)s::timestamptz IS NULL OR finished_at < %(finished_before)s)
       AND (%(error)s::text IS NULL OR error::text ILIKE '%%' || %(error)s || '%%')
), page AS (
    SELECT id FROM matching
     WHERE %(after_created)s::timestamptz IS NULL
        OR (created_at, id) < (%(after_created)s, %(after_id)s::text)
     ORDER BY created_at DESC, id DESC
     LIMIT %(limit)s
)
SELECT (SELECT count(*) FROM matching),
       e.id, e.actor_name, e.queue_name, e.status, e.input, e.result, e.error, e.deadline,
       e.waiting_for, e.wake_at, e.runs, e.generation, e.created_at, e.updated_at,
       e.finished_at, e.parent_id, e.detached, e.paused_at
  FROM (SELECT 1) AS one
  LEFT JOIN (page JOIN {schema}.executions AS e USING (id)) ON true
 ORDER BY e.created_at DESC, e.id DESC

-- name: get_events
-- An execution's inbox in arrival order: consumed_by names the wait that took
-- an event, NULL while it is kept for a later wait.
SELECT name, key, payload, sent_at, consumed_by
  FROM {schema}.events
 WHERE execution_id = %(id)s
 ORDER BY id

-- name: open_executions
-- Executions not ended, by status and actor (the metrics): read through the
-- index of active executions, never the ended ones.
SELECT status, actor_name, count(*)
  FROM {schema}.executions
 WHERE status IN ('pending', 'running', 'sleeping', 'waiting', 'retrying', 'blocked')
 GROUP BY status, actor_name

-- name: execution_status
SELECT status, result, error FROM {schema}.executions WHERE id = %(id)s

-- name: overdue_wakeups
-- Executions whose resuming message should have run %(grace_s)s seconds ago
-- or more, but nothing took them, get their message sent again: by the sweeper
-- on brokers other than broker_pg (a lost message), and at a resume (a
-- delivery dropped while paused), there for one execution (%(id)s) or one
-- actor (%(actor)s). Paused ones are left alone. Stale duplicates are
-- harmless: a delivery is checked against wake_seq and run_owner. Each branch
-- reads an index of what may be overdue (executions_overdue,
-- executions_active, events_unconsumed), never every sleeping execution.
WITH overdue AS (
    SELECT e.id FROM {schema}.executions AS e
     WHERE e.run_owner IS NULL AND e.status IN ('sleeping', 'retrying', 'waiting')
       AND least(e.wake_at, e.deadline) < now() - %(grace_s)s * interval '1 second'
       AND e.updated_at < now() - %(grace_s)s * interval '1 second'
       AND (%(id)s::text IS NULL OR e.id = %(id)s)
       AND (%(actor)s::text IS NULL OR e.actor_name = %(actor)s)
       AND e.paused_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM {schema}.paused_actors AS p WHERE p.actor_name = e.actor_name)
    UNION
    SELECT e.id FROM {schema}.executions AS e
     WHERE e.status = 'pending' AND e.run_owner IS NULL
       AND e.updated_at < now() - %(grace_s)s * interval '1 second'
       AND (%(id)s::text IS NULL OR e.id = %(id)s)
       AND (%(actor)s::text IS NULL OR e.actor_name = %(actor)s)
       AND e.paused_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM {schema}.paused_actors AS p WHERE p.actor_name = e.actor_name)
    UNION
    -- Waiting for a group or a child that has ended.
    SELECT e.id FROM {schema}.executions AS e
      JOIN {schema}.steps AS s ON s.execution_id = e.id AND s.step_key = e.waiting_for
     WHERE e.status = 'waiting' AND e.run_owner IS NULL
       AND e.updated_at < now() - %(grace_s)s * interval '1 second'
       AND s.kind IN ('group', 'child') AND s.status IN ('completed', 'failed')
       AND (%(id)s::text IS NULL OR e.id = %(id)s)
       AND (%(actor)s::text IS NULL OR e.actor_name = %(actor)s)
       AND e.paused_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM {schema}.paused_actors AS p WHERE p.actor_name = e.actor_name)
    UNION
    SELECT e.id FROM {schema}.events AS ev
      JOIN {schema}.executions AS e ON e.id = ev.execution_id
     WHERE ev.consumed_by IS NULL
       AND e.status = 'waiting' AND e.waiting_for = ev.name AND e.run_owner IS NULL
       AND e.updated_at < now() - %(grace_s)s * interval '1 second'
       AND (%(id)s::text IS NULL OR e.id = %(id)s)
       AND (%(actor)s::text IS NULL OR e.actor_name = %(actor)s)
       AND e.paused_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM {schema}.paused_actors AS p WHERE p.actor_name = e.actor_name)
    -- A bounded batch per sweep; the rest at the next.
    LIMIT %(limit)s
)
UPDATE {schema}.executions AS e SET updated_at = now()
 WHERE e.id = ANY (ARRAY(SELECT id FROM overdue))
   AND e.updated_at < now() - %(grace_s)s * interval '1 second'
RETURNING e.resume_message, e.wake_seq

-- name: reopen
-- failed, cancelled or timed_out -> pending: the step that failed it is
-- forgotten (so it runs again), and the deadline restarts with the same length.
-- run_owner stays: a cancelled body still running releases it when it stops,
-- and until then no new run may start.
WITH target AS (
    SELECT id, status, error FROM {schema}.executions WHERE id = %(id)s FOR UPDATE
), forgotten AS (
    DELETE FROM {schema}.steps AS s USING target
     WHERE s.execution_id = target.id AND target.status = 'failed' AND s.status = 'failed'
       AND s.error ->> 'type' = target.error ->> 'type'
       AND s.error ->> 'message' = target.error ->> 'message'
), reopened AS (
    UPDATE {schema}.executions AS e
       SET status = 'pending', error = NULL, finished_at = NULL, finished_by = NULL,
           wake_seq = e.wake_seq + 1, updated_at = now(),
           slot_admitted = false, slot_waiting_since = NULL,
           deadline = statement_timestamp() + (e.deadline - e.created_at)
      FROM target
     WHERE e.id = target.id AND target.status = ANY(%(sources)s)
    RETURNING e.wake_seq, e.resume_message
)
SELECT target.status, reopened.wake_seq, reopened.resume_message
  FROM target LEFT JOIN reopened ON true

-- name: journal_key_of
-- The journal key a name designates: the key itself, else the first entry so named.
SELECT step_key FROM {schema}.steps
 WHERE execution_id = %(id)s AND (step_key = %(name)s OR name = %(name)s)
 ORDER BY step_key = %(name)s DESC, started_at, step_key
 LIMIT 1

-- name: rerun_from
-- Any ended status -> pending: journal entry %(key)s and every entry recorded
-- after it are forgotten (with their groups), so they run again; the entries
-- before it keep their outcomes. The deadline restarts with the same length.
WITH target AS (
    SELECT id, status FROM {schema}.executions WHERE id = %(id)s FOR UPDATE
), anchor AS (
    SELECT started_at FROM {schema}.steps WHERE execution_id = %(id)s AND step_key = %(key)s
), forgotten AS (
    DELETE FROM {schema}.steps AS s USING target, anchor
     WHERE s.execution_id = target.id AND target.status = ANY(%(sources)s)
       AND (s.started_at > anchor.started_at OR s.step_key = %(key)s)
    RETURNING s.step_key
), groups_forgotten AS (
    DELETE FROM {schema}.step_groups AS g USING forgotten
     WHERE g.execution_id = %(id)s AND g.group_key = forgotten.step_key
), rerun AS (
    UPDATE {schema}.executions AS e
       SET status = 'pending', result = NULL, error = NULL, finished_at = NULL,
           finished_by = NULL, wake_seq = e.wake_seq + 1, updated_at = now(),
           slot_admitted = false, slot_waiting_since = NULL,
           deadline = statement_timestamp() + (e.deadline - e.created_at)
      FROM target
     WHERE e.id = target.id AND target.status = ANY(%(sources)s)
    RETURNING e.wake_seq, e.resume_message
)
SELECT target.status, rerun.wake_seq, rerun.resume_message
  FROM target LEFT JOIN rerun ON true

-- name: purge_executions
-- One batch of up to %(limit)s ended executions older than the retention, oldest
-- first; steps and events go with them. Rows locked (say, by a retry) are
-- skipped: a DELETE that waited for one would not check its status again.
WITH gone AS (
    DELETE FROM {schema}.executions
     WHERE id IN (SELECT id FROM {schema}.executions
                   WHERE status IN ('completed', 'failed', 'cancelled', 'timed_out')
                     AND finished_at < now() - %(older_than_s)s * interval '1 second'
                   ORDER BY finished_at
                   LIMIT %(limit)s
                     FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT count(*) FROM gone

-- name: lock_execution
-- Holds an execution for the rest of the transaction. A child's end and a
-- cancel lock the parent before the child: one order for every transaction
-- that touches both, so they never deadlock.
SELECT id FROM {schema}.executions WHERE id = %(id)s FOR UPDATE

-- name: lock_parent_of
SELECT p.id FROM {schema}.executions AS p
 WHERE p.id = (SELECT parent_id FROM {schema}.executions WHERE id = %(id)s)
   FOR UPDATE

-- name: journal_entry
-- One journal entry as committed now (a branch or a child may have ended it
-- since the run loaded its journal).
SELECT status, result, error FROM {schema}.steps
 WHERE execution_id = %(id)s AND step_key = %(key)s

-- name: wake_waiting
-- The parked resuming message of an execution that waits for this entry.
SELECT wake_message, resume_message FROM {schema}.executions
 WHERE id = %(id)s AND status = 'waiting' AND waiting_for = %(key)s
   FOR UPDATE

-- name: children_to_reopen
-- Attached children that their parent's end cancelled (or whose deadline it
-- gave them), while the parent's journal still waits for them.
SELECT c.id FROM {schema}.executions AS c
  JOIN {schema}.steps AS s
    ON s.execution_id = c.parent_id AND s.step_key = c.parent_step AND s.status = 'waiting'
       AND s.result ->> 'execution_id' = c.id
 WHERE c.parent_id = %(id)s AND NOT c.detached AND c.status IN ('cancelled', 'timed_out')

-- name: child_ended
-- The parent's journal entry for a child takes the child's outcome, if that
-- entry waits for this child: after a continue_as_new, the same key may wait
-- for a child of the new generation.
WITH child AS (
    SELECT id, parent_id, parent_step, status, result, error
      FROM {schema}.executions WHERE id = %(id)s
)
UPDATE {schema}.steps AS s
   SET status = CASE WHEN child.status = 'completed' THEN 'completed' ELSE 'failed' END,
       result = jsonb_build_object('execution_id', child.id, 'status', child.status,
                                   'result', child.result),
       error = child.error, finished_at = statement_timestamp()
  FROM child
 WHERE s.execution_id = child.parent_id AND s.step_key = child.parent_step
   AND s.kind = 'child' AND s.status = 'waiting' AND s.result ->> 'execution_id' = child.id
RETURNING s.execution_id, s.step_key

-- name: cancel_descendants
-- The attached children of an ended execution, and theirs, are cancelled;
-- returns their pending wake-ups. Locked level by level, parents first: the
-- order in which a child's own end locks its parent, then itself.
WITH RECURSIVE tree (id, depth) AS (
    SELECT id, 1 FROM {schema}.executions WHERE parent_id = %(id)s AND NOT detached
    UNION
    SELECT e.id, tree.depth + 1 FROM {schema}.executions AS e JOIN tree ON e.parent_id = tree.id
     WHERE NOT e.detached
), targets AS (
    SELECT e.id, e.wake_message FROM {schema}.executions AS e JOIN tree USING (id)
     WHERE e.status = ANY(%(sources)s)
     ORDER BY tree.depth, e.id
       FOR UPDATE OF e
), done AS (
    UPDATE {schema}.executions AS e
       SET status = 'cancelled', waiting_for = NULL, wake_at = NULL, wake_message = NULL,
           finished_at = now(), updated_at = now()
      FROM targets
     WHERE e.id = targets.id
    RETURNING e.id, targets.wake_message
)
SELECT done.wake_message,
       (SELECT pg_notify(%(channel)s, done.id)
         WHERE EXISTS (SELECT 1 FROM {schema}.listeners WHERE channel = %(channel)s))
  FROM done

-- name: open_group
-- A group's row and its branches, all still to be sent. Nothing if it exists.
WITH opened AS (
    INSERT INTO {schema}.step_groups
           (execution_id, group_key, mode, size, max_concurrency, open)
    VALUES (%(id)s, %(key)s, %(mode)s, %(size)s, %(max_concurrency)s, %(size)s)
    ON CONFLICT DO NOTHING
    RETURNING execution_id, group_key
), branches AS (
    INSERT INTO {schema}.branches (execution_id, group_key, index, name, fn, message)
    SELECT o.execution_id, o.group_key, b.n - 1, b.name, b.fn, decode(b.message, 'base64')
      FROM opened AS o,
           ROWS FROM (jsonb_to_recordset(%(branches)s::jsonb)
                      AS (name text, fn text, message text)) WITH ORDINALITY
           AS b (name, fn, message, n)
)
SELECT count(*) FROM opened

-- name: reopen_group
-- A group whose journal entry a retry forgot (its failure failed the
-- execution): branches that failed or never ran go again; completed ones stay.
-- Their messages (dropped once a branch ended) are given again.
WITH given AS (
    SELECT b.n - 1 AS index, decode(b.message, 'base64') AS message
      FROM ROWS FROM (jsonb_to_recordset(%(branches)s::jsonb) AS (message text))
           WITH ORDINALITY AS b (message, n)
), again AS (
    UPDATE {schema}.branches AS b
       SET status = 'pending', error = NULL, attempts = 0, finished_at = NULL,
           message = given.message
      FROM given
     WHERE b.execution_id = %(id)s AND b.group_key = %(key)s AND b.index = given.index
       AND b.status IN ('pending', 'queued', 'failed', 'skipped')
    RETURNING b.index
)
UPDATE {schema}.step_groups
   SET status = 'running', winner = NULL, in_flight = 0,
       open = (SELECT count(*) FROM again),
       next_branch = coalesce((SELECT min(index) FROM again), size)
 WHERE execution_id = %(id)s AND group_key = %(key)s AND status <> 'running'

-- name: open_group_entry
-- The parent's journal entry for a group, waiting until the group ends.
INSERT INTO {schema}.steps (execution_id, step_key, kind, name, fn, status, position)
VALUES (%(id)s, %(key)s, 'group', %(name)s, %(fn)s, 'waiting', %(position)s)
ON CONFLICT (execution_id, step_key) DO NOTHING

-- name: queue_branches
-- The next branches to send, up to %(count)s, from index %(start)s on (the
-- group's next_branch, which no branch below is still to be sent): marked
-- queued, their messages returned. The group counts them in flight.
WITH last AS (
    SELECT max(index) AS index
      FROM (SELECT b.index FROM {schema}.branches AS b
             WHERE b.execution_id = %(id)s AND b.group_key = %(key)s
               AND b.index >= %(start)s AND b.status = 'pending'
             ORDER BY b.index
             LIMIT %(count)s) AS next
), queued AS (
    -- The pending rows up to the last of them are the ones found: read as an index
    -- range (a generic plan would rather filter the whole group for a join or a list).
    UPDATE {schema}.branches AS b
       SET status = 'queued', queued_at = statement_timestamp()
     WHERE b.execution_id = %(id)s AND b.group_key = %(key)s AND b.status = 'pending'
       AND b.index >= %(start)s AND b.index <= (SELECT index FROM last)
    RETURNING b.index, b.message
), counted AS (
    UPDATE {schema}.step_groups
       SET in_flight = in_flight + (SELECT count(*) FROM queued),
           next_branch = coalesce((SELECT max(index) + 1 FROM queued), next_branch)
     WHERE execution_id = %(id)s AND group_key = %(key)s
)
SELECT index, message FROM queued ORDER BY index

-- name: branch_states
-- Whether each delivered branch should run (still queued, in a running group
-- of an execution that has not ended), its attempts so far and the seconds
-- since it was sent; in input order. Branches delivered together ask together.
WITH asked AS (
    SELECT *
      FROM ROWS FROM (jsonb_to_recordset(%(batch)s::jsonb) AS (id text, key text, index int))
           WITH ORDINALITY AS a (id, key, index, n)
)
SELECT coalesce(b.status = 'queued' AND g.status = 'running'
                AND e.status NOT IN ('completed', 'failed', 'cancelled', 'timed_out'), false),
       b.attempts,
       extract(epoch FROM statement_timestamp() - b.queued_at)::float8
  FROM asked AS a
  LEFT JOIN {schema}.branches AS b
         ON b.execution_id = a.id AND b.group_key = a.key AND b.index = a.index
  LEFT JOIN {schema}.step_groups AS g
         ON g.execution_id = a.id AND g.group_key = a.key
  LEFT JOIN {schema}.executions AS e ON e.id = a.id
 ORDER BY a.n

-- name: touch_branch
-- A branch starts (brokers other than broker_pg): the repair of lost branch
-- messages leaves it alone for a while.
UPDATE {schema}.branches SET queued_at = statement_timestamp()
 WHERE execution_id = %(id)s AND group_key = %(key)s AND index = %(index)s
   AND status = 'queued'

-- name: lock_group
-- The join counter, held for the rest of the transaction: branches of one
-- group end one at a time.
SELECT g.mode, g.status, g.open, g.max_concurrency, g.next_branch,
       e.status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
  FROM {schema}.step_groups AS g
  JOIN {schema}.executions AS e ON e.id = g.execution_id
 WHERE g.execution_id = %(id)s AND g.group_key = %(key)s
   FOR UPDATE OF g

-- name: settle_branch
-- A branch's outcome, once (a duplicate delivery finds it ended and changes
-- nothing), and the group's counters with it.
WITH settled AS (
    UPDATE {schema}.branches
       SET status = %(status)s, result = %(result)s, error = %(error)s,
           attempts = %(attempts)s, message = NULL, finished_at = statement_timestamp()
     WHERE execution_id = %(id)s AND group_key = %(key)s AND index = %(index)s
       AND status = 'queued'
    RETURNING index
), counted AS (
    UPDATE {schema}.step_groups
       SET open = open - 1, in_flight = in_flight - 1,
           status = %(group_status)s, winner = coalesce(winner, %(winner)s)
     WHERE execution_id = %(id)s AND group_key = %(key)s AND EXISTS (SELECT 1 FROM settled)
)
SELECT count(*) FROM settled

-- name: retry_branch
-- A branch's failed attempt, before it is sent again after a backoff.
UPDATE {schema}.branches
   SET attempts = %(attempts)s, error = %(error)s
 WHERE execution_id = %(id)s AND group_key = %(key)s AND index = %(index)s
   AND status = 'queued'
RETURNING index

-- name: end_group
-- The group's outcome in its parent's journal: every branch in index order,
-- and the winner of a 'first' group. Branches not sent yet never will be.
WITH skipped AS (
    UPDATE {schema}.branches SET status = 'skipped', message = NULL
     WHERE execution_id = %(id)s AND group_key = %(key)s AND status = 'pending'
), outcome AS (
    SELECT jsonb_agg(jsonb_build_object('status', b.status, 'result', b.result,
                                        'error', b.error) ORDER BY b.index) AS branches
      FROM {schema}.branches AS b
     WHERE b.execution_id = %(id)s AND b.group_key = %(key)s
)
UPDATE {schema}.steps AS s
   SET status = %(status)s, error = %(error)s, finished_at = statement_timestamp(),
       result = jsonb_build_object('branches', outcome.branches, 'winner', %(winner)s::int)
  FROM outcome
 WHERE s.execution_id = %(id)s AND s.step_key = %(key)s AND s.status = 'waiting'

-- name: repair_lost_branches
-- For brokers other than broker_pg: branches sent (or started) longer ago than
-- the grace, whose group still waits for them, are sent again. A duplicate is
-- harmless: a branch's outcome is recorded once.
UPDATE {schema}.branches AS b SET queued_at = statement_timestamp()
 WHERE (b.execution_id, b.group_key, b.index) IN (
        SELECT b.execution_id, b.group_key, b.index
          FROM {schema}.branches AS b
          JOIN {schema}.step_groups AS g USING (execution_id, group_key)
          JOIN {schema}.executions AS e ON e.id = b.execution_id
         WHERE b.status = 'queued'
           AND b.queued_at < now() - %(grace_s)s * interval '1 second'
           AND g.status = 'running'
           AND e.status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
         LIMIT 1000)
RETURNING b.message

-- name: get_groups
SELECT g.group_key, g.mode, g.status, g.size, g.open, g.max_concurrency, g.winner,
       coalesce(jsonb_agg(jsonb_build_object('index', b.index, 'name', b.name,
                                             'status', b.status, 'attempts', b.attempts,
                                             'error', b.error)
                          ORDER BY b.index) FILTER (WHERE b.index IS NOT NULL), '[]')
  FROM {schema}.step_groups AS g
  LEFT JOIN {schema}.branches AS b USING (execution_id, group_key)
 WHERE g.execution_id = %(id)s
 GROUP BY g.group_key, g.mode, g.status, g.size, g.open, g.max_concurrency, g.winner
 ORDER BY g.group_key

-- name: get_children
SELECT id, actor_name, status, parent_step, detached, created_at, finished_at
  FROM {schema}.executions WHERE parent_id = %(id)s
 ORDER BY created_at, id

-- Transactional steps (zart.transactional_step) run the user's SQL planned as
-- any session of the server would plan it.

-- name: plan_normally
-- Until the transaction ends (or plan_as_before), statements are planned as in
-- any session of this server, not as our sessions plan theirs (one generic plan,
-- sequential scans off: broker_pg.database.configure_session). Returns the
-- settings replaced; pg_settings is read whole before any set_config runs.
SELECT name, setting, set_config(name, reset_val, true)
  FROM pg_settings
 WHERE name IN ('plan_cache_mode', 'enable_seqscan')

-- name: plan_as_before
SELECT set_config('plan_cache_mode', %(plan_cache_mode)s, true),
       set_config('enable_seqscan', %(enable_seqscan)s, true)

-- name: pause_execution
-- Holds an active execution: no run of it starts until it is resumed.
WITH target AS (
    SELECT id, status FROM {schema}.executions WHERE id = %(id)s FOR UPDATE
), held AS (
    UPDATE {schema}.executions AS e SET paused_at = coalesce(e.paused_at, now())
      FROM target
     WHERE e.id = target.id AND target.status = ANY(%(sources)s)
    RETURNING e.id
)
SELECT target.status, EXISTS (SELECT 1 FROM held) FROM target

-- name: resume_execution
UPDATE {schema}.executions SET paused_at = NULL WHERE id = %(id)s
RETURNING status

-- name: pause_actor
INSERT INTO {schema}.paused_actors (actor_name) VALUES (%(actor)s)
ON CONFLICT (actor_name) DO NOTHING

-- name: resume_actor
DELETE FROM {schema}.paused_actors WHERE actor_name = %(actor)s

-- name: paused_actors
SELECT actor_name, paused_at FROM {schema}.paused_actors ORDER BY actor_name

-- name: wait_for_slot
-- An execution whose delivery found no slot of its key waits for one, in the
-- order of its first ask. Locks its row before the key's (see admit).
UPDATE {schema}.executions
   SET slot_waiting_since = coalesce(slot_waiting_since, statement_timestamp())
 WHERE id = %(id)s AND slot_key IS NOT NULL AND NOT slot_admitted
   AND status IN ('pending', 'sleeping', 'waiting', 'retrying', 'blocked')
RETURNING actor_name, slot_key, slot_scope

-- name: lock_concurrency_key
-- Serializes the admissions of one key, and keeps the limit the code declares
-- (NULL: the one recorded).
INSERT INTO {schema}.concurrency_keys AS k (actor_name, key, max)
VALUES (%(actor)s, %(key)s, coalesce(%(max)s, 1))
ON CONFLICT (actor_name, key) DO UPDATE SET max = coalesce(%(max)s, k.max)
RETURNING max

-- name: admit
-- Admits a key's waiters while it has room, by priority and then in order of
-- asking. A statement of its own after lock_concurrency_key, so it counts the
-- admissions committed by the lock's previous holder. Only active executions
-- hold slots: one that ends gives its slot back in the transaction that ends
-- it. Lock order is an execution's row, then its key's; rows busy elsewhere
-- are passed over here (their own transaction, or the sweeper, admits them).
WITH room AS (
    SELECT greatest(%(max)s - count(*), 0) AS n FROM {schema}.executions
     WHERE actor_name = %(actor)s AND slot_key = %(key)s AND slot_admitted
       AND status IN ('pending', 'running', 'sleeping', 'waiting', 'retrying',
                      'blocked')
), next AS (
    SELECT id FROM {schema}.executions
     WHERE actor_name = %(actor)s AND slot_key = %(key)s AND slot_waiting_since IS NOT NULL
       AND status IN ('pending', 'sleeping', 'waiting', 'retrying', 'blocked')
     ORDER BY priority, slot_waiting_since, id
     LIMIT (SELECT n FROM room)
       FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.executions AS e
   SET slot_admitted = true, slot_waiting_since = NULL, updated_at = now()
  FROM next
 WHERE e.id = next.id
RETURNING e.id, e.resume_message, e.wake_seq

-- name: keys_with_waiters
-- Keys whose executions have waited for a slot longer than %(grace_s)s: the
-- sweeper admits them if a release passed them over.
SELECT DISTINCT actor_name, slot_key, slot_scope FROM {schema}.executions
 WHERE slot_waiting_since < now() - %(grace_s)s * interval '1 second'
   AND status IN ('pending', 'sleeping', 'waiting', 'retrying', 'blocked')
 LIMIT 100

-- name: reserve_token
-- Reserves the next token of bucket (name, key), refilled at %(rate)s a
-- second up to %(burst)s; returns the seconds until it may be used (0: now).
-- The bucket may go into debt: each reservation waits its turn, in order.
INSERT INTO {schema}.rate_buckets AS b (name, key, tokens, refilled_at)
VALUES (%(name)s, %(key)s, %(burst)s - 1, statement_timestamp())
ON CONFLICT (name, key) DO UPDATE
   SET tokens = least(%(burst)s::float8,
                      b.tokens + %(rate)s * extract(epoch FROM statement_timestamp() - b.refilled_at))
                - 1,
       refilled_at = statement_timestamp()
RETURNING greatest(-b.tokens / %(rate)s,
                   extract(epoch FROM b.closed_until - statement_timestamp())::float8,
                   0)

-- name: close_bucket
-- zart.RetryAfter: no token of (name, key) is usable before %(seconds)s from now.
INSERT INTO {schema}.rate_buckets AS b (name, key, tokens, refilled_at, closed_until)
VALUES (%(name)s, %(key)s, %(burst)s, statement_timestamp(),
        statement_timestamp() + %(seconds)s * interval '1 second')
ON CONFLICT (name, key) DO UPDATE
   SET closed_until = greatest(b.closed_until, excluded.closed_until)

-- Safe deploys (versioning.py, replay_check.py): blocked executions and replay checks.

-- name: note_block
-- Where a run's replay diverged from the journal, and the fingerprint of its code
-- (%(code)s). Blocked again at the same entry of the same generation, it counts one
-- more block in a row and adds the code to those that tried; blocked elsewhere, it
-- starts afresh. Returns the count: the next try waits longer each time.
INSERT INTO {schema}.blocked_executions AS b
       (execution_id, generation, step_key, divergence, codes)
VALUES (%(id)s, %(generation)s, %(step)s, %(error)s, ARRAY[%(code)s::text])
ON CONFLICT (execution_id) DO UPDATE
   SET blocks = CASE WHEN b.generation = excluded.generation AND b.step_key = excluded.step_key
                     THEN b.blocks + 1 ELSE 1 END,
       codes = CASE WHEN b.generation <> excluded.generation OR b.step_key <> excluded.step_key
                    THEN excluded.codes
                    WHEN %(code)s = ANY (b.codes) THEN b.codes
                    ELSE b.codes || excluded.codes END,
       first_blocked_at = CASE WHEN b.generation = excluded.generation
                                AND b.step_key = excluded.step_key
                               THEN b.first_blocked_at ELSE now() END,
       generation = excluded.generation, step_key = excluded.step_key,
       divergence = excluded.divergence, blocked_at = now()
RETURNING blocks

-- name: blocked_to_wake
-- Blocked executions of the actors a worker declares (%(actors)s: actor name ->
-- fingerprint of its code) that a run of that code should try now: no code with
-- this fingerprint has tried them at the entry where they diverged; or their
-- wake-up is %(grace_s)s seconds overdue (a message lost on a broker other than
-- broker_pg, or dropped while the execution was paused). The fingerprint is
-- noted, so each version of the code wakes an execution once, however many workers
-- run it; a still-incompatible replay blocks again and waits out its backoff.
-- Paused executions and actors are left alone; a bounded batch per call.
WITH declared AS (
    SELECT key AS actor_name, value #>> '{{}}' AS code FROM jsonb_each(%(actors)s::jsonb)
), due AS (
    SELECT e.id, d.code
      FROM {schema}.executions AS e
      JOIN declared AS d ON d.actor_name = e.actor_name
      JOIN {schema}.blocked_executions AS b ON b.execution_id = e.id
     WHERE e.status = 'blocked' AND e.run_owner IS NULL AND e.paused_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM {schema}.paused_actors AS p
                        WHERE p.actor_name = e.actor_name)
       AND (NOT d.code = ANY (b.codes)
            OR (least(e.wake_at, e.deadline) < now() - %(grace_s)s * interval '1 second'
                AND e.updated_at < now() - %(grace_s)s * interval '1 second'))
     ORDER BY e.id
     LIMIT %(limit)s
       FOR UPDATE OF e SKIP LOCKED
), tried AS (
    UPDATE {schema}.blocked_executions AS b SET codes = b.codes || due.code
      FROM due
     WHERE b.execution_id = due.id AND NOT due.code = ANY (b.codes)
)
UPDATE {schema}.executions AS e SET wake_at = statement_timestamp(), updated_at = now()
  FROM due
 WHERE e.id = due.id
RETURNING e.id, e.wake_message, e.resume_message, e.wake_seq

-- name: unblock
-- Try a blocked execution's replay now (zart.unblock): its wake-up is due at once.
UPDATE {schema}.executions SET wake_at = statement_timestamp(), updated_at = now()
 WHERE id = %(id)s AND status = 'blocked'
RETURNING id, wake_message, resume_message, wake_seq

-- name: fail_blocked
-- blocked -> failed, by an operator (zart.fail), with the error given; its
-- pending wake-up is dropped by the caller. The end is notified to result waiters.
WITH target AS (
    SELECT id, status, wake_message, parent_id, actor_name, slot_key
      FROM {schema}.executions WHERE id = %(id)s FOR UPDATE
), done AS (
    UPDATE {schema}.executions AS e
       SET status = 'failed', error = %(error)s, waiting_for = NULL, wake_at = NULL,
           wake_message = NULL, finished_at = now(), updated_at = now()
      FROM target
     WHERE e.id = target.id AND target.status = ANY(%(sources)s)
    RETURNING e.id
)
SELECT target.status, target.wake_message, target.parent_id, target.actor_name, target.slot_key,
       (SELECT count(pg_notify(%(channel)s, id)) FROM done
         WHERE EXISTS (SELECT 1 FROM {schema}.listeners WHERE channel = %(channel)s))
  FROM target

-- name: get_block
-- Where and why a blocked execution diverged (get_execution, executions show).
SELECT step_key, divergence, blocks, codes, first_blocked_at, blocked_at
  FROM {schema}.blocked_executions WHERE execution_id = %(id)s

-- name: replay_candidates
-- The executions zart.replay_check replays against the code of this process:
-- those not ended, and those that ended in the last %(since_s)s seconds (each
-- branch read through its own partial index), newest first; optionally one actor's.
WITH candidates AS (
    SELECT id FROM {schema}.executions
     WHERE status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')
       AND (%(actor)s::text IS NULL OR actor_name = %(actor)s)
    UNION ALL
    SELECT id FROM {schema}.executions
     WHERE status IN ('completed', 'failed', 'cancelled', 'timed_out')
       AND finished_at >= now() - %(since_s)s * interval '1 second'
       AND (%(actor)s::text IS NULL OR actor_name = %(actor)s)
)
SELECT e.id, e.actor_name, e.status, e.input, e.resume_message, e.generation, e.runs,
       e.parent_id
  FROM candidates JOIN {schema}.executions AS e USING (id)
 ORDER BY e.created_at DESC, e.id
 LIMIT %(limit)s
