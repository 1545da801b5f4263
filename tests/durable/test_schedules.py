"""Durable schedules: each tick started once across workers, DST, catch-up, overlap, operations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dramatiq
import psycopg
import pytest
from freezegun import freeze_time
from prometheus_client import REGISTRY

import zart_dramatiq as zart
from tests.apps import schedule_app
from tests.support import Processes, rows, scalar, wait_until
from zart_dramatiq import metrics
from zart_dramatiq.fire_times import ON_TIME, Timing, plan
from zart_dramatiq.middleware import middleware_for
from zart_dramatiq.scheduler import Scheduler
from zart_dramatiq.schedules import tick_execution_id

SCHEDULE_APP = "tests.apps.schedule_app"
BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def tick_of(execution_id: str) -> datetime:
    """The tick an execution id names: ``schedule:<name>:<tick>``, the tick 25 characters."""
    return datetime.fromisoformat(execution_id[-25:])


def executions(db: psycopg.Connection, schema: str, name: str) -> list[tuple[str, str]]:
    """(id, status) of the executions of schedule ``name``, by id (by tick)."""
    return [
        (str(i), str(s))
        for i, s in rows(
            db,
            schema,
            'SELECT id, status FROM {s}.executions WHERE id LIKE %s ORDER BY id COLLATE "C"',
            f"schedule:{name}:%",
        )
    ]


def ids(db: psycopg.Connection, schema: str, name: str) -> list[str]:
    return [i for i, _ in executions(db, schema, name)]


def db_now(db: psycopg.Connection) -> datetime:
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def missed(name: str, reason: str) -> float:
    metrics.prepare()
    value = REGISTRY.get_sample_value(
        "zart_schedule_ticks_missed_total", {"schedule": name, "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def scheduler(broker) -> Iterator[Scheduler]:
    """This process's scheduler on the test broker, looping (no worker: nothing runs the
    executions, which stay pending: active, for the overlap policies)."""
    running = middleware_for(broker).scheduler
    running.start()
    yield running
    running.stop()


# -- Exactly once, across real worker processes -------------------------------------------


def test_id_format_is_the_tick_in_utc_to_the_second() -> None:
    berlin = datetime(2026, 11, 29, 13, 0, tzinfo=Timing(cron="* * * * *", tz=BERLIN).zone)
    assert tick_execution_id("nightly", berlin) == "schedule:nightly:2026-11-29T12:00:00+00:00"
    assert tick_of("schedule:a:b:2026-11-29T12:00:00+00:00") == utc(2026, 11, 29, 12)


def test_three_workers_start_each_tick_once_through_a_sigkill(
    processes: Processes, broker, db, schema
) -> None:
    schedule_app.create_tables(db, schema)
    workers = [processes.dramatiq_worker(SCHEDULE_APP, threads=2) for _ in range(3)]
    name = schedule_app.SCHEDULE

    def started(at_least: int) -> bool:
        return len(ids(db, schema, name)) >= at_least

    wait_until(lambda: started(3), timeout=30, message=lambda: processes.output())
    processes.kill(workers[0])  # mid-run: whatever it was doing
    seen = len(ids(db, schema, name))
    wait_until(lambda: started(seen + 4), timeout=30, message="ticks after the kill")
    zart.schedules.pause(name)  # once it returns, no tick starts any more
    final = executions(db, schema, name)
    wait_until(
        lambda: {s for _, s in executions(db, schema, name)} == {"completed"},
        timeout=60,
        message=lambda: f"every tick's execution to complete: {executions(db, schema, name)}",
    )

    ticks = [tick_of(i) for i, _ in final]
    assert [i for i, _ in final] == [tick_execution_id(name, t) for t in ticks]  # the exact ids
    # One execution per tick, and no tick missing between the first and the last.
    assert ticks == [ticks[0] + timedelta(seconds=k) for k in range(len(ticks))]
    assert ids(db, schema, name) == [i for i, _ in final]
    effects = Counter(
        i for (i,) in rows(db, schema, "SELECT execution_id FROM {s}.schedule_effects")
    )
    assert set(effects) == {i for i, _ in final}
    assert zart.schedules.get(name).ticks_started == len(final)


def test_a_worker_killed_inside_its_claim_leaves_the_tick_to_another(
    processes: Processes, broker, db, schema
) -> None:
    schedule_app.create_tables(db, schema)
    name = schedule_app.SCHEDULE
    dying = processes.dramatiq_worker(
        SCHEDULE_APP, threads=2, env={"SCHEDULE_APP_DIE_IN_CLAIM": "1"}
    )
    died_at = wait_until(
        lambda: scalar(db, schema, "SELECT execution_id FROM {s}.schedule_deaths"),
        timeout=30,
        message=lambda: processes.output(),
    )

    def released() -> bool:
        try:
            with db.transaction():
                row = scalar(
                    db,
                    schema,
                    "SELECT next_fire_at FROM {s}.schedules WHERE name = %s FOR UPDATE NOWAIT",
                    name,
                )
            return row is not None
        except psycopg.errors.LockNotAvailable:
            return False

    # Its transaction is rolled back with its session: no execution, nothing advanced.
    wait_until(released, message="the dead worker's lock to go")
    assert ids(db, schema, name) == []
    assert zart.schedules.get(name).next_fire_at == tick_of(str(died_at))
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0
    assert dying.pid > 0

    processes.dramatiq_worker(SCHEDULE_APP, threads=2)
    wait_until(
        lambda: len(ids(db, schema, name)) >= 3, timeout=30, message=lambda: processes.output()
    )
    zart.schedules.pause(name)
    final = ids(db, schema, name)
    ticks = [tick_of(i) for i in final]
    assert final[0] == died_at  # started by the other worker, late, once
    assert ticks == [ticks[0] + timedelta(seconds=k) for k in range(len(ticks))]
    wait_until(
        lambda: {s for _, s in executions(db, schema, name)} == {"completed"},
        timeout=30,
        message="the ticks to complete",
    )
    effects = Counter(
        i for (i,) in rows(db, schema, "SELECT execution_id FROM {s}.schedule_effects")
    )
    assert effects == Counter(final)  # each ran once: no copy of the dead claim's message
    assert scalar(db, schema, "SELECT runs FROM {s}.executions WHERE id = %s", died_at) == 1


# -- Fire times: DST (a frozen clock stands for the database's) ---------------------------


def fired_between(timing: Timing, start: datetime, end: datetime) -> list[datetime]:
    """The ticks a scheduler starts from ``start`` to ``end``, its clock moved from tick to
    tick (catch-up ``latest``: the policy of an on-time scheduler makes no difference)."""
    fired: list[datetime] = []
    with freeze_time(start) as clock:
        due = timing.next_after(datetime.now(UTC))
        while due is not None and due <= end:
            clock.move_to(due)
            step = plan(
                timing,
                due_from=due,
                now=datetime.now(UTC),
                catchup="latest",
                window=timedelta(hours=1),
                limit=100,
            )
            assert step.missed == 0
            fired += step.fire
            due = step.next_fire_at
    return fired


def test_spring_forward_moves_a_time_in_the_gap_to_the_first_instant_after() -> None:
    daily = Timing(cron="30 2 * * *", tz=BERLIN)
    # 2026-03-29: Berlin goes from 02:00 CET straight to 03:00 CEST; 02:30 does not exist.
    assert fired_between(daily, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12)) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # Every 30 minutes: 02:00 and 02:30 both fall in the gap; they fire once, at 03:00.
    half_hourly = Timing(cron="*/30 * * * *", tz=BERLIN)
    fired = fired_between(half_hourly, utc(2026, 3, 29, 0, 10), utc(2026, 3, 29, 2, 0))
    assert [t.astimezone(daily.zone).strftime("%H:%M %Z") for t in fired] == [
        "01:30 CET",
        "03:00 CEST",
        "03:30 CEST",
        "04:00 CEST",
    ]


def test_fall_back_fires_a_repeated_time_once() -> None:
    daily = Timing(cron="30 2 * * *", tz=BERLIN)
    # 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    assert fired_between(daily, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12)) == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first; not again at 02:30 CET
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    quarterly = Timing(cron="*/15 * * * *", tz=BERLIN)
    fired = fired_between(quarterly, utc(2026, 10, 25, 0, 40), utc(2026, 10, 25, 2, 20))
    assert [t.astimezone(daily.zone).strftime("%H:%M %Z") for t in fired] == [
        "02:45 CEST",
        "03:00 CET",  # 02:00-02:45 CET repeat wall times that fired already
        "03:15 CET",
    ]
    # The latest tick from inside the repeated hour is the first pass's last.
    assert quarterly.last_at_or_before(utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 25, 0, 45)


def test_utc_and_intervals_know_no_dst() -> None:
    hourly = Timing(cron="0 * * * *")
    assert len(fired_between(hourly, utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 3, 30))) == 4
    every = Timing(every_s=3600)
    assert fired_between(every, utc(2026, 3, 29, 0, 10), utc(2026, 3, 29, 3, 0)) == [
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 2),
        utc(2026, 3, 29, 3),
    ]


# -- Catch-up (a frozen clock stands for the database's) ----------------------------------


FIVE_MINUTES = [Timing(cron="*/5 * * * *"), Timing(every_s=300)]


@pytest.mark.parametrize("timing", FIVE_MINUTES, ids=["cron", "every"])
def test_catchup_none_starts_no_missed_tick(timing: Timing) -> None:
    with freeze_time(utc(2026, 11, 29, 12, 3)):  # down since 10:00
        after = plan(
            timing,
            due_from=utc(2026, 11, 29, 10),
            now=datetime.now(UTC),
            catchup="none",
            window=ON_TIME,
            limit=100,
        )
    assert (after.fire, after.missed) == ([], 25)
    assert after.next_fire_at == utc(2026, 11, 29, 12, 5)
    with freeze_time(utc(2026, 11, 29, 12, 0, 4)):  # on time
        on_time = plan(
            timing,
            due_from=utc(2026, 11, 29, 12),
            now=datetime.now(UTC),
            catchup="none",
            window=ON_TIME,
            limit=100,
        )
    assert (on_time.fire, on_time.missed) == ([utc(2026, 11, 29, 12)], 0)


@pytest.mark.parametrize("timing", FIVE_MINUTES, ids=["cron", "every"])
def test_catchup_latest_starts_the_most_recent_tick_within_the_window(timing: Timing) -> None:
    with freeze_time(utc(2026, 11, 29, 12, 3)):
        now = datetime.now(UTC)
        within = plan(
            timing,
            due_from=utc(2026, 11, 29, 10),
            now=now,
            catchup="latest",
            window=timedelta(hours=1),
            limit=100,
        )
        too_old = plan(
            timing,
            due_from=utc(2026, 11, 29, 10),
            now=now,
            catchup="latest",
            window=timedelta(minutes=1),
            limit=100,
        )
    assert (within.fire, within.missed, within.last) == (
        [utc(2026, 11, 29, 12)],
        24,
        utc(2026, 11, 29, 12),
    )
    assert (too_old.fire, too_old.missed) == ([], 25)
    assert within.next_fire_at == too_old.next_fire_at == utc(2026, 11, 29, 12, 5)


@pytest.mark.parametrize("timing", FIVE_MINUTES, ids=["cron", "every"])
def test_catchup_all_starts_every_tick_within_the_window_in_batches(timing: Timing) -> None:
    fired: list[datetime] = []
    passed_over = 0
    due: datetime | None = utc(2026, 11, 29, 10)
    with freeze_time(utc(2026, 11, 29, 12, 3)) as clock:
        while due is not None and due <= datetime.now(UTC):
            step = plan(
                timing,
                due_from=due,
                now=datetime.now(UTC),
                catchup="all",
                window=timedelta(hours=1),
                limit=5,
            )
            assert len(step.fire) <= 5
            fired += step.fire
            passed_over += step.missed
            due = step.next_fire_at
            clock.tick(timedelta(milliseconds=10))  # each claim takes a moment
    assert fired == [utc(2026, 11, 29, 11, 5) + timedelta(minutes=5 * k) for k in range(12)]
    assert passed_over == 13  # 10:00 to 11:00, older than the window
    assert due == utc(2026, 11, 29, 12, 5)


def test_a_long_downtime_is_counted_without_walking_every_tick() -> None:
    minutely = Timing(cron="* * * * *")
    with freeze_time(utc(2026, 12, 6, 0, 0, 30)):  # a week of downtime
        after = plan(
            minutely,
            due_from=utc(2026, 11, 29),
            now=datetime.now(UTC),
            catchup="latest",
            window=timedelta(days=1),
            limit=100,
        )
    assert after.fire == [utc(2026, 12, 6)]
    assert after.missed == 7 * 24 * 60


# -- Overlap policies, with this process's scheduler and no worker -----------------------


def test_skip_starts_no_tick_while_the_last_execution_is_active(broker, scheduler, db, schema):
    @zart.schedule(every=timedelta(seconds=1), overlap="skip")
    @zart.durable(actor_name="skipper")
    def skipper() -> None: ...

    [first] = wait_until(lambda: ids(db, schema, "skipper"), message="the first tick")
    wait_until(lambda: zart.schedules.get("skipper").ticks_missed >= 2, message="skipped ticks")
    assert ids(db, schema, "skipper") == [first]  # pending: active, so the ticks were skipped
    assert missed("skipper", "overlap") >= 2
    zart.cancel(first)
    both = wait_until(lambda: len(found := ids(db, schema, "skipper")) == 2 and found)
    # The skipped ticks never start: the next one is a later tick, on time.
    assert tick_of(both[1]) >= tick_of(first) + timedelta(seconds=3)


def test_allow_starts_every_tick(broker, scheduler, db, schema) -> None:
    @zart.schedule(every=timedelta(seconds=1), overlap="allow")
    @zart.durable(actor_name="allower")
    def allower() -> None: ...

    found = wait_until(lambda: len(f := executions(db, schema, "allower")) >= 3 and f)
    assert {status for _, status in found} == {"pending"}
    ticks = [tick_of(i) for i, _ in found]
    assert ticks == [ticks[0] + timedelta(seconds=k) for k in range(len(ticks))]
    assert zart.schedules.get("allower").ticks_missed == 0


def test_cancel_previous_cancels_the_active_execution_then_starts(broker, scheduler, db, schema):
    @zart.schedule(every=timedelta(seconds=1), overlap="cancel_previous")
    @zart.durable(actor_name="replacer")
    def replacer() -> None: ...

    found = wait_until(lambda: len(f := executions(db, schema, "replacer")) >= 3 and f)
    # Cancel and start commit together: one active at any moment, the latest.
    assert [status for _, status in found] == ["cancelled"] * (len(found) - 1) + ["pending"]


def test_buffer_one_keeps_one_start_for_when_the_active_one_ends(broker, scheduler, db, schema):
    @zart.schedule(every=timedelta(seconds=1), overlap="buffer_one")
    @zart.durable(actor_name="bufferer")
    def bufferer() -> None: ...

    [first] = wait_until(lambda: ids(db, schema, "bufferer"), message="the first tick")
    held = wait_until(
        lambda: (s := zart.schedules.get("bufferer")).buffered_tick and s.ticks_missed >= 1 and s,
        message="a buffered tick, and a later one dropped",
    )
    assert ids(db, schema, "bufferer") == [first]
    assert missed("bufferer", "overlap") >= 1
    zart.cancel(first)
    both = wait_until(lambda: len(found := ids(db, schema, "bufferer")) == 2 and found)
    # The buffered tick starts, late, under its own id.
    assert both[1] == tick_execution_id("bufferer", held.buffered_tick)
    assert zart.schedules.get("bufferer").last_tick > held.buffered_tick


# -- Catch-up and the database's clock, through a real claim -----------------------------


def test_a_claim_catches_up_by_the_database_clock_not_the_workers(broker, db, schema) -> None:
    @zart.durable(actor_name="hourly")
    def hourly() -> None: ...

    zart.schedules.create(
        "hourly", hourly, every=timedelta(hours=1), catchup="all", overlap="allow"
    )
    [(since,)] = rows(
        db,
        schema,
        "UPDATE {s}.schedules SET next_fire_at = date_trunc('hour', now()) - interval '3 hours'"
        " RETURNING next_fire_at",
    )
    scheduler = middleware_for(broker).scheduler  # not looping: one round, by hand
    with freeze_time("2001-01-01", tick=True):  # the worker's clock is wrong by decades
        [claim] = scheduler.run_once()
    after = zart.schedules.get("hourly")
    assert after.next_fire_at is not None
    expected = []
    tick = since
    while tick < after.next_fire_at:
        expected.append(tick_execution_id("hourly", tick))
        tick += timedelta(hours=1)
    assert claim.started == expected == ids(db, schema, "hourly")
    assert len(expected) >= 4 and tick_of(expected[-1]) > db_now(db) - timedelta(hours=2)
    assert (after.ticks_started, after.ticks_missed) == (len(expected), 0)
    # Nothing is due any more: another round starts nothing.
    assert scheduler.run_once() == []


# -- Operations ---------------------------------------------------------------------------


def test_pause_stops_the_ticks_and_resume_starts_from_the_next(broker, scheduler, db, schema):
    @zart.durable(actor_name="pulse")
    def pulse() -> None: ...

    created = zart.schedules.create("pulse", pulse, every=timedelta(seconds=1), overlap="allow")
    assert (created.source, created.args, created.every) == ("runtime", [], timedelta(seconds=1))
    wait_until(lambda: ids(db, schema, "pulse"), message="the first tick")
    zart.schedules.pause("pulse")
    paused = zart.schedules.get("pulse")
    assert paused.paused_at is not None and paused.next_fire_at is not None
    before = ids(db, schema, "pulse")
    wait_until(lambda: db_now(db) > paused.next_fire_at + timedelta(seconds=1))
    assert scheduler.run_once() == []  # due, but paused
    assert ids(db, schema, "pulse") == before
    resumed_at = db_now(db)
    assert zart.schedules.resume("pulse") is True
    assert zart.schedules.resume("pulse") is False  # not paused any more
    wait_until(lambda: len(ids(db, schema, "pulse")) > len(before), message="a tick after")
    new = [tick_of(i) for i in ids(db, schema, "pulse") if i not in before]
    assert min(new) > resumed_at  # the pause's ticks are not caught up


def test_trigger_starts_an_extra_execution_idempotent_by_key(broker, db, schema) -> None:
    @zart.durable(actor_name="nightly")
    def nightly(region: str) -> str:
        return region

    nightly_schedule = zart.schedules.create(
        "nightly-eu", nightly, cron="0 3 * * *", tz=BERLIN, args=["eu"]
    )
    assert nightly_schedule.kwargs == {} and nightly_schedule.args == ["eu"]
    first = zart.schedules.trigger("nightly-eu")
    assert first.startswith("schedule:nightly-eu:manual:")
    assert zart.schedules.trigger("nightly-eu", key="deploy-42") == (
        "schedule:nightly-eu:manual:deploy-42"
    )
    assert zart.schedules.trigger("nightly-eu", key="deploy-42") == (
        "schedule:nightly-eu:manual:deploy-42"
    )
    assert ids(db, schema, "nightly-eu") == sorted([first, "schedule:nightly-eu:manual:deploy-42"])
    assert zart.get_execution(first).input == {"args": ["eu"], "kwargs": {}}
    # The overlap policy of the next ticks looks at it.
    assert zart.schedules.get("nightly-eu").last_execution_id == (
        "schedule:nightly-eu:manual:deploy-42"
    )
    with pytest.raises(zart.UnknownSchedule, match="no schedule is named 'nope'"):
        zart.schedules.trigger("nope")


def test_backfill_starts_each_tick_once_however_often_repeated(broker, db, schema) -> None:
    @zart.durable(actor_name="rollup")
    def rollup() -> None: ...

    zart.schedules.create("rollup", rollup, every=timedelta(hours=1))
    hour = db_now(db).replace(minute=0, second=0, microsecond=0)
    done = zart.schedules.backfill("rollup", hour - timedelta(hours=3), hour)
    expected = [tick_execution_id("rollup", hour - timedelta(hours=k)) for k in (3, 2, 1)]
    assert (done.started, done.existing, done.execution_ids) == (3, 0, expected)
    again = zart.schedules.backfill("rollup", hour - timedelta(hours=4), hour)
    assert (again.started, again.existing) == (1, 3)
    assert ids(db, schema, "rollup") == sorted(
        [*expected, tick_execution_id("rollup", hour - timedelta(hours=4))]
    )
    with pytest.raises(zart.InvalidSchedule, match="is after now"):
        zart.schedules.backfill("rollup", hour, hour + timedelta(days=1))
    with pytest.raises(zart.InvalidSchedule, match="needs a time zone"):
        zart.schedules.backfill("rollup", datetime(2026, 1, 1), hour)
    with pytest.raises(zart.InvalidSchedule, match="is not after start"):
        zart.schedules.backfill("rollup", hour, hour - timedelta(hours=1))


def test_list_get_and_delete(broker, db, schema) -> None:
    @zart.durable(actor_name="a_job")
    def a_job() -> None: ...

    zart.schedules.create("b", a_job, cron="*/5 * * * *", tz=BERLIN, catchup="none")
    zart.schedules.create("a", a_job, every=timedelta(minutes=1), catchup_window=timedelta(hours=2))
    listed = zart.schedules.list()
    assert [s.name for s in listed] == ["a", "b"]
    assert (listed[0].every, listed[0].catchup, listed[0].catchup_window) == (
        timedelta(minutes=1),
        "latest",
        timedelta(hours=2),
    )
    assert (listed[1].cron, listed[1].tz, listed[1].catchup_window) == (
        "*/5 * * * *",
        BERLIN,
        ON_TIME,
    )
    # Creating again with the same definition keeps the next tick; another timing moves it.
    next_tick = listed[0].next_fire_at
    zart.schedules.create("a", a_job, every=timedelta(minutes=1), catchup_window=timedelta(hours=2))
    assert zart.schedules.get("a").next_fire_at == next_tick
    zart.schedules.delete("a")
    assert [s.name for s in zart.schedules.list()] == ["b"]
    with pytest.raises(zart.UnknownSchedule):
        zart.schedules.delete("a")
    with pytest.raises(zart.UnknownSchedule):
        zart.schedules.pause("a")


def test_a_schedule_defined_in_code_is_written_when_the_worker_boots(
    broker, start_worker, db, schema
) -> None:
    @zart.schedule("0 0 1 1 *", name="new-year", overlap="allow", args=[2027])
    @zart.durable(actor_name="greeter")
    def greeter(year: int) -> str:
        return f"happy {year}"

    assert zart.schedules.list() == []  # nothing is written before a worker boots
    start_worker(broker)
    found = wait_until(
        lambda: {s.name: s for s in zart.schedules.list()}.get("new-year"),
        message="the worker to write the schedule",
    )
    assert (found.source, found.actor_name, found.args) == ("code", "greeter", [2027])
    assert found.next_fire_at is not None and found.next_fire_at.month == 1
    execution_id = zart.schedules.trigger("new-year")
    assert zart.get_handle(execution_id).result(timeout=20) == "happy 2027"


def test_a_start_that_fails_passes_its_ticks_over_and_says_why(broker, db, schema) -> None:
    @zart.durable(actor_name="fussy")
    def fussy(n: int) -> int:
        return n

    @zart.durable(actor_name="steady")
    def steady() -> None: ...

    zart.schedules.create("fussy", fussy, every=timedelta(hours=1), args=[1])
    zart.schedules.create("steady", steady, every=timedelta(hours=1))
    # The stored input no longer fits the actor (as after a deploy that changed it).
    rows(
        db,
        schema,
        "UPDATE {s}.schedules SET next_fire_at = date_trunc('hour', now()),"
        " args = CASE name WHEN 'fussy' THEN '[\"one\"]' ELSE args END RETURNING name",
    )
    rounds = {f.name: f for f in middleware_for(broker).scheduler.run_once()}
    assert rounds["fussy"].error is not None and "SerializationError" in rounds["fussy"].error
    assert rounds["steady"].created == 1  # a broken schedule stops no other
    fussy_now = zart.schedules.get("fussy")
    assert fussy_now.last_error == rounds["fussy"].error
    assert fussy_now.ticks_missed == 1 and fussy_now.next_fire_at > db_now(db)
    assert ids(db, schema, "fussy") == []
    assert missed("fussy", "error") >= 1


# -- Bad input: refused at decoration time, naming the mistake ----------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": "* * * * *", "tz": "Europe/Berln"}, "unknown time zone 'Europe/Berln'"),
        ({"cron": "* * * * *", "every": timedelta(seconds=1)}, "got both cron and every"),
        ({}, "got neither cron nor every"),
        ({"every": timedelta(0)}, "every must be positive"),
        ({"every": timedelta(seconds=-5)}, "every must be positive"),
        ({"every": timedelta(milliseconds=1500)}, "whole number of seconds"),
        ({"every": 5}, "every must be a timedelta"),
        ({"every": timedelta(hours=1), "tz": BERLIN}, "does not apply to every"),
        ({"cron": "* * * * *", "overlap": "queue"}, "unknown overlap policy 'queue'"),
        ({"cron": "* * * * *", "catchup": "some"}, "unknown catch-up policy 'some'"),
        (
            {"cron": "* * * * *", "catchup": "none", "catchup_window": timedelta(hours=1)},
            "catchup_window applies to catchup='latest' or 'all'",
        ),
        ({"cron": "* * * * *", "catchup_window": timedelta(0)}, "positive timedelta"),
    ],
)
def test_bad_definitions_are_refused_naming_the_mistake(options, message) -> None:
    with pytest.raises(zart.InvalidSchedule, match=message):
        zart.schedule(**options)


def test_bad_targets_and_names_are_refused_at_decoration(broker, db, schema) -> None:
    with pytest.raises(TypeError, match=r"place @zart\.schedule\(\.\.\.\) above @zart\.durable"):

        @zart.durable
        @zart.schedule("* * * * *")
        def upside_down() -> None: ...

    plain = dramatiq.actor(lambda: None, actor_name="plain", broker=broker)
    with pytest.raises(TypeError, match="'plain' is a plain Dramatiq actor"):
        zart.schedule("* * * * *")(plain)

    @zart.durable(actor_name="job")
    def job(n: int) -> None: ...

    with pytest.raises(zart.InvalidSchedule, match="not usable in execution ids"):
        zart.schedule("* * * * *", name="a/b")(job)
    with pytest.raises(zart.SerializationError):
        zart.schedule("* * * * *", args=[object()])(job)
    zart.schedule("* * * * *", name="jobs")(job)
    with pytest.raises(zart.InvalidSchedule, match="'jobs' is already defined"):
        zart.schedule("*/2 * * * *", name="jobs")(job)
    # Nothing was written by any of these.
    assert scalar(db, schema, "SELECT count(*) FROM {s}.schedules") == 0
