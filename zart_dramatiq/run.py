"""One run of a durable body: its journal, its checkpoints and how it pauses.

A run starts when a delivery of the execution's message takes the body
(``lifecycle.acquire``), replays completed steps from the journal loaded in
that same round trip, runs the first unfinished step, and ends by
completing, failing, or suspending until a time or an event. Every write of
the run names its token, so a run that lost the execution stops at its next
write.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import dramatiq
from dramatiq import MessageProxy

from . import concurrency, lifecycle
from .body_retries import RETRIES
from .concurrency import Slot
from .errors import JournalTooLarge, NonDeterminismError, NotAllowedOnEventLoop, NotInExecution
from .lifecycle import RunRef
from .limits import DEFAULT_LIMITS, Limits
from .signals import Blocked, ContinuedAsNew, DeadlinePassed, Refused, Suspended
from .store import StepRecord, Store, Transaction
from .timeline import Timeline
from .transport import Transport

#: Message options that tie a delivery to its execution.
EXECUTION_ID = "zart_execution_id"
SEQ = "zart_seq"
#: Tells one sent copy of an execution's message from another (a redelivery keeps it).
DELIVERY = "zart_delivery"

_current: ContextVar[Run | None] = ContextVar("zart_current_run", default=None)


def delivery_id(message: dramatiq.Message[Any] | MessageProxy) -> str:
    """Which sent copy ``message`` is: the same for every redelivery of it."""
    return str(message.options.get(DELIVERY) or message.message_id)


def continuation(message: dramatiq.Message[Any] | MessageProxy, **options: Any) -> Any:
    """A new copy of an execution's message, with ``options`` set, to be sent once."""
    return message.copy(options={**options, DELIVERY: uuid.uuid4().hex})


@dataclass(frozen=True)
class Recorded:
    """A step's outcome as the journal has it."""

    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    wake_at: datetime | None = None


@dataclass
class Run:
    execution_id: str
    seq: int
    token: int
    #: How many times the execution continued as new before this run.
    generation: int
    #: The execution that started this one as its child, if any.
    parent_id: str | None
    delivery: MessageProxy
    store: Store
    transport: Transport
    journal: dict[str, dict[str, Any]]
    limits: Limits = DEFAULT_LIMITS
    occurrences: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: The name of the step whose function runs now, if any.
    step_in_flight: str | None = None
    #: Set once the run's suspension has committed; a body that swallowed it cannot go on.
    suspension: Suspended | None = None
    #: Errors raised from recorded failures: if the body ends with one, it ends failed.
    final_errors: list[BaseException] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    #: The execution's age when this run took it, in seconds.
    age_s: float = 0.0
    #: The concurrency key its execution counts against, if its actor is limited.
    slot: Slot | None = None
    #: Set once the replay departed from the journal: the run records nothing more, and
    #: every later zart call (and the body's end) raises it again.
    divergence: NonDeterminismError | None = None
    #: The journal's recorded order, which this run's calls are checked against.
    timeline: Timeline = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.timeline = Timeline(self.journal)

    @property
    def actor(self) -> str:
        return str(self.delivery.actor_name)

    @property
    def ref(self) -> RunRef:
        return RunRef(self.execution_id, self.token)

    def key(self, kind: str, name: str) -> str:
        """The journal key of the next ``kind`` called ``name``: repeats get ``#2``, ``#3``..."""
        self.ensure_active()
        self.occurrences[kind, name] += 1
        count = self.occurrences[kind, name]
        key = f"{kind}:{name}" if count == 1 else f"{kind}:{name}#{count}"
        # Refused before anything runs or is written: deterministic, so it fails the execution.
        limit = self.limits.journal_entries
        if key not in self.journal and len(self.journal) >= limit:
            raise self.final(JournalTooLarge(self.execution_id, key, len(self.journal), limit))
        if self.step_in_flight is not None:
            self.timeline.nested(key)  # part of that step: replayed with it, not in order
        else:
            try:
                self.timeline.call(key)
            except NonDeterminismError as error:
                raise self.diverge(error) from None
        return key

    def ensure_active(self) -> None:
        if self.suspension is not None:
            raise self.suspension
        if self.divergence is not None:
            raise self.divergence

    def diverge(self, error: NonDeterminismError) -> NonDeterminismError:
        """Note that the replay departed from the journal (at ``error.step``); return the
        error to raise. Nothing of the call runs or is written, and the run writes nothing
        more but its end: the runner parks the execution as blocked."""
        if self.divergence is None:
            self.divergence = error
        return self.divergence

    def check_replayed(self) -> None:
        """At the body's end: raise the divergence if it left journal entries unreplayed."""
        error = self.timeline.end()
        if error is not None:
            raise self.diverge(error)

    @contextmanager
    def running_step(self, name: str) -> Iterator[None]:
        """Mark the function of step ``name`` as running, for the duration."""
        outer, self.step_in_flight = self.step_in_flight, name
        try:
            yield
        finally:
            self.step_in_flight = outer

    def seconds_since(self, entry: dict[str, Any]) -> float:
        """Seconds since the journal ``entry`` was first recorded, by the database's clock."""
        return float(entry.get("elapsed_s") or 0.0) + (time.monotonic() - self.started)

    def final(self, error: BaseException) -> BaseException:
        """Note ``error`` as raised from a recorded failure; return it."""
        self.final_errors.append(error)
        return error

    def record(
        self,
        key: str,
        *,
        kind: str,
        name: str,
        status: str,
        fn: str | None = None,
        result: Any = None,
        error: dict[str, Any] | None = None,
        attempts: int = 1,
        started: float | None = None,
        wake_in_s: float | None = None,
        tx: Transaction | None = None,
    ) -> Recorded:
        """Checkpoint a step outcome and return the step as recorded.

        A step recorded before (by a run whose write raced this one) keeps
        its outcome, and the body goes on with that. Raises Refused if this
        run no longer holds the execution, DeadlinePassed past the deadline.
        """
        checkpoint = self.store.record_step(
            StepRecord(
                execution_id=self.execution_id,
                token=self.token,
                key=key,
                kind=kind,
                name=name,
                fn=fn,
                status=status,
                result=result,
                error=error,
                attempts=attempts,
                duration_ms=0 if started is None else (time.monotonic() - started) * 1000,
                wake_in_s=wake_in_s,
                position=self.timeline.positions.get(key),
            ),
            tx,
        )
        if not checkpoint.current:
            raise Refused(f"execution {self.execution_id!r} moved on; this run stops")
        assert checkpoint.step_status is not None
        recorded = Recorded(
            checkpoint.step_status, checkpoint.result, checkpoint.error, checkpoint.wake_at
        )
        self.journal[key] = {
            "status": recorded.status,
            "result": recorded.result,
            "error": recorded.error,
            "fn": fn,
        }
        if checkpoint.status == lifecycle.CANCELLED:
            raise Refused(f"execution {self.execution_id!r} was cancelled; this run stops")
        if checkpoint.expired:
            raise DeadlinePassed(f"execution {self.execution_id!r} passed its deadline")
        return recorded

    def suspend(
        self,
        tx: Transaction,
        *,
        status: str,
        wake_at: datetime | None = None,
        wake_in_s: float | None = None,
        waiting_for: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Release the body until its wake-up (or an event), inside ``tx``.

        The checkpoint, the resuming message and the ack of this delivery
        commit together on broker_pg. Once ``tx`` commits, the run is paused:
        ``ensure_active`` raises the suspension.
        """
        seq = self.seq + 1
        resume = continuation(
            self.delivery, **{EXECUTION_ID: self.execution_id, SEQ: seq, **(options or {})}
        )
        delay_ms = lifecycle.suspend(
            self.store,
            tx,
            self.ref,
            status=status,
            seq=seq,
            message=resume.encode(),
            waiting_for=waiting_for,
            wake_at=wake_at,
            wake_in_s=wake_in_s,
        )
        send_resume(self.store, self.transport, tx, self.execution_id, resume, delay_ms)
        self._leave_running_slot(tx)
        self.transport.settle(tx, self.delivery)
        signal = Blocked if status == lifecycle.BLOCKED else Suspended
        suspension = signal(f"execution {self.execution_id!r} is {status}")
        tx.after_commit.append(lambda: self._suspended(suspension))

    def continue_as_new(
        self, tx: Transaction, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """End the run and start the execution afresh with this (JSON) input, inside ``tx``.

        The new generation's journal is empty and its inbox is this one's. Its
        first message, the transition and the ack of this delivery commit
        together on broker_pg; once ``tx`` commits, ``ensure_active`` raises.
        """
        seq = self.seq + 1
        # A new body: Dramatiq's retries of this one do not carry over.
        first = continuation(
            self.delivery.copy(args=args, kwargs=kwargs),
            **{EXECUTION_ID: self.execution_id, SEQ: seq, RETRIES: 0},
        )
        generation = lifecycle.continue_as_new(
            self.store,
            tx,
            self.ref,
            seq=seq,
            input={"args": list(args), "kwargs": kwargs},
            message=first.encode(),
        )
        send_resume(self.store, self.transport, tx, self.execution_id, first, 0)
        self._leave_running_slot(tx)
        self.transport.settle(tx, self.delivery)
        continued = ContinuedAsNew(
            f"execution {self.execution_id!r} continues as new, in generation {generation}"
        )
        tx.after_commit.append(lambda: self._suspended(continued))

    def _leave_running_slot(self, tx: Transaction) -> None:
        # A slot counted while running was given back by the transition: pass it on.
        if self.slot is not None and self.slot.scope == "running":
            admit_waiters(self.store, self.transport, tx, self.slot)

    def _suspended(self, suspension: Suspended) -> None:
        # Results must not store this delivery's (absent) result; the resumed one will.
        end_quietly(self.delivery)
        self.suspension = suspension


def send_resume(
    store: Store,
    transport: Transport,
    tx: Transaction,
    execution_id: str,
    message: dramatiq.Message[Any],
    delay_ms: int | None,
) -> None:
    """Send the message that resumes ``execution_id`` (parked when ``delay_ms`` is None).

    On broker_pg its row is remembered, so a cancel or an event can find it.
    """
    row_id = transport.send(tx, message, delay_ms)
    if row_id is not None:
        store.run(tx, "set_wake_message", id=execution_id, row_id=row_id)


def resume_now(
    store: Store, transport: Transport, tx: Transaction, payload: bytes, seq: int
) -> str:
    """Send an execution's recorded resuming message (``payload``) as wake-up ``seq``, due
    now; return the execution's id."""
    message = continuation(dramatiq.Message.decode(payload), **{SEQ: seq})
    execution_id = str(message.options[EXECUTION_ID])
    send_resume(store, transport, tx, execution_id, message, 0)
    return execution_id


def resend_overdue(
    store: Store,
    transport: Transport,
    grace_s: float,
    *,
    execution_id: str | None = None,
    actor: str | None = None,
    limit: int | None = 1000,
) -> list[str]:
    """Send again the resuming messages that are ``grace_s`` seconds overdue; return whose.

    Only executions that are not paused, optionally only ``execution_id`` or
    only ``actor``'s, at most ``limit``. A copy still on its way is harmless:
    ``wake_seq`` fences it.
    """

    def resend(tx: Transaction) -> list[str]:
        params = dict(grace_s=grace_s, id=execution_id, actor=actor, limit=limit)
        resent = []
        for payload, seq in store.run_all(tx, "overdue_wakeups", **params):
            resent.append(resume_now(store, transport, tx, payload, seq))
        return resent

    return store.atomically(resend)


def admit_waiters(
    store: Store,
    transport: Transport,
    tx: Transaction,
    slot: Slot,
    *,
    max: int | None = None,
    keep: str | None = None,
) -> list[str]:
    """Admit the waiters of ``slot``'s key it has room for and send them their resuming
    messages (all but ``keep``, which the caller runs now); return them."""
    admitted = []
    for waiter in concurrency.admit(store, tx, slot, max):
        if waiter.execution_id != keep:
            resume_now(store, transport, tx, waiter.message, waiter.seq)
        admitted.append(waiter.execution_id)
    return admitted


def end_quietly(delivery: MessageProxy) -> None:
    """Mark a delivery that ends without a result: Results stores nothing, logs stay calm."""
    delivery.options["store_results"] = False
    delivery.zart_interrupted = True  # type: ignore[attr-defined]


def current_run(*, blocking: bool = True) -> Run:
    """The run of the durable body executing in this context.

    ``blocking``: the caller waits for the database, so it is refused on a
    running event loop (an async body), which it would hold up, and with it
    every async actor of the process.
    """
    run = _current.get()
    if run is None:
        raise NotInExecution(
            "zart.step, zart.sleep and zart.wait_for_event can only be called from the "
            "body of a durable actor (decorate it with @zart.durable) while a worker runs it."
        )
    if blocking and _on_event_loop():
        # Running the body again cannot fix its code: the execution fails at once.
        raise run.final(
            NotAllowedOnEventLoop(
                "this zart call waits for PostgreSQL: in an async durable body it would block "
                "the event loop, and every async actor of the process with it. Await its "
                "zart.aio form instead, e.g. `await zart.aio.step(...)` for zart.step(...) "
                "(zart.context() and zart.call() stay as they are)."
            )
        )
    return run


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def in_execution() -> bool:
    """Whether a durable body is executing in this context."""
    return _current.get() is not None


def active_run() -> Run | None:
    """The run of the durable body executing in this context, if any."""
    return _current.get()


def activate(run: Run | None) -> Any:
    return _current.set(run)


def deactivate(token: Any) -> None:
    _current.reset(token)
