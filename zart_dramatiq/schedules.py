"""Durable schedules: a cron expression or an interval whose ticks start durable executions.

    @zart.schedule("*/5 * * * *", tz="Europe/Berlin", overlap="skip")
    @zart.durable
    def sync_invoices() -> None: ...

Each tick starts one execution of the actor, with the id
``schedule:<name>:<tick>``: the tick's time in UTC, ISO 8601 to the second
(``schedule:sync_invoices:2026-11-29T12:05:00+00:00``), exactly once however
many workers run. The schedulers of the workers fire them (``scheduler.Scheduler``);
this module holds the definitions and what operators do with them: ``create``,
``list``, ``get``, ``pause``, ``resume``, ``trigger``, ``backfill``, ``delete``.
When ticks fall (cron in a time zone, DST, intervals) and which due ticks
start after downtime (catch-up) is ``fire_times``'s business.

Schedules in code (``@zart.schedule``) are written to the database by every
worker as it boots (and when an actor is declared later), so a deploy that
changes one changes it everywhere; ``create`` makes or changes one at run time.
"""

from __future__ import annotations

import builtins
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dramatiq
from croniter import CroniterBadDateError, croniter
from dramatiq import Actor
from psycopg.types.json import Jsonb

from broker_pg.database import channel_name
from broker_pg.sqlfile import Queries

from . import client
from .actor import DurableActor
from .errors import InvalidSchedule, UnknownSchedule
from .fire_times import CATCHUPS, ON_TIME, Timing
from .middleware import DurableMiddleware, middleware_for
from .store import Store, Transaction

#: What a tick does while the execution started last has not ended: not start
#: (``skip``), start once it ends (``buffer_one``: one start is kept, later ones
#: are dropped), start anyway (``allow``), or cancel it and start (``cancel_previous``).
OVERLAPS = ("skip", "buffer_one", "allow", "cancel_previous")

#: How late a tick may still start by default (``catchup="latest"`` or ``"all"``).
DEFAULT_CATCHUP_WINDOW = timedelta(days=1)

#: Backfills start at most this many ticks per call, and per transaction this many.
MAX_BACKFILL = 10_000
_BACKFILL_BATCH = 500

#: A schedule's name: it is part of execution ids, URLs and command lines.
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
#: Where ``@zart.schedule`` keeps an actor's definitions, for its workers to write.
_ATTRIBUTE = "zart_schedules"
#: A fixed instant to tell whether an expression ever fires (not a firing decision).
_LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Definition:
    """A schedule as code or ``create`` defines it, checked."""

    name: str
    actor_name: str
    timing: Timing
    overlap: str
    catchup: str
    catchup_window: timedelta
    #: The input of every tick's execution, as JSON.
    args: builtins.list[Any]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored, with what its scheduler has done."""

    name: str
    actor_name: str
    cron: str | None
    every: timedelta | None
    tz: str
    overlap: str
    catchup: str
    catchup_window: timedelta
    args: builtins.list[Any]
    kwargs: dict[str, Any]
    #: ``code`` (a ``@zart.schedule``, written by workers as they boot) or ``runtime``.
    source: str
    #: The earliest tick not considered yet; None if it never ticks again.
    next_fire_at: datetime | None
    #: The latest tick considered (started or passed over).
    last_tick: datetime | None
    #: The execution started last (a tick's or a trigger's).
    last_execution_id: str | None
    #: ``buffer_one``: the tick that starts once the last execution ends.
    buffered_tick: datetime | None
    #: Why the latest start failed, until one succeeds.
    last_error: str | None
    paused_at: datetime | None
    #: Ticks the scheduler started, and those it passed over (catch-up or overlap).
    ticks_started: int
    ticks_missed: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Backfill:
    """What a backfill did: ticks started now, and those whose execution existed already."""

    started: int
    existing: int
    execution_ids: builtins.list[str]


def tick_execution_id(name: str, tick: datetime) -> str:
    """The id of the execution of tick ``tick``: ``schedule:<name>:<tick in UTC, ISO 8601>``."""
    return f"schedule:{name}:{tick.astimezone(UTC).isoformat(timespec='seconds')}"


def manual_execution_id(name: str, key: str) -> str:
    """The id of a triggered execution: ``schedule:<name>:manual:<key>``."""
    return f"schedule:{name}:manual:{key}"


# -- Defining ----------------------------------------------------------------------


def schedule(
    cron: str | None = None,
    *,
    every: timedelta | None = None,
    name: str | None = None,
    tz: str = "UTC",
    overlap: str = "skip",
    catchup: str = "latest",
    catchup_window: timedelta | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Callable[[DurableActor], DurableActor]:
    """Start the durable actor below on a schedule: ``cron`` (croniter's syntax, read on
    the wall clock of ``tz``) or ``every`` (whole seconds, aligned on the Unix epoch).

    Place it above ``@zart.durable``. ``name`` defaults to the actor's name; each
    tick starts ``actor(*args, **kwargs)`` as ``schedule:<name>:<tick>``.
    ``overlap`` is one of :data:`OVERLAPS`; ``catchup`` one of ``none``, ``latest``
    (the default) or ``all``, with ``catchup_window`` (one day) bounding how late a
    tick may start. Every mistake raises here, naming it.
    """
    timing, window = _check(cron, every, tz, overlap, catchup, catchup_window)

    def decorate(actor: DurableActor) -> DurableActor:
        target = _durable(actor, "@zart.schedule")
        definition = _definition(name, target, timing, overlap, catchup, window, args, kwargs)
        for other in target.broker.actors.values():
            for known in getattr(other, _ATTRIBUTE, ()):
                if known.name == definition.name:
                    raise InvalidSchedule(
                        f"a schedule named {definition.name!r} is already defined (on actor "
                        f"{known.actor_name!r}): give this one another name=..."
                    )
        setattr(target, _ATTRIBUTE, (*getattr(target, _ATTRIBUTE, ()), definition))
        return target

    return decorate


def definitions(broker: dramatiq.Broker) -> builtins.list[Definition]:
    """The schedules the durable actors of ``broker`` define in code."""
    return [
        definition
        for actor in builtins.list(broker.actors.values())
        for definition in getattr(actor, _ATTRIBUTE, ())
    ]


def create(
    name: str,
    actor: DurableActor | str,
    *,
    cron: str | None = None,
    every: timedelta | None = None,
    tz: str = "UTC",
    overlap: str = "skip",
    catchup: str = "latest",
    catchup_window: timedelta | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    broker: dramatiq.Broker | None = None,
) -> Schedule:
    """Create the schedule ``name`` at run time, or change it; see ``schedule``.

    ``actor`` is a durable actor or its name on ``broker``. A schedule of the same
    name defined in code is replaced until a worker boots with that code again.
    Only workers that declare the actor fire it.
    """
    timing, window = _check(cron, every, tz, overlap, catchup, catchup_window)
    if isinstance(actor, str):
        target = client.durable_actor(actor, broker=broker, what=f"cannot schedule actor {actor!r}")
    else:
        target = _durable(actor, "zart.schedules.create")
    definition = _definition(name, target, timing, overlap, catchup, window, args, kwargs)
    store = middleware_for(target.broker).store
    with store.transaction() as tx:
        upsert(store, tx, [definition], source="runtime")
    return get(definition.name, broker=target.broker)


def upsert(store: Store, tx: Transaction, defined: Sequence[Definition], *, source: str) -> int:
    """Write ``defined`` in ``tx``; return how many were created or changed.

    A new schedule, or one whose timing changed, ticks next at its first tick after
    the database's now(); an unchanged one keeps its next tick.
    """
    if not defined:
        return 0
    queries = queries_for(store)
    row = _run(tx, queries, "db_now")
    assert row is not None
    now: datetime = row[0]
    changed = 0
    for definition in defined:
        next_fire_at = definition.timing.next_after(now)
        if next_fire_at is None:
            raise InvalidSchedule(
                f"schedule {definition.name!r}: {_describe(definition.timing)} has no tick "
                f"after {now.isoformat()}: it would never fire"
            )
        written = _run(
            tx,
            queries,
            "upsert_schedule",
            channel=channel_for(store),
            name=definition.name,
            actor_name=definition.actor_name,
            cron=definition.timing.cron,
            every_s=definition.timing.every_s,
            tz=definition.timing.tz,
            overlap=definition.overlap,
            catchup=definition.catchup,
            catchup_window_s=definition.catchup_window.total_seconds(),
            args=Jsonb(definition.args),
            kwargs=Jsonb(definition.kwargs),
            source=source,
            next_fire_at=next_fire_at,
        )
        changed += int(written[0]) if written else 0
    return changed


# -- Operating -------------------------------------------------------------------------


def get(name: str, *, broker: dramatiq.Broker | None = None) -> Schedule:
    """The schedule ``name``; raises UnknownSchedule."""
    store = _middleware(broker).store
    with store.db.connection() as conn:
        row = conn.execute(queries_for(store)["get_schedule"], {"name": name}).fetchone()
    if row is None:
        raise _unknown(name)
    return _schedule(row)


def list(*, broker: dramatiq.Broker | None = None) -> builtins.list[Schedule]:
    """Every schedule, by name."""
    store = _middleware(broker).store
    with store.db.connection() as conn:
        rows = conn.execute(queries_for(store)["list_schedules"]).fetchall()
    return [_schedule(row) for row in rows]


def pause(name: str, *, broker: dramatiq.Broker | None = None) -> None:
    """Stop starting ticks of ``name`` until ``resume``; pausing twice is harmless.

    Executions already started go on; a buffered start waits for the resume.
    """
    store = _middleware(broker).store
    with store.transaction() as tx:
        if _run(tx, queries_for(store), "pause_schedule", name=name) is None:
            raise _unknown(name)


def resume(name: str, *, broker: dramatiq.Broker | None = None) -> bool:
    """Start ticks of ``name`` again, from its next tick after now: the ticks of the
    pause are not caught up (``backfill`` them if they should run). Returns whether
    it was paused."""
    store = _middleware(broker).store
    queries = queries_for(store)
    with store.transaction() as tx:
        row = _run(tx, queries, "lock_schedule", name=name)
        if row is None:
            raise _unknown(name)
        schedule, now = _schedule(row[:-1]), row[-1]
        if schedule.paused_at is None:
            return False
        _run(
            tx,
            queries,
            "resume_schedule",
            channel=channel_for(store),
            name=name,
            next_fire_at=_timing(schedule).next_after(now),
        )
    return True


def trigger(name: str, *, key: str | None = None, broker: dramatiq.Broker | None = None) -> str:
    """Start the schedule's actor now, once more, whatever its overlap policy; return
    the execution's id, ``schedule:<name>:manual:<key>``.

    ``key`` (default: a random UUID) makes the trigger idempotent: the same key
    starts nothing new. The execution becomes the one the overlap policy of the next
    ticks looks at. Needs the actor declared in this process (``--broker`` on the
    command line).
    """
    middleware = _middleware(broker)
    store = middleware.store
    queries = queries_for(store)
    execution_id = manual_execution_id(name, key or uuid.uuid4().hex)
    with store.transaction() as tx:
        row = _run(tx, queries, "lock_schedule", name=name)
        if row is None:
            raise _unknown(name)
        schedule = _schedule(row[:-1])
        actor = _schedule_actor(schedule, middleware)
        start_in(middleware, tx, actor, schedule.args, schedule.kwargs, execution_id)
        _run(tx, queries, "record_trigger", name=name, execution_id=execution_id)
    return execution_id


def backfill(
    name: str, start: datetime, end: datetime, *, broker: dramatiq.Broker | None = None
) -> Backfill:
    """Start every tick of ``name`` in [start, end) with its own id, whatever the
    overlap policy and the pause: repeating a backfill starts nothing twice.

    ``start`` and ``end`` need a time zone; ``end`` may not pass the database's now
    (later ticks fire by themselves). At most ``MAX_BACKFILL`` ticks per call.
    Needs the actor declared in this process (``--broker`` on the command line).
    """
    for label, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise InvalidSchedule(
                f"backfill {label} {value!r} needs a time zone: give an aware datetime, "
                "e.g. datetime(2026, 11, 29, tzinfo=UTC) or 2026-11-29T00:00:00+00:00"
            )
    if end <= start:
        raise InvalidSchedule(
            f"backfill end {end.isoformat()} is not after start {start.isoformat()}"
        )
    middleware = _middleware(broker)
    store = middleware.store
    queries = queries_for(store)
    schedule = get(name, broker=broker)
    actor = _schedule_actor(schedule, middleware)
    with store.db.connection() as conn:
        row = conn.execute(queries["db_now"]).fetchone()
    assert row is not None
    if end > row[0]:
        raise InvalidSchedule(
            f"backfill end {end.isoformat()} is after now ({row[0].isoformat()}, the "
            "database's clock): only ticks that have come can be backfilled; later ones "
            "fire by themselves"
        )
    timing = _timing(schedule)
    ticks = [t for t in timing.between(start, end, limit=MAX_BACKFILL + 1) if t < end]
    if len(ticks) > MAX_BACKFILL:
        raise InvalidSchedule(
            f"backfill of {name!r} from {start.isoformat()} to {end.isoformat()} covers more "
            f"than {MAX_BACKFILL} ticks: split it into smaller ranges"
        )
    ids = [tick_execution_id(name, tick) for tick in ticks]
    started = 0
    for first in range(0, len(ids), _BACKFILL_BATCH):
        batch = ids[first : first + _BACKFILL_BATCH]
        with store.transaction() as tx:
            for execution_id in batch:
                started += start_in(
                    middleware, tx, actor, schedule.args, schedule.kwargs, execution_id
                )
    return Backfill(started=started, existing=len(ids) - started, execution_ids=ids)


def delete(name: str, *, broker: dramatiq.Broker | None = None) -> None:
    """Delete the schedule; its executions stay. One defined in code comes back when a
    worker with that code boots: remove it from the code too."""
    store = _middleware(broker).store
    with store.transaction() as tx:
        if _run(tx, queries_for(store), "delete_schedule", name=name) is None:
            raise _unknown(name)


# -- Starting a tick -------------------------------------------------------------------


def start_in(
    middleware: DurableMiddleware,
    tx: Transaction,
    actor: DurableActor,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    execution_id: str,
) -> bool:
    """Start ``actor`` with the stored input as ``execution_id``, in ``tx``, as
    ``zart.start`` does; False, writing nothing, when an execution with this id exists.

    Raises SerializationError or PayloadTooLarge if the input no longer fits the actor.
    """
    loaded_args, loaded_kwargs = actor.load_arguments(tuple(args), dict(kwargs))
    _, created = client.start_in(tx, actor, loaded_args, loaded_kwargs, execution_id=execution_id)
    return created


# -- Checks ------------------------------------------------------------------------------


def _check(
    cron: str | None,
    every: timedelta | None,
    tz: str,
    overlap: str,
    catchup: str,
    catchup_window: timedelta | None,
) -> tuple[Timing, timedelta]:
    """The timing and catch-up window of a definition; InvalidSchedule names any mistake."""
    if (cron is None) == (every is None):
        given = "both cron and every" if cron is not None else "neither cron nor every"
        raise InvalidSchedule(
            f"a schedule takes a cron expression or an interval, exactly one; got {given}: "
            "e.g. @zart.schedule('*/5 * * * *') or @zart.schedule(every=timedelta(minutes=5))"
        )
    if not isinstance(tz, str):
        raise InvalidSchedule(f"tz must be a time zone name such as 'Europe/Berlin', not {tz!r}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            f"unknown time zone {tz!r}: give an IANA name such as 'Europe/Berlin', "
            "'America/New_York' or 'UTC'"
        ) from None
    if every is not None:
        timing = _interval(every, tz)
    else:
        assert cron is not None
        timing = _cron(cron, tz)
    if overlap not in OVERLAPS:
        raise InvalidSchedule(
            f"unknown overlap policy {overlap!r}: use one of {', '.join(OVERLAPS)}"
        )
    if catchup not in CATCHUPS:
        raise InvalidSchedule(
            f"unknown catch-up policy {catchup!r}: use one of {', '.join(CATCHUPS)}"
        )
    if catchup == "none":
        if catchup_window is not None:
            raise InvalidSchedule(
                "catchup_window applies to catchup='latest' or 'all'; with catchup='none' a "
                f"tick starts only on time (within {ON_TIME.total_seconds():.0f} s): drop "
                "catchup_window, or use catchup='latest'"
            )
        return timing, ON_TIME
    window = DEFAULT_CATCHUP_WINDOW if catchup_window is None else catchup_window
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise InvalidSchedule(
            f"catchup_window must be a positive timedelta, e.g. timedelta(hours=1); got {window!r}"
        )
    return timing, window


def _interval(every: timedelta, tz: str) -> Timing:
    if not isinstance(every, timedelta):
        raise InvalidSchedule(
            f"every must be a timedelta, e.g. every=timedelta(minutes=5); got {every!r}"
        )
    if every <= timedelta(0):
        raise InvalidSchedule(f"every must be positive; got {every!r}")
    if every % timedelta(seconds=1):
        raise InvalidSchedule(
            f"every must be a whole number of seconds (ticks are whole seconds); got {every!r}"
        )
    if tz != "UTC":
        raise InvalidSchedule(
            f"tz={tz!r} does not apply to every=...: intervals are counted in UTC, aligned "
            "on the Unix epoch; for wall-clock times in a zone, use a cron expression, "
            "e.g. @zart.schedule('0 3 * * *', tz='Europe/Berlin')"
        )
    return Timing(every_s=every // timedelta(seconds=1))


def _cron(cron: str, tz: str) -> Timing:
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise InvalidSchedule(
            f"invalid cron expression {cron!r}: use croniter's syntax, five fields (minute "
            "hour day-of-month month day-of-week, e.g. '*/5 * * * *') or six with seconds "
            "last, or a shortcut such as '@hourly'"
        )
    timing = Timing(cron=cron, tz=tz)
    try:
        fires = timing.next_after(_LONG_AGO) is not None
    except CroniterBadDateError:
        fires = False
    if not fires:
        raise InvalidSchedule(f"cron expression {cron!r} never fires (no such date)")
    return timing


def _definition(
    name: str | None,
    actor: DurableActor,
    timing: Timing,
    overlap: str,
    catchup: str,
    window: timedelta,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
) -> Definition:
    name = actor.actor_name if name is None else name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSchedule(
            f"schedule name {name!r} is not usable in execution ids and URLs: use 1 to 200 "
            "letters, digits, '_', '.' or '-' (pass name=...)"
        )
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise InvalidSchedule(f"args must be a list or tuple of arguments, not {args!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidSchedule(f"kwargs must be a dict of keyword arguments, not {kwargs!r}")
    # As zart.start would send them: through the annotations, within the payload limit.
    dumped_args, dumped_kwargs = actor.dump_input(tuple(args), dict(kwargs or {}))
    return Definition(
        name=name,
        actor_name=actor.actor_name,
        timing=timing,
        overlap=overlap,
        catchup=catchup,
        catchup_window=window,
        args=builtins.list(dumped_args),
        kwargs=dict(dumped_kwargs),
    )


def _durable(actor: Any, what: str) -> DurableActor:
    if isinstance(actor, DurableActor):
        return actor
    if isinstance(actor, Actor):
        raise TypeError(
            f"{what} starts durable actors; {actor.actor_name!r} is a plain Dramatiq actor: "
            "decorate it with @zart.durable (below @zart.schedule)"
        )
    raise TypeError(
        f"{what} starts durable actors, not {actor!r}: place @zart.schedule(...) above "
        "@zart.durable, which makes the function a durable actor"
    )


# -- Helpers ------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _queries_of(schema: str) -> Queries:
    return Queries("zart_dramatiq", "schedules.sql", schema)


def queries_for(store: Store) -> Queries:
    return _queries_of(store.db.schema)


def channel_for(store: Store) -> str:
    """The NOTIFY channel that wakes the schedulers when a schedule is created or resumed."""
    return channel_name(store.db.schema, "schedules")


def _run(tx: Transaction, queries: Queries, query: str, **params: Any) -> tuple[Any, ...] | None:
    cursor = tx.conn.execute(queries[query], params or None)
    return cursor.fetchone() if cursor.description is not None else None


def _middleware(broker: dramatiq.Broker | None) -> DurableMiddleware:
    return middleware_for(broker or dramatiq.get_broker())


def _schedule_actor(schedule: Schedule, middleware: DurableMiddleware) -> DurableActor:
    return client.durable_actor(
        schedule.actor_name,
        broker=middleware.broker,
        what=f"schedule {schedule.name!r} starts actor {schedule.actor_name!r}",
    )


def _unknown(name: str) -> UnknownSchedule:
    return UnknownSchedule(
        f"no schedule is named {name!r}; `zart-dramatiq schedules list` lists them"
    )


def _timing(schedule: Schedule) -> Timing:
    every_s = None if schedule.every is None else int(schedule.every.total_seconds())
    return Timing(cron=schedule.cron, every_s=every_s, tz=schedule.tz)


def _describe(timing: Timing) -> str:
    if timing.every_s is not None:
        return f"every {timing.every_s} s"
    return f"cron {timing.cron!r} in {timing.tz}"


def _schedule(row: Sequence[Any]) -> Schedule:
    (name, actor_name, cron, every_s, tz, overlap, catchup, window_s, args, kwargs) = row[:10]
    return Schedule(
        name,
        actor_name,
        cron,
        None if every_s is None else timedelta(seconds=every_s),
        tz,
        overlap,
        catchup,
        timedelta(seconds=window_s),
        args,
        kwargs,
        *row[10:],
    )
