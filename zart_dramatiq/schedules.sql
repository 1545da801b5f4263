-- Queries of durable schedules (zart_dramatiq.schedules and zart_dramatiq.scheduler).
-- {schema} is bound to the configured schema; %(channel)s is the schedules' NOTIFY
-- channel, which wakes the schedulers of every worker. Every query that returns
-- schedules returns these columns, in this order (schedules.Schedule):
-- name, actor_name, cron, every_s, tz, overlap, catchup, catchup_window_s, args, kwargs,
-- source, next_fire_at, last_tick, last_execution_id, buffered_tick, last_error,
-- paused_at, ticks_started, ticks_missed, created_at, updated_at.

-- name: db_now
SELECT now()

-- name: upsert_schedule
-- Creates the schedule, or changes its definition. Its next tick, computed by the
-- caller from the database's now(), is kept unless the timing (cron, every, tz)
-- changed: a worker that boots with the same definition keeps the ticks missed
-- meanwhile, for catch-up. Nothing is written, or notified, when nothing changed.
WITH upserted AS (
    INSERT INTO {schema}.schedules AS s
           (name, actor_name, cron, every_s, tz, overlap, catchup, catchup_window_s,
            args, kwargs, source, next_fire_at)
    VALUES (%(name)s, %(actor_name)s, %(cron)s, %(every_s)s, %(tz)s, %(overlap)s,
            %(catchup)s, %(catchup_window_s)s, %(args)s, %(kwargs)s, %(source)s,
            %(next_fire_at)s)
    ON CONFLICT (name) DO UPDATE
       SET actor_name = excluded.actor_name, cron = excluded.cron,
           every_s = excluded.every_s, tz = excluded.tz, overlap = excluded.overlap,
           catchup = excluded.catchup, catchup_window_s = excluded.catchup_window_s,
           args = excluded.args, kwargs = excluded.kwargs, source = excluded.source,
           next_fire_at = CASE
               WHEN (s.cron, s.every_s, s.tz)
                    IS DISTINCT FROM (excluded.cron, excluded.every_s, excluded.tz)
               THEN excluded.next_fire_at
               ELSE s.next_fire_at END,
           updated_at = now()
     WHERE (s.actor_name, s.cron, s.every_s, s.tz, s.overlap, s.catchup,
            s.catchup_window_s, s.args, s.kwargs, s.source)
           IS DISTINCT FROM
           (excluded.actor_name, excluded.cron, excluded.every_s, excluded.tz,
            excluded.overlap, excluded.catchup, excluded.catchup_window_s, excluded.args,
            excluded.kwargs, excluded.source)
    RETURNING s.name
)
SELECT count(pg_notify(%(channel)s, name)) FROM upserted

-- name: bound_idle
-- A scheduler stopped (SIGSTOP) inside its claim would hold the rows it locked for as
-- long as it stays stopped: the server ends such a session instead, rolling it back.
SET LOCAL idle_in_transaction_session_timeout = '30s'

-- name: next_due
-- For a scheduler's sleep: seconds until the earliest tick of a schedule it can fire
-- (0 or less: due now), NULL if none; and whether a buffered start is ready.
SELECT (SELECT extract(epoch FROM min(s.next_fire_at) - clock_timestamp())::float8
          FROM {schema}.schedules AS s
         WHERE s.paused_at IS NULL AND s.actor_name = ANY(%(actors)s)),
       EXISTS (SELECT 1
                 FROM {schema}.schedules AS s
                WHERE s.buffered_tick IS NOT NULL AND s.paused_at IS NULL
                  AND s.actor_name = ANY(%(actors)s)
                  AND NOT EXISTS (SELECT 1 FROM {schema}.executions AS e
                                   WHERE e.id = s.last_execution_id
                                     AND e.status = ANY(%(active)s)))

-- name: claim_due
-- The schedules due now (or whose buffered start is ready) of the actors this worker
-- declares, locked for this transaction; those another scheduler holds are skipped.
-- With the status of the execution started last, and the database's now(). The
-- conditions are repeated on the locked row: one that another scheduler changed while
-- this statement waited to lock it is judged as it is now.
SELECT s.name, s.actor_name, s.cron, s.every_s, s.tz, s.overlap, s.catchup,
       s.catchup_window_s, s.args, s.kwargs, s.next_fire_at, s.last_execution_id,
       s.buffered_tick,
       (SELECT e.status FROM {schema}.executions AS e WHERE e.id = s.last_execution_id),
       now()
  FROM {schema}.schedules AS s
 WHERE s.name IN (SELECT d.name
                    FROM {schema}.schedules AS d
                   WHERE d.next_fire_at <= now() AND d.paused_at IS NULL
                     AND d.actor_name = ANY(%(actors)s)
                   UNION ALL
                  SELECT b.name
                    FROM {schema}.schedules AS b
                   WHERE b.buffered_tick IS NOT NULL AND b.paused_at IS NULL
                     AND b.actor_name = ANY(%(actors)s))
   AND s.paused_at IS NULL
   AND (s.next_fire_at <= now()
        OR (s.buffered_tick IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM {schema}.executions AS e
                             WHERE e.id = s.last_execution_id
                               AND e.status = ANY(%(active)s))))
 ORDER BY s.next_fire_at NULLS LAST
 LIMIT %(limit)s
   FOR UPDATE OF s SKIP LOCKED

-- name: advance
-- What a claim did with a schedule: its next tick, the execution started last, the
-- buffered start, and the ticks it started and missed.
UPDATE {schema}.schedules
   SET next_fire_at = %(next_fire_at)s,
       last_tick = coalesce(%(last_tick)s, last_tick),
       last_execution_id = %(last_execution_id)s,
       buffered_tick = %(buffered_tick)s,
       last_error = CASE WHEN %(started)s > 0 THEN NULL ELSE last_error END,
       ticks_started = ticks_started + %(started)s,
       ticks_missed = ticks_missed + %(missed)s,
       updated_at = now()
 WHERE name = %(name)s

-- name: start_failed
-- A tick's start failed for want of a usable input or actor: its ticks are passed over
-- (counted missed) and the error kept for operators.
UPDATE {schema}.schedules
   SET next_fire_at = %(next_fire_at)s,
       last_tick = coalesce(%(last_tick)s, last_tick),
       buffered_tick = NULL,
       last_error = %(error)s,
       ticks_missed = ticks_missed + %(missed)s,
       updated_at = now()
 WHERE name = %(name)s

-- name: get_schedule
SELECT name, actor_name, cron, every_s, tz, overlap, catchup, catchup_window_s, args, kwargs,
       source, next_fire_at, last_tick, last_execution_id, buffered_tick, last_error,
       paused_at, ticks_started, ticks_missed, created_at, updated_at
  FROM {schema}.schedules
 WHERE name = %(name)s

-- name: lock_schedule
-- For a trigger or a resume: the schedule, locked, and the database's now().
SELECT name, actor_name, cron, every_s, tz, overlap, catchup, catchup_window_s, args, kwargs,
       source, next_fire_at, last_tick, last_execution_id, buffered_tick, last_error,
       paused_at, ticks_started, ticks_missed, created_at, updated_at, now()
  FROM {schema}.schedules
 WHERE name = %(name)s
   FOR UPDATE

-- name: list_schedules
SELECT name, actor_name, cron, every_s, tz, overlap, catchup, catchup_window_s, args, kwargs,
       source, next_fire_at, last_tick, last_execution_id, buffered_tick, last_error,
       paused_at, ticks_started, ticks_missed, created_at, updated_at
  FROM {schema}.schedules
 ORDER BY name

-- name: pause_schedule
-- Pausing twice keeps the first time.
UPDATE {schema}.schedules
   SET paused_at = coalesce(paused_at, now()), updated_at = now()
 WHERE name = %(name)s
RETURNING paused_at

-- name: resume_schedule
-- From the next tick on: the ticks of the pause are not caught up.
WITH resumed AS (
    UPDATE {schema}.schedules
       SET paused_at = NULL, next_fire_at = %(next_fire_at)s, updated_at = now()
     WHERE name = %(name)s AND paused_at IS NOT NULL
    RETURNING name
)
SELECT count(pg_notify(%(channel)s, name)) FROM resumed

-- name: record_trigger
-- A manual start becomes the execution the overlap policy looks at.
UPDATE {schema}.schedules
   SET last_execution_id = %(execution_id)s, updated_at = now()
 WHERE name = %(name)s

-- name: delete_schedule
-- Its executions stay; only the schedule goes.
DELETE FROM {schema}.schedules WHERE name = %(name)s RETURNING name
