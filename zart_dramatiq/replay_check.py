"""Replay recorded executions against the code of this process, with no side effect.

``zart.replay_check()`` (and ``zart-dramatiq replay-check --app myapp``) loads
the journals of the executions still open, and of those that ended recently,
and runs each body against the code imported here, as a worker's replay would:
every call must find its entry where the journal recorded it (``timeline``),
and each step returns its recorded value. Nothing is written and nothing is
sent: the replay stops, cleanly, where a worker would run something new or
write (a step not recorded yet, a sleep or a wait to begin, the end of the
journal), and reports the first entry where the code departs from the journal.
Run it in CI, or before a deploy, against a copy of production's executions.

Code outside steps runs, as in any replay: it must not have side effects.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn, cast

import dramatiq
from dramatiq import MessageProxy

from .errors import NonDeterminismError
from .middleware import middleware_for
from .run import Run, activate, deactivate
from .store import Store
from .transport import Transport

#: What a replay check finds for one execution.
CLEAN = "clean"
DIVERGED = "diverged"
ERROR = "error"
SKIPPED = "skipped"


@dataclass(frozen=True)
class ReplayResult:
    """One execution replayed against this process's code."""

    execution_id: str
    actor: str
    #: The execution's status.
    status: str
    #: clean: it replays; diverged: the code departs from its journal (``step``,
    #: ``kind``); error: the body raised what its journal does not explain;
    #: skipped: its actor is not declared here.
    outcome: str
    #: The first journal entry where the replay diverged, and how (NonDeterminismError).
    step: str | None = None
    kind: str | None = None
    message: str | None = None
    #: Journal entries the replay reached, of those it checks in order.
    replayed: int = 0
    entries: int = 0


@dataclass(frozen=True)
class ReplayReport:
    results: list[ReplayResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every execution whose actor is declared here replays cleanly."""
        return all(r.outcome in (CLEAN, SKIPPED) for r in self.results)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)


def replay_check(
    *,
    actor: str | None = None,
    limit: int = 1000,
    since: timedelta = timedelta(hours=24),
    broker: dramatiq.Broker | None = None,
) -> ReplayReport:
    """Replay the executions not ended, and those that ended within ``since``, newest
    first and at most ``limit`` (only ``actor``'s, if given), against the durable
    actors declared on ``broker`` (the global broker by default); write nothing.
    """
    broker = broker or dramatiq.get_broker()
    middleware = middleware_for(broker)
    store = middleware.store
    rows = store.fetchall(
        "replay_candidates", actor=actor, since_s=since.total_seconds(), limit=limit
    )
    return ReplayReport(
        [_replay(store, broker, middleware.limits, *row) for row in rows]  # type: ignore[misc]
    )


def _replay(
    store: Store,
    broker: dramatiq.Broker,
    limits: Any,
    execution_id: str,
    actor_name: str,
    status: str,
    input: dict[str, Any],
    resume_message: bytes,
    generation: int,
    runs: int,
    parent_id: str | None,
) -> ReplayResult:
    from .actor import DurableActor

    actor = broker.actors.get(actor_name)
    if not isinstance(actor, DurableActor):
        return ReplayResult(execution_id, actor_name, status, SKIPPED)
    row = store.fetchone("journal", id=execution_id)
    journal = {entry["key"]: entry for entry in (row[0] if row is not None else [])}
    run = _ReplayRun(
        execution_id=execution_id,
        seq=0,
        token=runs,
        generation=generation,
        parent_id=parent_id,
        delivery=MessageProxy(dramatiq.Message.decode(resume_message)),
        store=cast(Store, None),
        transport=cast(Transport, None),
        journal=journal,
        limits=limits,
    )
    run.store = cast(Store, _NoWrites(run))
    run.transport = cast(Transport, _NoWrites(run))

    def result(outcome: str, error: BaseException | None = None) -> ReplayResult:
        divergence = error if isinstance(error, NonDeterminismError) else None
        return ReplayResult(
            execution_id,
            actor_name,
            status,
            outcome,
            step=None if divergence is None else divergence.step,
            kind=None if divergence is None else divergence.kind,
            message=None if error is None else f"{type(error).__name__}: {error}",
            replayed=min(run.timeline.cursor, len(run.timeline.recorded)),
            entries=len(run.timeline.recorded),
        )

    with _active(run):
        try:
            args, kwargs = actor.load_arguments(tuple(input["args"]), input["kwargs"])
            _call(actor, args, kwargs)
            run.check_replayed()
        except _Stop:
            pass
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            # A recorded failure raised again ends the body as it ended before, if it
            # replayed every entry first; any other error that stops it short of that
            # is what this code would do to the execution.
            short = run.divergence is None and not run.ended and run.timeline.end() is not None
            if short and not _is_recorded(error, run):
                return result(ERROR, error)
            if short:
                with suppress(_Stop):
                    run.check_replayed()
    if run.divergence is not None:
        return result(DIVERGED, run.divergence)
    return result(CLEAN)


def _call(actor: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    fn = actor.original_fn
    if inspect.iscoroutinefunction(fn):
        # Its zart.aio calls run in helper threads, in this context.
        asyncio.run(fn(*args, **kwargs))
    else:
        actor.fn(*args, **kwargs)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_recorded(error: BaseException, run: Run) -> bool:
    """Whether ``error`` comes from the journal (a recorded failure raised again)."""
    return any(any(e is final for final in run.final_errors) for e in _chain(error))


@contextmanager
def _active(run: Run) -> Iterator[None]:
    context = activate(run)
    try:
        yield
    finally:
        deactivate(context)


class _Stop(BaseException):
    """Ends a replay check's body: it diverged, or it reached what a worker would run anew.

    Not an Exception, so that the body's own ``except Exception`` does not take it
    for a failure of its step and run its error handling.
    """


@dataclass
class _ReplayRun(Run):
    """A run that replays its journal and stops before anything would run or be written."""

    #: Whether the replay reached what a worker would run anew (the end of the journal).
    ended: bool = False

    def key(self, kind: str, name: str) -> str:
        key = super().key(kind, name)
        entry = self.journal.get(key)
        if entry is None or (kind == "step" and entry["status"] not in ("completed", "failed")):
            self._end()  # its function would run now
        return key

    def ensure_active(self) -> None:
        if self.ended:
            raise _Stop("the replay reached the end of the journal")
        super().ensure_active()

    def diverge(self, error: NonDeterminismError) -> NoReturn:
        super().diverge(error)
        raise _Stop(str(error))

    def record(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._end()

    def suspend(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._end()

    def continue_as_new(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._end()

    def _end(self) -> NoReturn:
        self.ended = True
        raise _Stop("the replay reached the end of the journal")


class _NoWrites:
    """The store and transport of a replay check: whatever would use them ends the replay."""

    def __init__(self, run: _ReplayRun) -> None:
        self._run = run

    def __getattr__(self, name: str) -> NoReturn:
        self._run._end()
