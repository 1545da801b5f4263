-- Parked work costs nothing: a message due later is 'delayed', in an index of its
-- own, so the claim's index holds only due rows and the next-due lookup is one
-- index probe however many executions sleep or wait.

-- (The 0001 column CHECK was named by PostgreSQL; look it up rather than assume.)
DO $$
DECLARE
    name text;
BEGIN
    SELECT conname INTO name FROM pg_constraint
     WHERE conrelid = 'messages'::regclass AND contype = 'c'
       AND pg_get_constraintdef(oid) LIKE '%state%';
    EXECUTE format('ALTER TABLE messages DROP CONSTRAINT %I', name);
END
$$;
ALTER TABLE messages ADD CONSTRAINT messages_state
    CHECK (state IN ('queued', 'delayed', 'parked', 'claimed'));

UPDATE messages SET state = 'delayed' WHERE state = 'queued' AND eta > now();

-- Due rows of one queue come from messages_ready; delayed rows that came due
-- are read from here in due-time order until claimed.
CREATE INDEX messages_delayed ON messages (queue_name, eta) WHERE state = 'delayed';
