"""Transactional steps: ``zart.transactional_step``, business writes and checkpoint in one commit.

A plain step's function may run twice: once before a crash that came between
its effect and its checkpoint, once after. A transactional step's function
writes through the connection of the transaction that also records the
step, so its writes and its checkpoint commit together or not at all, and
once committed the step is replayed from the journal: its writes happen
exactly once.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg.pq import TransactionStatus

from .errors import NotAllowedInStep, SerializationError, StepResultTooLarge, ZartError
from .limits import json_size
from .run import Run, current_run
from .serialization import dump, error_to_json
from .signals import Interrupted, Refused
from .steps import check_same_fn, qualified_name, recorded_outcome, return_annotation
from .store import Transaction, transient

T = TypeVar("T")


def transactional_step(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(conn, *args, **kwargs)``, whose writes on ``conn`` commit with the step's checkpoint.

    ``conn`` is the psycopg connection of the transaction that records the
    step: the step's writes and its checkpoint commit together, so after any
    crash they happened exactly once. The result is restored through ``fn``'s
    return annotation, as for ``zart.step``.

    The transaction is in the database that keeps the executions (always
    PostgreSQL, whatever the broker): only tables in that database are
    written exactly once. ``fn`` must not commit, roll back or reconfigure
    ``conn``; ``with conn.transaction():`` inside it is a savepoint, and
    ``conn.cursor(row_factory=...)`` gives rows of another shape.

    If ``fn`` raises, its writes are rolled back and the error is recorded as
    the step's outcome: it is raised now and on every replay, as for an
    exhausted step. A serialization failure, a deadlock or a lost connection
    is the database's, not ``fn``'s: the whole transaction runs again, ``fn``
    included. If the run lost the execution while ``fn`` ran (a cancel, a
    takeover), nothing is committed and the run stops.
    """
    run = current_run()
    if not callable(fn):
        # Running the body again cannot fix its code: the execution fails at once.
        raise run.final(
            TypeError(
                f"zart.transactional_step({name!r}, ...) takes a function of the connection, "
                f"not {type(fn).__name__} {fn!r}"
            )
        )
    if inspect.iscoroutinefunction(fn):
        raise run.final(
            TypeError(
                f"zart.transactional_step({name!r}, ...) got the async function {fn.__qualname__}: "
                "its connection is a synchronous psycopg one, so make it a plain def (in an "
                "async body, zart.aio.transactional_step runs it in a helper thread, off the "
                "event loop)"
            )
        )
    if run.step_in_flight is not None:
        raise NotAllowedInStep(
            f"zart.transactional_step was called inside step {run.step_in_flight!r}: its "
            "transaction would commit apart from that step's outcome. Call it in the durable "
            "actor's body."
        )
    key = run.key("step", name)
    fn_name = qualified_name(fn)
    annotation = return_annotation(fn)
    recorded = run.journal.get(key)
    if recorded is None or recorded["status"] not in ("completed", "failed"):
        attempt = _Attempt(run, key, name, fn, fn_name, annotation, args, kwargs)
        outcome = run.store.atomically(attempt.commit)
        if outcome.error is not None:
            raise run.final(outcome.error)
        return outcome.value  # type: ignore[no-any-return]
    check_same_fn(run, key, name, recorded, fn_name)
    return recorded_outcome(run, name, recorded, annotation)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Ran:
    """The function ran in this run, and its outcome is what the step recorded."""

    value: Any = None
    error: Exception | None = None


@dataclass
class _Attempt:
    """One transactional step, committed (or tried again whole) by ``Store.atomically``."""

    run: Run
    key: str
    name: str
    fn: Callable[..., Any]
    fn_name: str
    annotation: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int = 0
    started: float = 0.0

    def commit(self, tx: Transaction) -> _Ran:
        """Run ``fn`` and record its outcome in ``tx``."""
        run = self.run
        if not self.attempts:
            self.started = time.monotonic()
        self.attempts += 1
        outcome, data = self._call(tx)
        # Locked only now, so that a cancel need not wait for fn: one that came
        # first refuses this commit, and fn's writes roll back with it.
        if run.store.run(tx, "lock_current", id=run.execution_id, token=run.token) is None:
            raise Refused(f"execution {run.execution_id!r} moved on; this run stops")
        run.record(
            self.key,
            kind="step",
            name=self.name,
            fn=self.fn_name,
            status="completed" if outcome.error is None else "failed",
            result=data,
            error=None if outcome.error is None else error_to_json(outcome.error),
            attempts=self.attempts,
            started=self.started,
            tx=tx,
        )
        return outcome

    def _call(self, tx: Transaction) -> tuple[_Ran, Any]:
        """``fn``'s outcome and its result as JSON; a failed ``fn``'s writes are rolled back."""
        run, conn = self.run, tx.conn
        ours = {name: setting for name, setting, _ in run.store.run_all(tx, "plan_normally")}
        rows = conn.row_factory
        ran = False
        try:
            with conn.transaction():  # a savepoint: rolled back if fn raises
                with run.running_step(self.name):
                    value = self.fn(conn, *self.args, **self.kwargs)
                ran = True
                if conn.info.transaction_status == TransactionStatus.INERROR:
                    raise ZartError(
                        f"a statement of step {self.name!r} failed and its function went on "
                        "(it caught the error), so its transaction cannot commit. Run a "
                        "statement that may fail in `with conn.transaction():` to go on after it."
                    )
                data = dump(value, self.annotation, what=f"step {self.name!r}")
                size = json_size(data)
                if size > run.limits.payload_bytes:
                    # It would return as much again: the step fails for good, its writes undone.
                    raise StepResultTooLarge(self.name, size, run.limits.payload_bytes)
        except Exception as error:
            if (
                isinstance(error, Interrupted)
                or (ran and isinstance(error, SerializationError))
                or transient(error)
            ):
                # Not fn's outcome: a pause, a result its annotation cannot carry (a bug in
                # the code, as for steps), or the database's trouble (all runs again; so
                # does a lost connection, when the next statement fails).
                raise
            outcome, data = _Ran(error=error), None
        else:
            outcome = _Ran(value=value)
        finally:
            conn.row_factory = rows  # a pooled connection: ours again
        run.store.run(tx, "plan_as_before", **ours)
        return outcome, data
