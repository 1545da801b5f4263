"""Starting executions and talking to them from anywhere: code, CLI, HTTP handlers."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dramatiq

from . import children, lifecycle, pauses, retention, versioning
from .actor import DurableActor
from .errors import (
    ExecutionConflict,
    ExecutionFailed,
    ExecutionFinished,
    NonDeterminismError,
    ResultTimeout,
    UnknownActor,
    UnknownExecution,
    ZartError,
)
from .joins import child_ended, discard_wakeups
from .lifecycle import TERMINAL
from .middleware import DurableMiddleware, middleware_for
from .pauses import PausedActor
from .run import EXECUTION_ID, SEQ, admit_waiters, continuation
from .serialization import dump, error_to_json, input_hash, load
from .store import RESULT_WAITER, Transaction
from .tracing import TRACE, carrier
from .versioning import BlockInfo


@dataclass(frozen=True)
class StepInfo:
    key: str
    kind: str
    name: str
    fn: str | None
    status: str
    result: Any
    error: dict[str, Any] | None
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    wake_at: datetime | None


@dataclass(frozen=True)
class BranchInfo:
    index: int
    name: str
    #: pending (not sent yet), queued, completed, failed or skipped.
    status: str
    attempts: int
    error: dict[str, Any] | None


@dataclass(frozen=True)
class GroupInfo:
    """A parallel group or map of the execution, with its branches."""

    key: str
    mode: str
    status: str
    size: int
    #: Branches that have not ended.
    open: int
    max_concurrency: int | None
    #: For a 'first' group, the branch that won.
    winner: int | None
    branches: tuple[BranchInfo, ...]


@dataclass(frozen=True)
class ChildInfo:
    """A child execution started by the execution."""

    id: str
    actor_name: str
    status: str
    #: The parent's journal entry that waits for it.
    step_key: str | None
    detached: bool
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class EventInfo:
    """An event in an execution's inbox."""

    name: str
    key: str | None
    payload: Any
    sent_at: datetime
    #: The journal key of the wait that took it; None while it waits for one.
    consumed_by: str | None


@dataclass(frozen=True)
class ExecutionInfo:
    id: str
    actor_name: str
    queue_name: str
    status: str
    input: Any
    result: Any
    error: dict[str, Any] | None
    deadline: datetime | None
    waiting_for: str | None
    wake_at: datetime | None
    runs: int
    #: How many times the execution continued as new (``zart.continue_as_new``).
    generation: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: The execution that started this one as its child (``zart.start_child``).
    parent_id: str | None
    #: A detached child lives on when its parent ends.
    detached: bool
    #: When an operator paused it (``zart.pause``); None while it may run.
    paused_at: datetime | None = None
    steps: tuple[StepInfo, ...] = ()
    groups: tuple[GroupInfo, ...] = ()
    children: tuple[ChildInfo, ...] = ()
    inbox: tuple[EventInfo, ...] = ()
    #: For a blocked execution: where its replay diverged from its journal, and since when.
    blocked: BlockInfo | None = None


@dataclass(frozen=True)
class Page:
    """One page of executions, newest first (``search_executions``)."""

    items: list[ExecutionInfo]
    #: How many executions match the filters, over every page.
    total: int
    #: Pass as ``after`` for the next page; None on the last one.
    next_cursor: str | None


class ExecutionHandle:
    """A started execution: ask its status, wait for its result."""

    def __init__(
        self, execution_id: str, middleware: DurableMiddleware, actor: DurableActor | None = None
    ) -> None:
        self.execution_id = execution_id
        self._middleware = middleware
        self._actor = actor

    def __repr__(self) -> str:
        return f"ExecutionHandle({self.execution_id!r})"

    def status(self) -> str:
        row = self._middleware.store.fetchone("execution_status", id=self.execution_id)
        if row is None:
            raise UnknownExecution(f"no execution has id {self.execution_id!r}")
        return str(row[0])

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the execution to end; return its result, typed by the actor's annotation.

        Raises ExecutionFailed if it failed, was cancelled or timed out, and
        ResultTimeout if ``timeout`` seconds pass first.
        """
        store = self._middleware.store
        deadline = None if timeout is None else time.monotonic() + timeout
        # On the process's shared LISTEN session, which registers as a listener
        # (the end of an execution is notified only while one is registered).
        ended = store.db.notifications.subscribe(
            store.channel, payload=self.execution_id, announce=RESULT_WAITER
        )
        # Subscribed before looking: an end committed in between still wakes us.
        with ended:
            while True:
                row = store.fetchone("execution_status", id=self.execution_id)
                if row is None:
                    raise UnknownExecution(f"no execution has id {self.execution_id!r}")
                status, result, error = row
                if status == "completed":
                    annotation = self._actor.return_annotation if self._actor else Any
                    return load(result, annotation, what=f"the result of {self.execution_id!r}")
                if status in TERMINAL:
                    raise ExecutionFailed(self.execution_id, status, error)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(
                        f"execution {self.execution_id!r} is still {status} after {timeout}s"
                    )
                # At most 5 s: an end that checked for a listener just before the
                # session registered notified nobody.
                ended.wait(5.0 if remaining is None else min(remaining, 5.0))


def start(
    actor: DurableActor, *args: Any, execution_id: str | None = None, **kwargs: Any
) -> ExecutionHandle:
    """Start ``actor(*args, **kwargs)`` as a durable execution; idempotent by ``execution_id``.

    The same id with the same input returns the existing execution; with a
    different input it raises ExecutionConflict, and an input larger than the
    middleware's ``Limits.payload_bytes`` PayloadTooLarge, before anything is
    written. On broker_pg the execution and its first message commit together.
    """
    return start_with_options(actor, args=args, kwargs=kwargs, execution_id=execution_id)


def start_with_options(
    actor: DurableActor,
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    execution_id: str | None = None,
    priority: int | None = None,
) -> ExecutionHandle:
    """``start``, with options: ``priority`` orders the execution among others (lower
    first, as Dramatiq's actor priority; the actor's by default): broker_pg claims its
    messages in that order, and a concurrency key admits its waiters in it."""
    if not isinstance(actor, DurableActor):
        raise TypeError(f"{actor!r} is not durable: decorate it with @zart.durable")
    middleware = middleware_for(actor.broker)
    store = middleware.store
    with store.transaction() as tx:
        execution_id, created = start_in(
            tx, actor, args, kwargs or {}, execution_id=execution_id, priority=priority
        )
        if not created:
            existing = store.run(tx, "execution_identity", id=execution_id)
            assert existing is not None
            digest = input_hash(*actor.dump_input(args, kwargs or {}))
            if existing[0] != digest or existing[1] != actor.actor_name:
                raise ExecutionConflict(
                    f"execution {execution_id!r} already exists with a different "
                    f"{'actor' if existing[1] != actor.actor_name else 'input'}; "
                    "use a new execution_id to start another one."
                )
    return ExecutionHandle(execution_id, middleware, actor)


def start_in(
    tx: Transaction,
    actor: DurableActor,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    execution_id: str | None = None,
    priority: int | None = None,
) -> tuple[str, bool]:
    """Create an execution of ``actor`` and send its first message, in ``tx``; return its
    id and whether it was created (False, writing nothing, when that id exists already).

    Raises SerializationError or PayloadTooLarge if the input does not fit the actor.
    """
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        raise TypeError(f"priority must be a whole number (lower runs first), not {priority!r}")
    middleware = middleware_for(actor.broker)
    options = {} if priority is None else {lifecycle.PRIORITY: priority}
    message = actor.message_with_options(args=tuple(args), kwargs=dict(kwargs), **options)
    execution_id = execution_id or message.message_id
    # Its runs join the caller's trace, if the caller is in one.
    message = continuation(message, **{EXECUTION_ID: execution_id, SEQ: 0, TRACE: carrier()})
    if not lifecycle.create(middleware.store, tx, execution_id, actor, message):
        return execution_id, False
    middleware.transport.send(tx, message, 0)
    return execution_id, True


def get_handle(execution_id: str, *, broker: dramatiq.Broker | None = None) -> ExecutionHandle:
    """A handle on an existing execution, to ask its status or wait for its result.

    Raises UnknownExecution if no execution has this id. The result is typed by
    the actor's return annotation when the actor is declared in this process.
    """
    middleware = _middleware(broker)
    row = middleware.store.fetchone("execution_identity", id=execution_id)
    if row is None:
        raise UnknownExecution(f"no execution has id {execution_id!r}")
    actor = middleware.broker.actors.get(row[1]) if middleware.broker is not None else None
    return ExecutionHandle(
        execution_id, middleware, actor if isinstance(actor, DurableActor) else None
    )


def send_event(
    execution_id: str,
    name: str,
    payload: Any = None,
    key: str | None = None,
    *,
    broker: dramatiq.Broker | None = None,
) -> bool:
    """Deliver event ``name`` to an execution's inbox and wake it if it waits for it.

    Returns False when an event with the same ``key`` was already delivered
    (it is stored once), also once the execution has ended. Raises
    UnknownExecution, or ExecutionFinished if the execution ended — except a
    failed one, whose inbox still takes events: a corrected event followed by
    ``retry`` resumes it. A payload larger than the
    middleware's ``Limits.payload_bytes`` raises PayloadTooLarge, storing nothing.
    """
    middleware = _middleware(broker)
    store = middleware.store
    data = dump(payload, Any, what=f"the payload of event {name!r}")
    middleware.limits.check_payload(data, what=f"the payload of event {name!r}")
    with store.transaction() as tx:
        row = store.run(tx, "lock_for_event", id=execution_id)
        if row is None:
            raise UnknownExecution(
                f"cannot send event {name!r}: no execution has id {execution_id!r}"
            )
        status, waiting_for, wake_message, _seq, resume_message = row
        if status in TERMINAL and status != lifecycle.FAILED:
            if key is not None and store.run(tx, "event_key_taken", id=execution_id, key=key):
                return False  # a redelivery of an event it took: already stored, as answered
            raise ExecutionFinished(
                f"cannot send event {name!r}: execution {execution_id!r} already ended {status}"
            )
        stored = store.run(tx, "insert_event", id=execution_id, name=name, key=key, payload=data)
        if stored is not None and status == "waiting" and waiting_for == name:
            middleware.transport.wake(tx, wake_message, dramatiq.Message.decode(resume_message))
    return stored is not None


def cancel(execution_id: str, *, broker: dramatiq.Broker | None = None) -> str:
    """Cancel an execution and its attached children; return its status before.

    A finished one stays as it was. A running body is refused at its next
    checkpoint (or when it returns) and records nothing more; any pending
    wake-up is removed. A child's parent, if it waits for it, is woken.
    """
    middleware = _middleware(broker)
    store = middleware.store
    with store.transaction() as tx:
        cancelled = lifecycle.cancel(store, tx, execution_id)
        if cancelled is None:
            raise UnknownExecution(f"cannot cancel: no execution has id {execution_id!r}")
        discard_wakeups(middleware.transport, tx, cancelled.wake_messages)
        if cancelled.previous not in TERMINAL and cancelled.parent_id is not None:
            child_ended(store, middleware.transport, tx, execution_id)
        if cancelled.slot is not None:
            admit_waiters(store, middleware.transport, tx, cancelled.slot)
    return cancelled.previous


def unblock(execution_id: str, *, broker: dramatiq.Broker | None = None) -> bool:
    """Try the replay of a blocked execution now, rather than after its backoff.

    For code deployed that should replay it, when the deploy did not change its
    actor's fingerprint (a fix outside the actor's module: or set
    ``ZART_CODE_VERSION``). Returns False, doing nothing, if it is not blocked;
    raises UnknownExecution.
    """
    middleware = _middleware(broker)
    if versioning.unblock(middleware.store, middleware.transport, execution_id):
        return True
    if middleware.store.fetchone("execution_status", id=execution_id) is None:
        raise UnknownExecution(f"cannot unblock: no execution has id {execution_id!r}")
    return False


def fail(execution_id: str, reason: str, *, broker: dramatiq.Broker | None = None) -> None:
    """Give up on a blocked execution: it fails with ``reason``.

    Its error is a NonDeterminismError naming ``reason`` and where its replay
    diverged; its attached children are cancelled, a parent waiting for it gets
    the error, and ``zart.retry`` runs it again (once code replays it). Raises
    UnknownExecution, or ExecutionFinished if it has ended; only a blocked
    execution can be failed (cancel another).
    """
    middleware = _middleware(broker)
    store = middleware.store
    block = versioning.block_info(store, execution_id)
    where = "" if block is None else f"; its replay diverged at {block.step}: {block.message}"
    error = error_to_json(
        NonDeterminismError(
            f"failed by an operator: {reason}{where}", step=None if block is None else block.step
        )
    )
    with store.transaction() as tx:
        failed = lifecycle.fail(store, tx, execution_id, error)
        if failed is None:
            raise UnknownExecution(f"cannot fail: no execution has id {execution_id!r}")
        if failed.previous in TERMINAL:
            raise ExecutionFinished(
                f"cannot fail execution {execution_id!r}: it already ended {failed.previous}"
            )
        if failed.previous != lifecycle.BLOCKED:
            raise ZartError(
                f"cannot fail execution {execution_id!r}: it is {failed.previous}; only a "
                "blocked execution can be failed (cancel this one instead)"
            )
        discard_wakeups(middleware.transport, tx, failed.wake_messages)
        if failed.parent_id is not None:
            child_ended(store, middleware.transport, tx, execution_id)
        if failed.slot is not None:
            admit_waiters(store, middleware.transport, tx, failed.slot)


def retry(execution_id: str, *, broker: dramatiq.Broker | None = None) -> None:
    """Run a failed, cancelled or timed-out execution again from where it stopped.

    Completed steps keep their results; the step whose error failed the
    execution runs again. A cancelled body still running finishes its current
    step first: the new run starts once it has stopped. Raises
    UnknownExecution, or ExecutionFinished if the execution has not ended or
    completed successfully.
    """
    middleware = _middleware(broker)
    store = middleware.store
    with store.transaction() as tx:
        if not children.reopen(store, middleware.transport, tx, execution_id):
            row = store.run(tx, "execution_status", id=execution_id)
            if row is None:
                raise UnknownExecution(f"cannot retry: no execution has id {execution_id!r}")
            raise ExecutionFinished(
                f"cannot retry execution {execution_id!r}: it is {row[0]}; only "
                "failed, cancelled or timed-out executions can be retried"
            )


def rerun(execution_id: str, from_step: str, *, broker: dramatiq.Broker | None = None) -> str:
    """Run an ended execution again from step ``from_step`` on; return the step's journal key.

    ``from_step`` is a journal key (``step:charge``, as ``get_execution`` lists
    them) or a step's name (its first occurrence). The entries recorded before
    it keep their outcomes; it and every later one run again. Raises
    UnknownExecution, ExecutionFinished if the execution has not ended, and
    ValueError if it has no such step.
    """
    middleware = _middleware(broker)
    store = middleware.store
    with store.transaction() as tx:
        found = store.run(tx, "journal_key_of", id=execution_id, name=from_step)
        if found is None:
            if store.run(tx, "execution_status", id=execution_id) is None:
                raise UnknownExecution(f"cannot rerun: no execution has id {execution_id!r}")
            raise ValueError(
                f"execution {execution_id!r} has no step {from_step!r} in its journal: name one "
                "it recorded (get_execution lists them), or retry it instead"
            )
        key = str(found[0])
        rerun = lifecycle.rerun(store, tx, execution_id, key)
        if not children.reopen(store, middleware.transport, tx, execution_id, rerun):
            status = rerun.previous if rerun is not None else "unknown"
            raise ExecutionFinished(
                f"cannot rerun execution {execution_id!r}: it is {status}; only an execution "
                "that ended can run again (cancel it first)"
            )
    return key


def pause(execution_id: str, *, broker: dramatiq.Broker | None = None) -> None:
    """Hold an execution: no run of it starts, new or resumed, until ``resume``.

    Its workers refuse it wherever they take runs; a run already going
    continues to its next suspension. Raises UnknownExecution, or
    ExecutionFinished if it has ended.
    """
    pauses.pause_execution(_middleware(broker).store, execution_id)


def resume(execution_id: str, *, broker: dramatiq.Broker | None = None) -> bool:
    """Let a paused execution run again from where it was; harmless if it is not paused.

    Returns whether its wake-up had come due meanwhile (and was sent again).
    """
    middleware = _middleware(broker)
    return pauses.resume_execution(middleware.store, middleware.transport, execution_id)


def pause_actor(actor_name: str, *, broker: dramatiq.Broker | None = None) -> None:
    """Hold every execution of a durable actor, those started later too, until ``resume_actor``."""
    pauses.pause_actor(
        _middleware(broker).store, durable_actor(actor_name, broker=broker).actor_name
    )


def resume_actor(actor_name: str, *, broker: dramatiq.Broker | None = None) -> int:
    """Let a paused actor's executions run again; return how many wake-ups were due."""
    middleware = _middleware(broker)
    return pauses.resume_actor(middleware.store, middleware.transport, actor_name)


def paused_actors(*, broker: dramatiq.Broker | None = None) -> list[PausedActor]:
    """The actors paused by ``pause_actor``, by name."""
    return pauses.paused_actors(_middleware(broker).store)


def purge_executions(older_than: timedelta, *, broker: dramatiq.Broker | None = None) -> int:
    """Delete executions that ended more than ``older_than`` ago, with their steps and events.

    Running, sleeping and waiting executions are never touched. Returns how many
    were deleted. Workers do this by themselves past the DurableMiddleware's
    ``execution_retention``; this is for a shorter retention, once.
    """
    return retention.purge(_middleware(broker).store, older_than)


def get_execution(execution_id: str, *, broker: dramatiq.Broker | None = None) -> ExecutionInfo:
    """The execution's status, result or error, its steps with attempts and timings, its
    groups with their branches, and its children."""
    store = _middleware(broker).store
    row = store.fetchone("get_execution", id=execution_id)
    if row is None:
        raise UnknownExecution(f"no execution has id {execution_id!r}")
    steps = tuple(StepInfo(*step) for step in store.fetchall("get_steps", id=execution_id))
    groups = tuple(_group(*row) for row in store.fetchall("get_groups", id=execution_id))
    children = tuple(ChildInfo(*child) for child in store.fetchall("get_children", id=execution_id))
    inbox = tuple(EventInfo(*event) for event in store.fetchall("get_events", id=execution_id))
    info = ExecutionInfo(*row)
    blocked = versioning.block_info(store, execution_id) if info.status == "blocked" else None
    return dataclasses.replace(
        info, steps=steps, groups=groups, children=children, inbox=inbox, blocked=blocked
    )


def _group(
    key: str,
    mode: str,
    status: str,
    size: int,
    open: int,
    max_concurrency: int | None,
    winner: int | None,
    branches: list[dict[str, Any]],
) -> GroupInfo:
    """A row of get_groups, its branches as one JSON array."""
    return GroupInfo(
        key,
        mode,
        status,
        size,
        open,
        max_concurrency,
        winner,
        tuple(BranchInfo(**branch) for branch in branches),
    )


def list_executions(
    status: str | None = None, *, limit: int = 50, broker: dramatiq.Broker | None = None
) -> list[ExecutionInfo]:
    """Executions, newest first, optionally only those in ``status``."""
    store = _middleware(broker).store
    return [
        ExecutionInfo(*row) for row in store.fetchall("list_executions", status=status, limit=limit)
    ]


def search_executions(
    *,
    status: str | None = None,
    actor: str | None = None,
    id_prefix: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    finished_after: datetime | None = None,
    finished_before: datetime | None = None,
    error: str | None = None,
    limit: int = 50,
    after: str | None = None,
    broker: dramatiq.Broker | None = None,
) -> Page:
    """Executions matching every filter given, newest first, a page at a time.

    ``error`` matches text in the error (any case). ``after`` is the previous
    page's ``next_cursor``; a cursor that is not one raises ValueError.
    """
    after_created, after_id = _decode_cursor(after) if after is not None else (None, None)
    rows = _middleware(broker).store.fetchall(
        "search_executions",
        status=status,
        actor=actor,
        id_prefix=id_prefix,
        created_after=created_after,
        created_before=created_before,
        finished_after=finished_after,
        finished_before=finished_before,
        error=error,
        limit=limit,
        after_created=after_created,
        after_id=after_id,
    )
    total = int(rows[0][0])
    items = [ExecutionInfo(*row[1:]) for row in rows if row[1] is not None]
    cursor = _encode_cursor(items[-1]) if len(items) == limit else None
    return Page(items=items, total=total, next_cursor=cursor)


def _encode_cursor(last: ExecutionInfo) -> str:
    text = json.dumps([last.created_at.isoformat(), last.id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, execution_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), str(execution_id)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{cursor!r} is not a page cursor: pass the next_cursor of the page before"
        ) from e


def durable_actor(
    actor_name: str, *, broker: dramatiq.Broker | None = None, what: str = ""
) -> DurableActor:
    """The durable actor named ``actor_name`` on ``broker`` (the global one by default).

    Raises UnknownActor naming those it has, after ``what`` (the request it fails).
    """
    actors = (broker or dramatiq.get_broker()).actors
    actor = actors.get(actor_name)
    if not isinstance(actor, DurableActor):
        known = sorted(name for name, a in actors.items() if isinstance(a, DurableActor))
        raise UnknownActor(
            f"{what + ': ' if what else ''}no durable actor is named {actor_name!r} on this "
            f"broker; known: {', '.join(known) or 'none (import the module that declares it)'}"
        )
    return actor


def _middleware(broker: dramatiq.Broker | None) -> DurableMiddleware:
    """The durable middleware of ``broker``, by default the global broker's."""
    return middleware_for(broker or dramatiq.get_broker())
