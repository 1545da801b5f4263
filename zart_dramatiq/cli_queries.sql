-- Queries of the zart-dramatiq command line. {schema} is bound to the configured schema.

-- name: queue_counts
-- Per queue: messages due now, due later, parked (event waits), leased to a
-- worker, and dead letters.
WITH live AS (
    SELECT queue_name,
           count(*) FILTER (WHERE state = 'queued' OR (state = 'delayed' AND eta <= now())) AS queued,
           count(*) FILTER (WHERE state = 'delayed' AND eta > now()) AS delayed,
           count(*) FILTER (WHERE state = 'parked') AS parked,
           count(*) FILTER (WHERE state = 'claimed') AS claimed
      FROM {schema}.messages
     GROUP BY queue_name
), dead AS (
    SELECT queue_name, count(*) AS dead_letters
      FROM {schema}.dead_letters
     GROUP BY queue_name
)
SELECT queue_name,
       coalesce(live.queued, 0), coalesce(live.delayed, 0), coalesce(live.parked, 0),
       coalesce(live.claimed, 0), coalesce(dead.dead_letters, 0)
  FROM live FULL JOIN dead USING (queue_name)
 ORDER BY queue_name

-- name: live_workers
-- Workers whose database session is still open, with the messages they hold.
SELECT w.id, w.hostname, w.pid, w.started_at,
       extract(epoch FROM now() - w.heartbeat_at)::float8,
       (SELECT count(*) FROM {schema}.messages AS m
         WHERE m.lease_owner = w.id AND m.state = 'claimed')
  FROM {schema}.workers AS w
 WHERE EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = w.backend_pid)
 ORDER BY w.started_at, w.id

-- name: execution_events
-- An execution's inbox in arrival order: consumed_by names the wait that took
-- an event, NULL while it is kept for a later wait.
SELECT name, key, sent_at, consumed_by
  FROM {schema}.events
 WHERE execution_id = %(id)s
 ORDER BY id
