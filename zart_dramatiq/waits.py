"""Durable waits: sleeps and event waits that hold no thread and no connection."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from .errors import EventTimeout, SerializationError
from .run import Run, current_run
from .serialization import error_from_json, error_to_json, load
from .signals import Refused
from .store import Transaction

T = TypeVar("T")

_NO_DEFAULT: Any = object()


def sleep(name: str, duration: timedelta | float) -> None:
    """Pause the execution for ``duration`` (a timedelta, or seconds); the thread is freed."""
    run = current_run()
    if isinstance(duration, timedelta):
        seconds = duration.total_seconds()
    elif isinstance(duration, int | float) and not isinstance(duration, bool):
        seconds = float(duration)
    else:
        # Running the body again cannot fix its code: the execution fails at once.
        raise run.final(
            TypeError(
                f"zart.sleep({name!r}, ...) takes a timedelta or a number of seconds, "
                f"not {type(duration).__name__} {duration!r}"
            )
        )
    _sleep(run, name, seconds=seconds, until=None)


def sleep_until(name: str, when: datetime) -> None:
    """Pause the execution until ``when`` (timezone-aware)."""
    run = current_run()
    if when.tzinfo is None:
        raise run.final(
            ValueError(f"sleep_until({name!r}) needs a timezone-aware datetime, got {when!r}")
        )
    _sleep(run, name, seconds=None, until=when)


def _sleep(run: Run, name: str, *, seconds: float | None, until: datetime | None) -> None:
    key = run.key("sleep", name)
    recorded = run.journal.get(key)
    if recorded is not None and (recorded["status"] == "completed" or recorded.get("due")):
        if recorded["status"] != "completed":
            run.record(key, kind="sleep", name=name, status="completed")
        return

    def pause(tx: Transaction) -> bool:
        wake_at, due = _begin_wait(run, tx, key, "sleep", name, seconds=seconds, until=until)
        if not due:
            run.suspend(tx, status="sleeping", wake_at=wake_at)
        return due

    due = run.store.atomically(pause)
    run.ensure_active()  # raises the suspension, now committed
    if due:
        run.record(key, kind="sleep", name=name, status="completed")


@overload
def wait_for_event(name: str, timeout: timedelta | None = None) -> Any: ...
@overload
def wait_for_event(
    name: str, timeout: timedelta | None = None, *, model: type[T], default: Any = ...
) -> T: ...
def wait_for_event(
    name: str,
    timeout: timedelta | None = None,
    *,
    model: Any = None,
    default: Any = _NO_DEFAULT,
) -> Any:
    """Return the payload of the next event ``name`` sent to this execution.

    An event sent before the wait is already in the inbox and is consumed at
    once. Without one, the execution parks until the event arrives or
    ``timeout`` passes; a timeout is recorded, so a late event cannot change
    history: the wait raises EventTimeout, or returns ``default`` if given.
    Waiting again for the same name consumes the following event.
    """
    run = current_run()
    key = run.key("event", name)
    recorded = run.journal.get(key)
    if recorded is None or recorded["status"] == "waiting":
        recorded = _take_event(run, key, name, timeout, model)
    if recorded["status"] == "timed_out":
        if default is not _NO_DEFAULT:
            return default
        raise run.final(
            EventTimeout(f"no event {name!r} reached execution {run.execution_id!r} in time")
        )
    if recorded["status"] == "failed":
        raise run.final(error_from_json(recorded["error"], step=name))
    return _payload(recorded["result"], name, model)


def _payload(data: Any, name: str, model: Any) -> Any:
    return data if model is None else load(data, model, what=f"the payload of event {name!r}")


def _take_event(
    run: Run, key: str, name: str, timeout: timedelta | None, model: Any
) -> dict[str, Any]:
    """Consume the oldest unconsumed event ``name``, record a timeout, or park.

    The consumption and its record commit together, so an event is never
    consumed without the wait remembering it.
    """
    seconds = None if timeout is None else timeout.total_seconds()

    def take(tx: Transaction) -> dict[str, Any]:
        # Holding the execution row serialises this with send_event: an event
        # either lands before we look, or finds us waiting and wakes us.
        if run.store.run(tx, "lock_current", id=run.execution_id, token=run.token) is None:
            raise Refused(f"execution {run.execution_id!r} moved on; this run stops")
        event = run.store.run(tx, "consume_event", id=run.execution_id, name=name, key=key)
        if event is None:
            wake_at, due = _begin_wait(run, tx, key, "event", name, seconds=seconds, until=None)
            if not due:
                run.suspend(tx, status="waiting", wake_at=wake_at, waiting_for=name)
                return {}
            outcome: dict[str, Any] = {"status": "timed_out", "result": None, "error": None}
        else:
            try:
                _payload(event[0], name, model)
                outcome = {"status": "completed", "result": event[0], "error": None}
            except SerializationError as e:
                # Recorded as the wait's outcome: the execution fails, visibly, and a
                # retry after a corrected event reads that event instead.
                outcome = {"status": "failed", "result": event[0], "error": error_to_json(e)}
        run.record(key, kind="event", name=name, tx=tx, **outcome)
        return outcome

    outcome = run.store.atomically(take)
    run.ensure_active()  # raises the suspension, now committed
    return outcome


def _begin_wait(
    run: Run,
    tx: Transaction,
    key: str,
    kind: str,
    name: str,
    *,
    seconds: float | None,
    until: datetime | None,
) -> tuple[datetime | None, bool]:
    row = run.store.run(
        tx,
        "begin_wait",
        id=run.execution_id,
        key=key,
        kind=kind,
        name=name,
        seconds=seconds,
        until=until,
        position=run.timeline.positions.get(key),
    )
    assert row is not None
    return row[0], row[1]
