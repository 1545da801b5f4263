-- Queries of broker_pg.rate_limits (PostgresRateLimiterBackend), on the table
-- of migrations/0013_rate_limits.sql.
--
-- A row is its key's value until expires_at; a row past it is absent: it
-- counts as 0 and may be replaced. Every time is the server's
-- statement_timestamp(), one clock for all processes whatever their own.
--
-- Each write is one INSERT … ON CONFLICT … DO UPDATE. Its insert happens only
-- if no row has the key, and a row that conflicts, committed or not yet, is
-- locked and its latest version judged by the DO UPDATE's WHERE: concurrent
-- writes of one key take turns, each seeing the ones before it. A rejected
-- write returns no row, or a row it inserted already expired (a key without a
-- row still needs its insert attempted, to reach a conflicting row); such a
-- row is absent, and purged like any other.

-- name: add
-- The key with %(value)s for %(ttl_ms)s ms, unless a live row has it.
INSERT INTO {schema}.rate_limits AS r (key, value, expires_at)
VALUES (%(key)s, %(value)s,
        statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
 WHERE r.expires_at <= statement_timestamp()
RETURNING true

-- name: incr
-- The key's value plus %(amount)s, unless that passes %(maximum)s; the key
-- then lives %(ttl_ms)s ms from now.
INSERT INTO {schema}.rate_limits AS r (key, value, expires_at)
VALUES (%(key)s, %(amount)s,
        CASE WHEN %(amount)s::bigint <= %(maximum)s::bigint
             THEN statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond'
             ELSE '-infinity' END)
ON CONFLICT (key) DO UPDATE
   SET value = CASE WHEN r.expires_at > statement_timestamp() THEN r.value ELSE 0 END
               + %(amount)s::bigint,
       expires_at = statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond'
 WHERE CASE WHEN r.expires_at > statement_timestamp() THEN r.value ELSE 0 END
       + %(amount)s::bigint <= %(maximum)s::bigint
RETURNING r.expires_at > statement_timestamp()

-- name: decr
-- The key's value minus %(amount)s, unless that falls below %(minimum)s; the
-- key then lives %(ttl_ms)s ms from now.
INSERT INTO {schema}.rate_limits AS r (key, value, expires_at)
VALUES (%(key)s, -%(amount)s::bigint,
        CASE WHEN -%(amount)s::bigint >= %(minimum)s::bigint
             THEN statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond'
             ELSE '-infinity' END)
ON CONFLICT (key) DO UPDATE
   SET value = CASE WHEN r.expires_at > statement_timestamp() THEN r.value ELSE 0 END
               - %(amount)s::bigint,
       expires_at = statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond'
 WHERE CASE WHEN r.expires_at > statement_timestamp() THEN r.value ELSE 0 END
       - %(amount)s::bigint >= %(minimum)s::bigint
RETURNING r.expires_at > statement_timestamp()

-- name: lock_keys
-- Serialises incr_and_sum over overlapping key sets, to the end of the
-- transaction: one advisory lock per key, taken in the order of their ids, so
-- two transactions never wait for each other's (a hash collision only makes
-- two keys share a lock). The next statement of the transaction takes its
-- snapshot after them: it sees every earlier increment of these keys.
SELECT pg_advisory_xact_lock(id)
  FROM (SELECT DISTINCT hashtextextended(%(lock_prefix)s::text || key, 0) AS id
          FROM unnest(%(keys)s::text[]) AS key
         ORDER BY id) AS ids

-- name: incr_and_sum
-- The value of %(key)s plus %(amount)s, unless that passes %(maximum)s or
-- %(amount)s plus the sum of the live values of %(keys)s does; the key then
-- lives %(ttl_ms)s ms from now. Run after lock_keys, in its transaction: the
-- other keys' sum cannot change before the commit. The key's own value is
-- read from its locked latest version, as in incr.
WITH others AS (
    SELECT coalesce(sum(value), 0) AS total
      FROM {schema}.rate_limits
     WHERE key = ANY(%(keys)s::text[]) AND key <> %(key)s
       AND expires_at > statement_timestamp()
)
INSERT INTO {schema}.rate_limits AS r (key, value, expires_at)
SELECT %(key)s, %(amount)s,
       CASE WHEN %(amount)s::bigint <= %(maximum)s::bigint
                 AND others.total + %(amount)s::bigint <= %(maximum)s::bigint
            THEN statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond'
            ELSE '-infinity' END
  FROM others
ON CONFLICT (key) DO UPDATE
   SET value = CASE WHEN r.expires_at > statement_timestamp() THEN r.value ELSE 0 END
               + %(amount)s::bigint,
       expires_at = statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond'
 WHERE CASE WHEN r.expires_at > statement_timestamp() THEN r.value ELSE 0 END
       + %(amount)s::bigint <= %(maximum)s::bigint
   AND (SELECT total FROM others) + %(amount)s::bigint
       + CASE WHEN r.key = ANY(%(keys)s::text[]) AND r.expires_at > statement_timestamp()
              THEN r.value ELSE 0 END <= %(maximum)s::bigint
RETURNING r.expires_at > statement_timestamp()

-- name: notify
-- An event on the key, kept %(ttl_ms)s ms for waiters yet to look, and a
-- NOTIFY (payload: the key) for those already listening; both at commit.
WITH event AS (
    INSERT INTO {schema}.rate_limits AS r (key, value, expires_at)
    VALUES (%(key)s, 1, statement_timestamp() + %(ttl_ms)s::bigint * interval '1 millisecond')
    ON CONFLICT (key) DO UPDATE SET value = 1, expires_at = excluded.expires_at
    RETURNING key
)
SELECT pg_notify(%(channel)s, key) FROM event

-- name: notified
-- Whether the key had an event that has not expired.
SELECT true FROM {schema}.rate_limits
 WHERE key = %(key)s AND expires_at > statement_timestamp()

-- name: purge_expired
-- Deletes at most %(limit)s expired rows, oldest first; returns how many went.
-- Rows locked by a write are skipped: it is renewing them (or replacing them).
WITH purged AS (
    DELETE FROM {schema}.rate_limits
     WHERE key IN (SELECT key FROM {schema}.rate_limits
                    WHERE expires_at < statement_timestamp()
                    ORDER BY expires_at
                    LIMIT %(limit)s
                      FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT count(*) FROM purged
