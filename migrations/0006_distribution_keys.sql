-- Distribution keys: executions, steps and events can be spread over nodes by
-- execution id (Citus: distribute executions by id, steps and events by
-- execution_id, colocated). A distributed table's primary key and unique
-- constraints must contain its distribution column: executions (id), steps
-- (execution_id, step_key) and events' UNIQUE (execution_id, key) already do;
-- events' primary key was id alone.
-- id stays first, so consume_event, which updates the event it picked by id
-- alone, still finds it through the index (on a distributed table it would also
-- need the execution id in its WHERE to reach a single node).
ALTER TABLE events
    DROP CONSTRAINT events_pkey,
    ADD PRIMARY KEY (id, execution_id);
