"""One run of a durable body: its journal, its checkpoints and how it pauses.

A run starts when a delivery of the execution's message takes the body
(``acquire``), replays completed steps from the journal loaded in that same
round trip, runs the first unfinished step, and ends by completing, failing,
or suspending until a time or an event.
"""

from __future__ import annotations

import time
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from dramatiq import MessageProxy
from dramatiq.middleware import SkipMessage

from .errors import NotInExecution
from .store import StepRecord, Store, Transaction
from .transport import Transport

if TYPE_CHECKING:
    from .middleware import DurableMiddleware

#: Message options that tie a delivery to its execution.
EXECUTION_ID = "zart_execution_id"
SEQ = "zart_seq"

_current: ContextVar[Run | None] = ContextVar("zart_current_run", default=None)


class Suspended(SkipMessage):
    """The body paused durably; its resuming message is already scheduled.

    A SkipMessage, so Dramatiq's Retries, Callbacks, Pipelines and Results
    treat the delivery as neither a success nor a failure.
    """


class Stopped(SkipMessage):
    """The delivery has nothing (more) to run: cancelled, timed out, stale or duplicate."""


class DeadlinePassed(Stopped):
    """The execution passed its deadline; the runner records it as timed out."""


@dataclass
class Run:
    execution_id: str
    seq: int
    worker_id: UUID
    delivery: MessageProxy
    middleware: DurableMiddleware
    journal: dict[str, dict[str, Any]]
    occurrences: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Set once the run has paused; a body that swallowed Suspended cannot go on.
    suspension: Suspended | None = None

    @property
    def store(self) -> Store:
        return self.middleware.store

    @property
    def transport(self) -> Transport:
        return self.middleware.transport

    def key(self, kind: str, name: str) -> str:
        """The journal key of the next ``kind`` called ``name``: repeats get ``#2``, ``#3``..."""
        self.ensure_active()
        self.occurrences[kind, name] += 1
        count = self.occurrences[kind, name]
        return f"{kind}:{name}" if count == 1 else f"{kind}:{name}#{count}"

    def ensure_active(self) -> None:
        if self.suspension is not None:
            raise self.suspension

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
    ) -> datetime | None:
        """Checkpoint a step outcome; stop the body if it was cancelled or timed out.

        Returns the recorded wake-up time when ``wake_in_s`` was given.
        """
        record = StepRecord(
            execution_id=self.execution_id,
            worker_id=self.worker_id,
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
        )
        execution_status, expired, wake_at = self.store.record_step(record, tx)
        self.journal[key] = {"status": status, "result": result, "error": error, "fn": fn}
        if execution_status is None:
            raise Stopped(f"execution {self.execution_id!r} was taken over by another worker")
        if execution_status == "cancelled":
            raise Stopped(f"execution {self.execution_id!r} was cancelled")
        if expired:
            raise DeadlinePassed(f"execution {self.execution_id!r} passed its deadline")
        return wake_at

    def suspend(
        self,
        tx: Transaction,
        *,
        status: str,
        wake_at: datetime | None,
        waiting_for: str | None = None,
    ) -> Suspended:
        """Release the body until ``wake_at`` (or an event); return the exception to raise.

        Runs inside ``tx``: the checkpoint, the resuming message and the ack of
        this delivery commit together on broker_pg.
        """
        resume = self.delivery.copy(options={EXECUTION_ID: self.execution_id, SEQ: self.seq + 1})
        row = self.store.run(
            tx,
            "suspend",
            id=self.execution_id,
            worker_id=self.worker_id,
            status=status,
            seq=self.seq + 1,
            waiting_for=waiting_for,
            wake_at=wake_at,
            message=resume.encode(),
        )
        if row is None:
            raise Stopped(f"execution {self.execution_id!r} was taken over by another worker")
        row_id = self.transport.send(tx, resume, row[0])
        if row_id is not None:
            self.store.run(tx, "set_wake_message", id=self.execution_id, row_id=row_id)
        self.transport.settle(tx, self.delivery)
        # Results must not store this delivery's (absent) result; the resumed one will.
        end_quietly(self.delivery)
        self.suspension = Suspended(f"execution {self.execution_id!r} is {status}")
        return self.suspension


def end_quietly(delivery: MessageProxy) -> None:
    """Mark a delivery that ends without a result: Results stores nothing, logs stay calm."""
    delivery.options["store_results"] = False
    delivery.zart_paused = True  # type: ignore[attr-defined]


def current_run() -> Run:
    """The run of the durable body executing in this context."""
    run = _current.get()
    if run is None:
        raise NotInExecution(
            "zart.step, zart.sleep and zart.wait_for_event can only be called from the "
            "body of a durable actor (decorate it with @zart.durable) while a worker runs it."
        )
    return run


def in_execution() -> bool:
    """Whether a durable body is executing in this context."""
    return _current.get() is not None


def activate(run: Run | None) -> Any:
    return _current.set(run)


def deactivate(token: Any) -> None:
    _current.reset(token)
