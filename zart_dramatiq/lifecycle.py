"""Every status change of an execution, each guarded by the states it may leave.

No other module changes an execution's status. A run's own transitions
(suspend, finish, continue_as_new) are fenced by its token, the run counter
``acquire`` bumped: once another run has taken the execution, or a cancel
moved it out of ``running``, they match nothing and raise ``Refused``.

    pending ─┐
    sleeping ├─ acquire ─> running ─ suspend ─> sleeping | waiting | retrying
    waiting  │                               | blocked   (its replay diverged from the journal)
    retrying │                     ─ finish ──> completed | failed | timed_out
    blocked ─┘                     ─ abandon ─> retrying   (its run ended unrecorded)
                                   ─ continue_as_new ─> pending   (its next generation)
    any active ─ cancel ─> cancelled   (also: its parent ended, for an attached child)
    blocked ─ fail ─> failed   (an operator gives up on it)
    failed | cancelled | timed_out ─ reopen ─> pending
    any ended ─ rerun ─> pending   (the journal from a step on is forgotten)

A transaction that touches a parent and its child locks the parent first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import dramatiq

from .concurrency import Slot, key_of
from .serialization import input_hash
from .signals import Refused
from .store import Store, Transaction

if TYPE_CHECKING:
    from .actor import DurableActor

PENDING = "pending"
RUNNING = "running"
SLEEPING = "sleeping"
WAITING = "waiting"
RETRYING = "retrying"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
#: The replay met code other than the journal recorded: parked until code that replays it.
BLOCKED = "blocked"

#: The message option that orders an execution among others: lower first, as Dramatiq's
#: actor priority (broker_pg claims by it; slots are admitted by it).
PRIORITY = "priority"

#: Statuses an execution never leaves, except by an explicit reopen.
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})
#: Statuses of executions that still have work to do.
ACTIVE = frozenset({PENDING, RUNNING, SLEEPING, WAITING, RETRYING, BLOCKED})
STATUSES = (PENDING, RUNNING, SLEEPING, WAITING, RETRYING, BLOCKED, *sorted(TERMINAL))

#: Each transition, with the statuses it may leave.
_ACQUIRE = sorted(ACTIVE)
_RUN_ONLY = [RUNNING]
_CANCEL = sorted(ACTIVE)
_REOPEN = [FAILED, CANCELLED, TIMED_OUT]
_RERUN = sorted(TERMINAL)
_FAIL = [BLOCKED]


@dataclass(frozen=True)
class RunRef:
    """The run a fenced write speaks for: the execution and the run's token."""

    execution_id: str
    token: int


@dataclass(frozen=True)
class Acquired:
    """A new run of an execution: its token, whether the deadline passed, its generation,
    its parent (for a child) and its journal."""

    token: int
    expired: bool
    generation: int
    parent_id: str | None
    journal: list[dict[str, Any]]
    #: Seconds since the execution was created.
    age_s: float = 0.0
    #: Seconds since the wake-up time it was suspended until, if any.
    lateness_s: float | None = None
    #: The concurrency key it holds a slot of, and how long it holds it ('open' or 'running').
    slot_key: str | None = None
    slot_scope: str | None = None


@dataclass(frozen=True)
class ParentLink:
    """Where a child execution belongs: its parent and the journal entry that waits for it."""

    execution_id: str
    step_key: str
    #: A detached child lives on when its parent ends.
    detached: bool = False


@dataclass(frozen=True)
class Cancelled:
    previous: str
    #: The pending wake-ups of the execution and of its attached descendants.
    wake_messages: list[int | None]
    parent_id: str | None
    #: The concurrency key whose slot it gave back, if it held one.
    slot: Slot | None = None


@dataclass(frozen=True)
class Reopened:
    previous: str
    #: The new wake sequence and resuming message; None when it could not be reopened.
    seq: int | None
    message: bytes | None


def create(
    store: Store,
    tx: Transaction,
    execution_id: str,
    actor: DurableActor,
    message: dramatiq.Message[Any],
    parent: ParentLink | None = None,
) -> bool:
    """Insert a pending execution of ``actor``, started by ``message``.

    An attached child without a timeout of its own inherits its parent's deadline.
    False if one with this id exists already.
    """
    args = list(message.args)
    timeout = actor.durable_timeout
    limit = actor.concurrency
    row = store.run(
        tx,
        "insert_execution",
        id=execution_id,
        actor_name=actor.actor_name,
        queue_name=actor.queue_name,
        input_hash=input_hash(args, message.kwargs),
        input={"args": args, "kwargs": message.kwargs},
        timeout_s=None if timeout is None else timeout.total_seconds(),
        message=message.encode(),
        parent_id=None if parent is None else parent.execution_id,
        parent_step=None if parent is None else parent.step_key,
        detached=parent is not None and parent.detached,
        slot_key=key_of(actor, args, message.kwargs),
        slot_scope=None if limit is None else limit.scope,
        priority=message.options.get(PRIORITY, actor.priority),
    )
    return row is not None


def acquire(store: Store, execution_id: str, seq: int, worker_id: UUID) -> Acquired | None:
    """Any active status -> running, for a new run; None if this delivery may not take it.

    The caller guarantees no run of this execution is active in this process,
    so an execution still held by this worker is an ended run's leftover.
    """
    # The journal by a statement of its own: acquire may have waited for the lock of
    # a run that recorded a step as it committed, which acquire's snapshot predates.
    row, journal = store.write_then_read(
        "acquire", "journal", id=execution_id, seq=seq, worker_id=worker_id, sources=_ACQUIRE
    )
    if row is None:
        return None
    assert journal is not None
    return Acquired(
        token=row[0],
        expired=row[1],
        generation=row[2],
        parent_id=row[3],
        journal=journal[0],
        age_s=row[4],
        lateness_s=row[5],
        slot_key=row[6],
        slot_scope=row[7],
    )


def suspend(
    store: Store,
    tx: Transaction,
    run: RunRef,
    *,
    status: str,
    seq: int,
    message: bytes,
    waiting_for: str | None = None,
    wake_at: datetime | None = None,
    wake_in_s: float | None = None,
) -> int | None:
    """running -> sleeping, waiting, retrying or blocked (its replay diverged from the
    journal at ``waiting_for``); return ms until the resuming message is due.

    None means only an event can wake it.
    """
    assert status in (SLEEPING, WAITING, RETRYING, BLOCKED)
    row = store.run(
        tx,
        "suspend",
        id=run.execution_id,
        token=run.token,
        status=status,
        seq=seq,
        waiting_for=waiting_for,
        wake_at=wake_at,
        wake_in_s=wake_in_s,
        message=message,
        sources=_RUN_ONLY,
    )
    if row is None:
        raise _refused(store, tx, run)
    return row[0]  # type: ignore[no-any-return]


def finish(
    store: Store,
    tx: Transaction,
    run: RunRef,
    status: str,
    *,
    delivery: str,
    parent_id: str | None = None,
    result: Any = None,
    error: dict[str, Any] | None = None,
) -> list[int | None]:
    """running -> completed, failed or timed_out; a cancel that came first wins.

    Its attached children end with it (cancelled); returns their pending wake-ups.
    """
    assert status in (COMPLETED, FAILED, TIMED_OUT)
    if parent_id is not None:
        store.run(tx, "lock_execution", id=parent_id)
    row = store.run(
        tx,
        "finish",
        id=run.execution_id,
        token=run.token,
        status=status,
        result=result,
        error=error,
        delivery=delivery,
        sources=_RUN_ONLY,
    )
    if row is None:
        raise _refused(store, tx, run)
    return _cancel_descendants(store, tx, run.execution_id)


def continue_as_new(
    store: Store, tx: Transaction, run: RunRef, *, seq: int, input: Any, message: bytes
) -> int:
    """running -> pending, as the next generation: new input, an empty journal; return it.

    The inbox is kept: events not yet consumed wait for the new generation.
    """
    row = store.run(
        tx,
        "continue_as_new",
        id=run.execution_id,
        token=run.token,
        seq=seq,
        input=input,
        message=message,
        sources=_RUN_ONLY,
    )
    if row is None:
        raise _refused(store, tx, run)
    return row[0]  # type: ignore[no-any-return]


def fail(
    store: Store, tx: Transaction, execution_id: str, error: dict[str, Any]
) -> Cancelled | None:
    """blocked -> failed, by an operator, with ``error``; its attached descendants are cancelled.

    None if no execution has this id. Like a cancel, returns the pending wake-ups to drop.
    """
    store.run(tx, "lock_parent_of", id=execution_id)
    row = store.run(tx, "fail_blocked", id=execution_id, error=error, sources=_FAIL)
    if row is None:
        return None
    previous, wake_message, parent_id, actor_name, slot_key = row[:5]
    if previous not in _FAIL:
        return Cancelled(previous, [], parent_id)
    slot = None if slot_key is None else Slot(actor_name, slot_key, "open")
    return Cancelled(
        previous, [wake_message, *_cancel_descendants(store, tx, execution_id)], parent_id, slot
    )


def release_owner(store: Store, run: RunRef) -> None:
    """A stopped run lets go of its execution (which is no longer running)."""
    store.write("release_owner", id=run.execution_id, token=run.token)


def abandon(store: Store, tx: Transaction, run: RunRef) -> tuple[int, bytes] | None:
    """running -> retrying for a run that ended unrecorded; return (seq, resuming message)."""
    row = store.run(tx, "abandon", id=run.execution_id, token=run.token, sources=_RUN_ONLY)
    return None if row is None else (row[0], row[1])


def cancel(store: Store, tx: Transaction, execution_id: str) -> Cancelled | None:
    """Any active status -> cancelled, with its attached descendants.

    None if no execution has this id. A running body is refused at its next write.
    """
    store.run(tx, "lock_parent_of", id=execution_id)
    row = store.run(tx, "cancel", id=execution_id, sources=_CANCEL)
    if row is None:
        return None
    previous, wake_message, parent_id, actor_name, slot_key = row[:5]
    if previous in TERMINAL:
        return Cancelled(previous, [], parent_id)
    # Any scope: a waiter's place is given up too. (Descendants' keys: the sweeper.)
    slot = None if slot_key is None else Slot(actor_name, slot_key, "open")
    return Cancelled(
        previous, [wake_message, *_cancel_descendants(store, tx, execution_id)], parent_id, slot
    )


def _cancel_descendants(store: Store, tx: Transaction, execution_id: str) -> list[int | None]:
    """Active attached descendants -> cancelled; return their pending wake-ups."""
    rows = store.run_all(tx, "cancel_descendants", id=execution_id, sources=_CANCEL)
    return [row[0] for row in rows]


def reopen(store: Store, tx: Transaction, execution_id: str) -> Reopened | None:
    """failed, cancelled or timed_out -> pending; None if no execution has this id."""
    row = store.run(tx, "reopen", id=execution_id, sources=_REOPEN)
    return None if row is None else Reopened(previous=row[0], seq=row[1], message=row[2])


def rerun(store: Store, tx: Transaction, execution_id: str, step_key: str) -> Reopened | None:
    """Any ended status -> pending, forgetting journal entry ``step_key`` and those after it.

    None if no execution has this id; a Reopened with no seq if it has not ended.
    """
    row = store.run(tx, "rerun_from", id=execution_id, key=step_key, sources=_RERUN)
    return None if row is None else Reopened(previous=row[0], seq=row[1], message=row[2])


def _refused(store: Store, tx: Transaction, run: RunRef) -> Refused:
    row = store.run(tx, "fence_state", id=run.execution_id)
    status = None if row is None else row[0]
    if status == CANCELLED:
        return Refused(f"execution {run.execution_id!r} was cancelled")
    if row is not None and row[1] != run.token:
        return Refused(f"execution {run.execution_id!r} was taken over by another run")
    return Refused(f"execution {run.execution_id!r} is {status}, no longer running here")
