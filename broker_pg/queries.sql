-- Queries of the PostgreSQL broker. {schema} is bound to the configured schema.

-- name: enqueue
-- One message; the NOTIFY is sent on commit, so a rolled-back enqueue wakes nobody.
-- Due times use statement_timestamp(): inside a caller's long transaction, now()
-- is that transaction's start and would make delays come out early. A message
-- due later is 'delayed': out of the claim's index until it comes due.
WITH inserted AS (
    INSERT INTO {schema}.messages (queue_name, message_id, actor_name, state, priority, eta, payload)
    VALUES (%(queue_name)s, %(message_id)s, %(actor_name)s,
            CASE WHEN %(state)s = 'queued' AND %(delay_ms)s > 0 THEN 'delayed' ELSE %(state)s END,
            %(priority)s, statement_timestamp() + %(delay_ms)s * interval '1 millisecond',
            %(payload)s)
    RETURNING id
)
SELECT id, pg_notify(%(channel)s, %(queue_name)s) FROM inserted

-- name: enqueue_many
WITH inserted AS (
    INSERT INTO {schema}.messages (queue_name, message_id, actor_name, state, priority, eta, payload)
    SELECT queue_name, message_id, actor_name, CASE WHEN delay_ms > 0 THEN 'delayed' ELSE 'queued' END,
           priority, statement_timestamp() + delay_ms * interval '1 millisecond', payload
      FROM unnest(%(queue_names)s::text[], %(message_ids)s::text[], %(actor_names)s::text[],
                  %(priorities)s::int[], %(delays_ms)s::bigint[], %(payloads)s::bytea[])
           AS batch (queue_name, message_id, actor_name, priority, delay_ms, payload)
    RETURNING queue_name
)
SELECT pg_notify(%(channel)s, queue_name) FROM (SELECT DISTINCT queue_name FROM inserted) AS queues

-- name: settle_and_claim
-- Settles the leases this process let go of since the last call (acks delete,
-- hand-backs return the row to its queue at once: not a failed delivery), then leases up to %(limit)s due
-- messages to %(worker_id)s under %(claim_token)s. A lease is (id, deliveries,
-- lease_owner): a stale settlement matches nothing. Nothing is claimed unless
-- the worker row exists: a worker presumed lost must not claim under its old
-- identity. (No row lock: rows claimed in the instant of a reap are recovered
-- with the lost worker's others, and its settlements of them are refused.)
-- Due rows are the queue's ready rows and its delayed rows whose time has come,
-- each read from its own index, so neither scan passes rows due later. Rows are
-- written by key (id = ANY(...)): a plan made without the parameters' values
-- would otherwise join them by scanning the table.
-- A last row (id NULL) tells whether the worker row exists and, when fewer
-- than %(limit)s were due, how many seconds until the queue's next delayed message.
WITH acked AS (
    DELETE FROM {schema}.messages AS m
     USING unnest(%(ack_ids)s::bigint[], %(ack_deliveries)s::int[], %(ack_owners)s::uuid[])
           AS a (id, deliveries, owner)
     WHERE m.id = ANY(%(ack_ids)s::bigint[])
       AND m.id = a.id AND m.deliveries = a.deliveries AND m.lease_owner = a.owner
), handed_back AS (
    UPDATE {schema}.messages AS m
       SET state = 'queued', lease_owner = NULL, claimed_at = NULL, claim_token = NULL,
           deliveries = m.deliveries - 1
      FROM unnest(%(back_ids)s::bigint[], %(back_deliveries)s::int[], %(back_owners)s::uuid[])
           AS b (id, deliveries, owner)
     WHERE m.id = ANY(%(back_ids)s::bigint[])
       AND m.id = b.id AND m.deliveries = b.deliveries AND m.lease_owner = b.owner
       -- (Only a claimed row has a lease_owner; saying state = 'claimed' here
       -- would invite a scan of every claimed row by messages_claimed.)
    RETURNING m.queue_name
), me AS (
    SELECT id FROM {schema}.workers WHERE id = %(worker_id)s
), ready AS (
    SELECT id, priority, eta FROM {schema}.messages
     WHERE queue_name = %(queue_name)s AND state = 'queued' AND eta <= now()
       AND EXISTS (SELECT 1 FROM me)
     ORDER BY priority, eta, id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), came_due AS (
    SELECT id, priority, eta FROM {schema}.messages
     WHERE queue_name = %(queue_name)s AND state = 'delayed' AND eta <= now()
       AND EXISTS (SELECT 1 FROM me)
     ORDER BY eta
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM (SELECT * FROM ready UNION ALL SELECT * FROM came_due) AS candidates
     ORDER BY priority, eta, id
     LIMIT %(limit)s
), claimed AS (
    UPDATE {schema}.messages AS m
       SET state = 'claimed', lease_owner = %(worker_id)s, deliveries = m.deliveries + 1,
           claimed_at = now(), claim_token = %(claim_token)s
     WHERE m.id = ANY(ARRAY(SELECT id FROM due))
    RETURNING m.id, m.deliveries, m.priority, m.eta, m.payload
)
SELECT id, deliveries, priority, eta, payload, NULL::float8, NULL::bool FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL,
       (SELECT extract(epoch FROM min(eta) - now())::float8
          FROM {schema}.messages
         WHERE queue_name = %(queue_name)s AND state = 'delayed' AND eta > now()
           AND (SELECT count(*) FROM claimed) < %(limit)s),
       EXISTS (SELECT 1 FROM me)
  FROM (SELECT count(pg_notify(%(channel)s, q))
          FROM (SELECT DISTINCT queue_name AS q FROM handed_back) AS queues) AS notified

-- name: return_lost_claim
-- A claim whose reply never arrived: its rows are leased to this live worker
-- but were never handed out. They go back to the queue, delivery not counted.
WITH returned AS (
    UPDATE {schema}.messages
       SET state = 'queued', lease_owner = NULL, claimed_at = NULL, claim_token = NULL,
           deliveries = deliveries - 1
     WHERE lease_owner = %(worker_id)s AND state = 'claimed' AND claim_token = %(claim_token)s
    RETURNING queue_name
)
SELECT pg_notify(%(channel)s, queue_name) FROM (SELECT DISTINCT queue_name FROM returned) AS queues

-- name: ack
DELETE FROM {schema}.messages
 WHERE id = %(id)s AND deliveries = %(deliveries)s AND lease_owner = %(owner)s

-- name: dead_letter
WITH gone AS (
    DELETE FROM {schema}.messages
     WHERE id = %(id)s AND deliveries = %(deliveries)s AND lease_owner = %(owner)s
    RETURNING id, queue_name, message_id, actor_name, priority, deliveries, enqueued_at
)
INSERT INTO {schema}.dead_letters
       (id, queue_name, message_id, actor_name, priority, payload, deliveries, enqueued_at, error)
SELECT id, queue_name, message_id, actor_name, priority, %(payload)s, deliveries, enqueued_at, %(error)s
  FROM gone

-- name: dead_letter_undecodable
WITH gone AS (
    DELETE FROM {schema}.messages
     WHERE id = %(id)s AND deliveries = %(deliveries)s AND lease_owner = %(owner)s
    RETURNING *
)
INSERT INTO {schema}.dead_letters
       (id, queue_name, message_id, actor_name, priority, payload, deliveries, enqueued_at, error)
SELECT id, queue_name, message_id, actor_name, priority, payload, deliveries, enqueued_at, %(error)s
  FROM gone

-- name: count_pending
SELECT count(*) FROM {schema}.messages
 WHERE queue_name = %(queue_name)s AND state IN ('queued', 'delayed', 'claimed')

-- name: flush
DELETE FROM {schema}.messages WHERE queue_name = ANY(%(queue_names)s)

-- name: flush_dead_letters
DELETE FROM {schema}.dead_letters WHERE queue_name = ANY(%(queue_names)s)

-- name: register_worker
-- A new identity: a worker whose row was reaped never comes back under its old id.
INSERT INTO {schema}.workers (id, hostname, pid, backend_pid, lease_timeout, server_started_at)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, pg_backend_pid(), %(lease_timeout)s,
        pg_postmaster_start_time())

-- name: reconnect_worker
-- The same worker on a new session (a reconnect). No row: it was presumed lost.
UPDATE {schema}.workers
   SET backend_pid = pg_backend_pid(), server_started_at = pg_postmaster_start_time(),
       heartbeat_at = now()
 WHERE id = %(worker_id)s
RETURNING id

-- name: heartbeat
UPDATE {schema}.workers SET heartbeat_at = now() WHERE id = %(worker_id)s RETURNING id

-- name: unregister_worker
DELETE FROM {schema}.workers WHERE id = %(worker_id)s

-- name: silent_workers_on_host
-- Other workers of this host whose session has ended: the reaper asks the
-- operating system whether their process still exists.
SELECT w.id, w.pid FROM {schema}.workers AS w
 WHERE w.hostname = %(hostname)s AND w.id <> %(worker_id)s
   AND w.server_started_at = pg_postmaster_start_time()
   AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = w.backend_pid)

-- name: reap_lost_workers
-- A worker is lost once its heartbeat is older than its own lease. Time the
-- server itself was down does not count: after a restart every worker has a
-- whole lease to come back. A session that ended shortens the wait to
-- %(grace)s seconds, but only within the same server incarnation (a restart
-- ends every session) and only once the worker failed to reconnect meanwhile;
-- and to nothing for a worker of this host whose process is gone (%(dead)s).
DELETE FROM {schema}.workers AS w
 WHERE greatest(w.heartbeat_at, pg_postmaster_start_time())
           < now() - w.lease_timeout * interval '1 second'
    OR (w.server_started_at = pg_postmaster_start_time()
        AND (w.heartbeat_at < now() - %(grace)s * interval '1 second'
             OR w.id = ANY(%(dead)s::uuid[]))
        AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = w.backend_pid))
RETURNING w.id

-- name: recover_lost_messages
-- Claimed messages whose worker row is gone go back to their queues, or to dead
-- letters once they have been delivered max_deliveries times.
WITH orphans AS (
    SELECT m.id, m.deliveries FROM {schema}.messages AS m
     WHERE m.state = 'claimed'
       AND NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = m.lease_owner)
       FOR UPDATE SKIP LOCKED
), poisoned AS (
    DELETE FROM {schema}.messages AS m USING orphans
     WHERE m.id = orphans.id AND orphans.deliveries >= %(max_deliveries)s
    RETURNING m.*
), buried AS (
    INSERT INTO {schema}.dead_letters
           (id, queue_name, message_id, actor_name, priority, payload, deliveries, enqueued_at, error)
    SELECT id, queue_name, message_id, actor_name, priority, payload, deliveries, enqueued_at,
           format('its worker was lost on each of %%s deliveries', deliveries)
      FROM poisoned
), returned AS (
    UPDATE {schema}.messages AS m
       SET state = 'queued', lease_owner = NULL, claimed_at = NULL, claim_token = NULL
      FROM orphans
     WHERE m.id = orphans.id AND orphans.deliveries < %(max_deliveries)s
    RETURNING m.queue_name
)
SELECT queue_name, pg_notify(%(channel)s, queue_name)
  FROM (SELECT DISTINCT queue_name FROM returned) AS queues

-- name: purge_expired
-- One retention batch: up to %(limit)s dead letters older than %(dead_letter_ttl)s
-- seconds (none when it is NULL: kept for ever) and up to %(limit)s expired
-- results, oldest first, and the listeners registrations of ended sessions;
-- returns how many of each went. Rows locked (by a requeue, a new result) are
-- skipped: a DELETE that waited for one would not check its age again.
WITH dead AS (
    DELETE FROM {schema}.dead_letters
     WHERE id IN (SELECT id FROM {schema}.dead_letters
                   WHERE dead_at < now() - %(dead_letter_ttl)s::float8 * interval '1 second'
                   ORDER BY dead_at
                   LIMIT %(limit)s
                     FOR UPDATE SKIP LOCKED)
    RETURNING 1
), results AS (
    DELETE FROM {schema}.results
     WHERE key IN (SELECT key FROM {schema}.results
                    WHERE expires_at < now()
                    ORDER BY expires_at
                    LIMIT %(limit)s
                      FOR UPDATE SKIP LOCKED)
    RETURNING 1
), lost_listeners AS (
    -- Registrations of sessions that ended without taking them back.
    DELETE FROM {schema}.listeners AS l
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a
                        WHERE a.pid = l.pid AND a.backend_start = l.backend_start)
    RETURNING 1
)
SELECT (SELECT count(*) FROM dead), (SELECT count(*) FROM results),
       (SELECT count(*) FROM lost_listeners)

-- name: list_dead_letters
SELECT id, queue_name, message_id, actor_name, deliveries, error, dead_at, payload
  FROM {schema}.dead_letters
 WHERE (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
 ORDER BY dead_at, id
 LIMIT %(limit)s

-- name: requeue_dead_letters
WITH revived AS (
    DELETE FROM {schema}.dead_letters
     WHERE (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))
       AND (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
    RETURNING queue_name, message_id, actor_name, priority, payload
), inserted AS (
    INSERT INTO {schema}.messages (queue_name, message_id, actor_name, priority, payload)
    SELECT queue_name, message_id, actor_name, priority, payload FROM revived
    RETURNING queue_name
)
SELECT count(*), array_agg(DISTINCT queue_name),
       (SELECT count(pg_notify(%(channel)s, q))
          FROM (SELECT DISTINCT queue_name AS q FROM inserted) AS queues)
  FROM inserted

-- name: purge_dead_letters
WITH purged AS (
    DELETE FROM {schema}.dead_letters
     WHERE (%(queue_name)s::text IS NULL OR queue_name = %(queue_name)s)
       AND (%(older_than)s::float8 IS NULL
            OR dead_at < now() - %(older_than)s * interval '1 second')
    RETURNING queue_name
)
SELECT count(*), array_agg(DISTINCT queue_name) FROM purged

-- name: store_result
WITH stored AS (
    INSERT INTO {schema}.results (key, value, expires_at)
    VALUES (%(key)s, %(value)s, statement_timestamp() + %(ttl_ms)s * interval '1 millisecond')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
    RETURNING key
)
SELECT pg_notify(%(channel)s, key) FROM stored

-- name: get_result
SELECT value FROM {schema}.results WHERE key = %(key)s AND expires_at > now()

-- name: wake
WITH woken AS (
    UPDATE {schema}.messages SET state = 'queued', eta = statement_timestamp()
     WHERE id = %(id)s AND state IN ('queued', 'delayed', 'parked')
    RETURNING queue_name
)
SELECT pg_notify(%(channel)s, queue_name) FROM woken

-- name: discard
DELETE FROM {schema}.messages WHERE id = %(id)s AND state IN ('queued', 'delayed', 'parked')

-- name: dead_messages
-- Dead rows left by settled (or flushed) messages, as the statistics collector counts them.
SELECT n_dead_tup FROM pg_stat_user_tables
 WHERE schemaname = %(schema)s AND relname = 'messages'

-- name: vacuum_messages
-- SKIP_LOCKED: if another worker is vacuuming already, that is enough. ANALYZE:
-- where autovacuum is off, the planner would otherwise keep the statistics of
-- a table that has since filled or drained.
VACUUM (ANALYZE, SKIP_LOCKED) {schema}.messages

-- name: take_retention_lock
-- Whether this transaction may run a batch of retention job %(job)s of schema
-- %(schema)s: one worker at a time, and the lock ends with the transaction, or
-- with its session if the worker dies mid-batch.
SELECT pg_try_advisory_xact_lock(hashtextextended(%(schema)s::text || '.retention.' || %(job)s::text, 0))

-- name: register_listener
-- This session waits on %(channels)s, whose senders notify only when someone
-- waits; the row goes with the session (unregister_listener, or purge_expired
-- once the session is gone).
INSERT INTO {schema}.listeners (channel, pid, backend_start)
SELECT channel, pg_backend_pid(),
       (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
  FROM unnest(%(channels)s::text[]) AS channel
ON CONFLICT (channel, pid) DO UPDATE SET backend_start = excluded.backend_start

-- name: unregister_listener
DELETE FROM {schema}.listeners WHERE channel = ANY(%(channels)s) AND pid = pg_backend_pid()

-- name: queue_stats
-- Per queue: messages due now, due later, parked, leased, dead letters, and how
-- long the oldest message due now has waited. (Operators' view: it reads every
-- message once.)
WITH live AS (
    SELECT queue_name,
           count(*) FILTER (WHERE state = 'queued' OR (state = 'delayed' AND eta <= now())) AS queued,
           count(*) FILTER (WHERE state = 'delayed' AND eta > now()) AS delayed,
           count(*) FILTER (WHERE state = 'parked') AS parked,
           count(*) FILTER (WHERE state = 'claimed') AS claimed,
           min(eta) FILTER (WHERE state IN ('queued', 'delayed') AND eta <= now()) AS oldest_due
      FROM {schema}.messages
     GROUP BY queue_name
), dead AS (
    SELECT queue_name, count(*) AS dead_letters
      FROM {schema}.dead_letters
     GROUP BY queue_name
)
SELECT queue_name,
       coalesce(live.queued, 0), coalesce(live.delayed, 0), coalesce(live.parked, 0),
       coalesce(live.claimed, 0), coalesce(dead.dead_letters, 0),
       extract(epoch FROM now() - live.oldest_due)::float8
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
