-- Durable schedules (zart_dramatiq.schedules): a cron expression or an interval whose
-- ticks each start one durable execution, schedule:<name>:<tick>. Expand only: a new
-- table, which workers of the previous release never read.

CREATE TABLE schedules (
    name              text        PRIMARY KEY,
    -- The durable actor each tick starts; only workers that declare it fire the schedule.
    actor_name        text        NOT NULL,
    -- Exactly one of: a cron expression (croniter's syntax) read on the wall clock of
    -- tz, or an interval in whole seconds, aligned on the Unix epoch.
    cron              text,
    every_s           bigint      CHECK (every_s > 0),
    tz                text        NOT NULL DEFAULT 'UTC',
    overlap           text        NOT NULL
                      CHECK (overlap IN ('skip', 'buffer_one', 'allow', 'cancel_previous')),
    catchup           text        NOT NULL CHECK (catchup IN ('none', 'latest', 'all')),
    -- How late a tick may still start (for catchup 'none': the fixed grace).
    catchup_window_s  double precision NOT NULL CHECK (catchup_window_s > 0),
    -- The input of every tick's execution, as JSON.
    args              jsonb       NOT NULL DEFAULT '[]',
    kwargs            jsonb       NOT NULL DEFAULT '{}',
    -- 'code': a @zart.schedule, upserted as workers boot; 'runtime': zart.schedules.create.
    source            text        NOT NULL CHECK (source IN ('code', 'runtime')),
    -- The earliest tick not considered yet: the schedule is due once now() reaches it.
    -- NULL once the expression has no later tick.
    next_fire_at      timestamptz,
    -- The latest tick considered (started or passed over).
    last_tick         timestamptz,
    -- The execution started last (a tick's or a trigger's): the one overlap looks at.
    last_execution_id text,
    -- overlap 'buffer_one': the tick that starts once that execution has ended.
    buffered_tick     timestamptz,
    -- Why the latest start failed (its input no longer fits the actor, say); NULL after a start.
    last_error        text,
    paused_at         timestamptz,
    ticks_started     bigint      NOT NULL DEFAULT 0,
    ticks_missed      bigint      NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (every_s IS NULL))
);

-- The schedulers' claim and their sleep until the next tick: the earliest due first.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused_at IS NULL;
-- Buffered starts, looked at until the execution they wait for has ended.
CREATE INDEX schedules_buffered ON schedules (name)
    WHERE buffered_tick IS NOT NULL AND paused_at IS NULL;
