-- Flow control: concurrency keys, rate limits and priorities. Expand only: new
-- nullable or defaulted columns and new tables. A worker of the previous release
-- ignores them: it runs a limited actor's executions without taking slots, so
-- roll the new release out before relying on a new limit.

-- The key an execution counts against (zart.Limit), fixed at its start; NULL
-- for an actor without a limit.
ALTER TABLE executions ADD COLUMN slot_key text;
-- 'open': the slot is held from admission to the end; 'running': only while a
-- run goes (given back at each suspension).
ALTER TABLE executions ADD COLUMN slot_scope text CHECK (slot_scope IN ('open', 'running'));
-- Holds a slot of its key. Only active executions count, so an execution that
-- ends, however it ends, gives its slot back in that same transaction.
ALTER TABLE executions ADD COLUMN slot_admitted boolean NOT NULL DEFAULT false;
-- Since when it waits for a slot; admitted by priority, then in this order.
ALTER TABLE executions ADD COLUMN slot_waiting_since timestamptz;
-- Lower first, as Dramatiq's actor priority: admission order and claim order.
ALTER TABLE executions ADD COLUMN priority integer NOT NULL DEFAULT 0;

-- Waiters of a key, in admission order.
CREATE INDEX executions_slot_waiters ON executions
       (actor_name, slot_key, priority, slot_waiting_since, id)
 WHERE slot_waiting_since IS NOT NULL
   AND status IN ('pending', 'sleeping', 'waiting', 'retrying', 'blocked');
-- Holders of a key, counted under the key's lock: an ended one drops out.
CREATE INDEX executions_slot_holders ON executions (actor_name, slot_key)
 WHERE slot_admitted AND status IN ('pending', 'running', 'sleeping', 'waiting', 'retrying',
                                         'blocked');

-- One row per key in use: its lock serializes admissions, and it keeps the
-- limit the code last declared.
CREATE TABLE concurrency_keys (
    actor_name text    NOT NULL,
    key        text    NOT NULL,
    max        integer NOT NULL CHECK (max > 0),
    PRIMARY KEY (actor_name, key)
);

-- Token buckets of zart.RateLimit, one row per limit and key. A step takes a
-- token before it runs; zart.RetryAfter closes the key until a time.
CREATE TABLE rate_buckets (
    name         text             NOT NULL,
    key          text             NOT NULL,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz      NOT NULL,
    closed_until timestamptz,
    PRIMARY KEY (name, key)
);
