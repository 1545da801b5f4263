-- Sessions waiting on a channel whose senders notify only when someone waits
-- (zart's end of an execution: a NOTIFY wakes every LISTENing session of the
-- database, so it is sent only while someone waits for results). A sender's
-- check is one probe of this table, where it used to scan pg_stat_activity.
-- Unlogged: it describes live sessions, which a crash ends anyway.
CREATE UNLOGGED TABLE listeners (
    channel       text        NOT NULL,
    pid           integer     NOT NULL,
    backend_start timestamptz NOT NULL,
    PRIMARY KEY (channel, pid)
);
-- notify_execution_ended stays for workers of the previous release: waiting
-- sessions still take the waiter's application_name as well.
