"""One delivery of a durable actor: take the execution (fenced), run the body, end or pause it.

How a run ends:

* the body returns: the execution completes;
* the body pauses (sleep, event wait, step backoff) or continues as new
  (the execution starts afresh as its next generation): already committed;
* the body raises a recorded failure (an exhausted step, non-determinism, an
  event that fails its model) or an error Dramatiq would not retry: it fails,
  at once and for good, until ``zart.retry``;
* it raises anything else: it runs again after Dramatiq's backoff (see
  ``body_retries``), paused durably meanwhile;
* a write is refused (cancelled, taken over): the run stops and records nothing;
* the database stays unreachable: the delivery is handed back and the
  sweeper resumes the execution from its journal later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from dramatiq import MessageProxy
from dramatiq.results import Results

from broker_pg import DatabaseUnavailable

from . import concurrency, lifecycle, versioning
from .body_retries import RETRIES, retry_delay_ms
from .branches import BranchRunner, is_branch
from .concurrency import Limit, Scope, Slot
from .errors import NonDeterminismError, SerializationError
from .joins import child_ended, discard_wakeups
from .limits import Limits
from .metrics import observe
from .run import (
    EXECUTION_ID,
    SEQ,
    Run,
    activate,
    admit_waiters,
    continuation,
    deactivate,
    delivery_id,
    end_quietly,
)
from .serialization import dump, error_to_json
from .signals import Abandoned, DeadlinePassed, Interrupted, Refused, Stopped, Suspended
from .store import Store, Transaction
from .tracing import span
from .transport import Transport

if TYPE_CHECKING:
    from .actor import DurableActor

logger = logging.getLogger(__name__)

#: Seconds before a delivery deferred behind a run in this same process looks again.
LOCAL_DEFER_S = 2.0


class LocalRuns:
    """The executions whose body this process runs now: at most one run each."""

    def __init__(self) -> None:
        #: Execution id -> the thread running its body.
        self._runs: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, execution_id: str) -> Iterator[bool]:
        """Hold ``execution_id`` for a run in this thread; yield False if another thread has it.

        It does not wait for the other thread: an asynchronous exception (TimeLimit)
        landing in such a wait, outside the run, was seen to leave executions stuck.
        """
        thread = threading.get_ident()
        with self._lock:
            # A thread starting a delivery runs no other body: anything it still holds
            # was left behind by an asynchronous exception in a release.
            for stale in [key for key, holder in self._runs.items() if holder == thread]:
                del self._runs[stale]
            free = execution_id not in self._runs
            if free:
                self._runs[execution_id] = thread
        try:
            yield free
        finally:
            if free:
                # No lock to wait for first: an asynchronous exception that arrives
                # while a thread waits for a lock is raised as soon as it has it, and
                # would skip the release. (One dict operation is atomic.)
                self._runs.pop(execution_id, None)

    def __contains__(self, execution_id: object) -> bool:
        with self._lock:
            return execution_id in self._runs


class Replay:
    """A redelivery of the message that completed an execution: its recorded result."""

    def __init__(self, result: Any) -> None:
        self.result = result


class Runner:
    """Runs deliveries of durable actors for one middleware."""

    def __init__(
        self,
        store: Store,
        transport: Transport,
        *,
        worker_id: Callable[[], UUID],
        lease_timeout: Callable[[], float],
        limits: Limits,
        blocked_backoff: tuple[timedelta, timedelta] = versioning.DEFAULT_BLOCKED_BACKOFF,
    ) -> None:
        self.store = store
        self.transport = transport
        self.worker_id = worker_id
        self.lease_timeout = lease_timeout
        self.limits = limits
        self.blocked_backoff = blocked_backoff
        self.local_runs = LocalRuns()
        self.branches = BranchRunner(store, transport, limits)

    def deliver(
        self,
        actor: DurableActor,
        delivery: MessageProxy,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run one delivery; return the JSON result to hand to Dramatiq (or None)."""
        if is_branch(delivery):
            # Branches of one execution run side by side, anywhere: no run to reserve.
            return self.branches.deliver(delivery, args, kwargs)
        execution_id = execution_id_of(delivery)
        with self.local_runs.reserve(execution_id) as free:
            try:
                if not free:
                    # Its body here ends soon or is refused at its next write: look again soon.
                    self._defer(
                        delivery,
                        execution_id,
                        "runs in another thread of this worker",
                        min(self.lease_timeout(), LOCAL_DEFER_S),
                    )
                run = self._acquire(actor, delivery, execution_id)
            except DatabaseUnavailable as error:
                raise self._abandon(delivery, execution_id, error) from error
            if isinstance(run, Replay):
                return run.result
            return self._execute(run, actor, args, kwargs)

    # -- Taking the execution ------------------------------------------------

    def _acquire(
        self, actor: DurableActor, delivery: MessageProxy, execution_id: str
    ) -> Run | Replay:
        seq = int(delivery.options.get(SEQ, 0))
        worker_id = self.worker_id()
        acquired = lifecycle.acquire(self.store, execution_id, seq, worker_id)
        if (
            acquired is None
            and seq == 0
            and self._create_on_first_delivery(actor, delivery, execution_id)
        ):
            acquired = lifecycle.acquire(self.store, execution_id, seq, worker_id)
        if acquired is None:
            replay = self._refuse(actor, delivery, execution_id, seq)
            if replay is not None:
                return replay
            # Admitted to a slot of its key just now: take it.
            acquired = lifecycle.acquire(self.store, execution_id, seq, worker_id)
            if acquired is None:
                raise _stop(delivery, f"execution {execution_id!r} moved on meanwhile")
        run = Run(
            execution_id=execution_id,
            seq=seq,
            token=acquired.token,
            generation=acquired.generation,
            parent_id=acquired.parent_id,
            age_s=acquired.age_s,
            delivery=delivery,
            store=self.store,
            transport=self.transport,
            journal={entry["key"]: entry for entry in acquired.journal},
            limits=self.limits,
            slot=_slot(actor, acquired),
        )
        if acquired.token == 1:
            observe("started", actor=actor.actor_name)
        elif seq > 0 and acquired.lateness_s is not None and acquired.lateness_s >= 0:
            observe("wakeup_lateness", acquired.lateness_s, actor=actor.actor_name)
        if acquired.expired:
            self._time_out(run)
        return run

    def _create_on_first_delivery(
        self, actor: DurableActor, delivery: MessageProxy, execution_id: str
    ) -> bool:
        """An execution started with a plain ``send()`` begins with its first delivery."""
        message = continuation(delivery, **{EXECUTION_ID: execution_id})
        return self.store.atomically(
            lambda tx: lifecycle.create(self.store, tx, execution_id, actor, message)
        )

    def _refuse(
        self, actor: DurableActor, delivery: MessageProxy, execution_id: str, seq: int
    ) -> Replay | None:
        """Why ``acquire`` refused this delivery: a Replay of the result it completed with,
        None once it was admitted to a slot of its key, else Stopped."""
        state = self.store.fetchone("delivery_outcome", id=execution_id)
        if state is None:
            raise _stop(delivery, f"execution {execution_id!r} does not exist")
        status, wake_seq, owned, result, finished_by, paused, needs_slot = state
        if (
            status == lifecycle.COMPLETED
            and not self.transport.atomic
            and finished_by == delivery_id(delivery)
        ):
            # Elsewhere a crash may fall between the completion and the ack: a
            # redelivery of the very message that completed it hands the recorded
            # result to Dramatiq again (callbacks, pipelines). Any other copy is stale.
            return Replay(result)
        if status in lifecycle.TERMINAL:
            raise _stop(delivery, f"execution {execution_id!r} already ended {status}")
        if wake_seq != seq:
            raise _stop(delivery, f"stale delivery of execution {execution_id!r}")
        if paused:
            # Resuming it sends its wake-up again if it is due by then.
            raise _stop(delivery, f"execution {execution_id!r} is paused")
        if needs_slot and actor.concurrency is not None:
            if self._take_slot(execution_id, actor.concurrency):
                return None
            # Its admission sends it a resuming message: until then it holds no queue slot.
            raise _stop(delivery, f"execution {execution_id!r} waits for a slot of its key")
        if owned:
            # Another worker's run ends, or that worker is presumed lost, within a lease.
            self._defer(delivery, execution_id, "is running elsewhere", self.lease_timeout())
        raise _stop(delivery, f"execution {execution_id!r} is not runnable ({status})")

    def _take_slot(self, execution_id: str, limit: Limit) -> bool:
        """Wait for a slot of the execution's key; True if it was admitted at once."""

        def ask(tx: Transaction) -> bool:
            slot = concurrency.wait_for_slot(self.store, tx, execution_id)
            if slot is None:
                return False  # it moved on meanwhile
            admitted = admit_waiters(
                self.store, self.transport, tx, slot, max=limit.max, keep=execution_id
            )
            return execution_id in admitted

        return self.store.atomically(ask)

    def _defer(self, delivery: MessageProxy, execution_id: str, why: str, delay_s: float) -> None:
        """Come back after ``delay_s``: another run of the execution is still going."""
        delay_ms = int(delay_s * 1000)

        def defer(tx: Transaction) -> None:
            self.transport.send(tx, continuation(delivery), delay_ms)
            self.transport.settle(tx, delivery)

        self.store.atomically(defer)
        raise _stop(delivery, f"execution {execution_id!r} {why}; looking again in {delay_ms} ms")

    # -- Running the body ----------------------------------------------------

    def _execute(
        self, run: Run, actor: DurableActor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        context = activate(run)
        try:
            try:
                loaded_args, loaded_kwargs = actor.load_arguments(args, kwargs)
                with span(
                    f"zart.run {actor.actor_name}",
                    run.delivery.options,
                    **{
                        "zart.execution_id": run.execution_id,
                        "zart.run": run.token,
                        "zart.generation": run.generation,
                    },
                ):
                    value = actor.fn(*loaded_args, **loaded_kwargs)
                run.ensure_active()  # the body swallowed a Suspended and returned
                run.check_replayed()  # it returned before replaying its whole journal
                data = dump(
                    value, actor.return_annotation, what=f"the result of {actor.actor_name}"
                )
            finally:
                deactivate(context)
        except Interrupted as interrupted:
            self._interrupted(run, interrupted)
            raise
        except BaseException as error:
            if run.suspension is not None:
                raise run.suspension from error
            self._failed(run, actor, error)
            raise
        self._end(run, lifecycle.COMPLETED, result=data)
        return data if _result_consumed(actor, run.delivery) else None

    def _interrupted(self, run: Run, interrupted: Interrupted) -> None:
        if isinstance(interrupted, Suspended):
            return
        if isinstance(interrupted, Abandoned):
            self._abandon(run.delivery, run.execution_id, interrupted)
            return
        if isinstance(interrupted, DeadlinePassed):
            self._time_out(run)
        end_quietly(run.delivery)
        self._let_go(run)

    def _failed(self, run: Run, actor: DurableActor, error: BaseException) -> None:
        """Pause for a retry, or fail for good; raises an Interrupted when it did not fail."""
        if isinstance(error, DatabaseUnavailable):
            raise self._abandon(run.delivery, run.execution_id, error) from error
        # A replay that diverged from the journal, or a body that ended with a recorded
        # failure before replaying it whole: code changed under it. Blocked, not failed.
        divergence = run.divergence or (run.timeline.end() if _is_final(error, run) else None)
        if divergence is not None:
            raise self._block(run, actor, divergence) from error
        delay_ms = None if _is_final(error, run) else retry_delay_ms(actor, run.delivery, error)
        if delay_ms is None:
            self._end(run, lifecycle.FAILED, error=error_to_json(error))
            # Dramatiq's Retries must not run it again: the failure is recorded.
            run.delivery.options["max_retries"] = 0
            return
        retries = int(run.delivery.options.get(RETRIES, 0)) + 1
        logger.warning(
            "Execution %r raised %s; running it again in %d ms (retry %d).",
            run.execution_id,
            type(error).__name__,
            delay_ms,
            retries,
            exc_info=error,
        )

        def pause(tx: Transaction) -> None:
            run.suspend(
                tx,
                status=lifecycle.RETRYING,
                wake_in_s=delay_ms / 1000,
                options={RETRIES: retries},
            )

        self._commit(run, pause)
        assert run.suspension is not None
        raise run.suspension from error

    def _block(self, run: Run, actor: DurableActor, divergence: NonDeterminismError) -> Suspended:
        """Park the execution as blocked at its divergence; return the signal to end the run."""
        observe("nondeterminism", actor=run.actor)
        self._commit(
            run, lambda tx: versioning.block(run, tx, actor, divergence, self.blocked_backoff)
        )
        assert run.suspension is not None
        return run.suspension

    # -- Ending the run ------------------------------------------------------

    def _end(self, run: Run, status: str, **outcome: Any) -> None:
        def finish(tx: Transaction) -> None:
            children = lifecycle.finish(
                self.store,
                tx,
                run.ref,
                status,
                delivery=delivery_id(run.delivery),
                parent_id=run.parent_id,
                **outcome,
            )
            discard_wakeups(self.transport, tx, children)
            if run.parent_id is not None:
                child_ended(self.store, self.transport, tx, run.execution_id)
            if run.slot is not None:
                admit_waiters(self.store, self.transport, tx, run.slot)
            self.transport.settle(tx, run.delivery)

        self._commit(run, finish)
        observe("ended", actor=run.actor, status=status)
        age = run.age_s + (time.monotonic() - run.started)
        observe("execution_seconds", age, actor=run.actor, status=status)

    def _time_out(self, run: Run) -> None:
        self._end(
            run,
            lifecycle.TIMED_OUT,
            error={"type": "ExecutionTimeout", "message": "the execution passed its deadline"},
        )
        raise _stop(run.delivery, f"execution {run.execution_id!r} passed its deadline")

    def _commit(self, run: Run, unit: Callable[[Transaction], None]) -> None:
        """Commit one of the run's own transitions; a refusal or an outage stops the run."""
        try:
            self.store.atomically(unit)
        except Refused:
            end_quietly(run.delivery)
            self._let_go(run)
            raise
        except DatabaseUnavailable as error:
            raise self._abandon(run.delivery, run.execution_id, error) from error

    def _let_go(self, run: Run) -> None:
        """A stopped run releases its execution, so that a retry may start a new one."""
        try:
            lifecycle.release_owner(self.store, run.ref)
        except DatabaseUnavailable:
            logger.warning("Could not release execution %r; the sweeper will.", run.execution_id)

    def _abandon(
        self, delivery: MessageProxy, execution_id: str, error: BaseException
    ) -> Abandoned:
        logger.warning(
            "Execution %r: could not record the run's outcome (%s); it resumes from its "
            "journal once the database answers.",
            execution_id,
            error,
        )
        self.transport.hand_back(delivery)
        end_quietly(delivery)
        return Abandoned(f"execution {execution_id!r}: {error}")


def _slot(actor: DurableActor, acquired: lifecycle.Acquired) -> Slot | None:
    if acquired.slot_key is None:
        return None
    scope: Scope = "running" if acquired.slot_scope == "running" else "open"
    return Slot(actor.actor_name, acquired.slot_key, scope)


def execution_id_of(message: MessageProxy) -> str:
    return str(message.options.get(EXECUTION_ID) or message.message_id)


def _is_final(error: BaseException, run: Run) -> bool:
    """Whether ``error`` comes from a recorded failure, or could only happen again."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NonDeterminismError | SerializationError) or any(
            current is final for final in run.final_errors
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _result_consumed(actor: DurableActor, delivery: MessageProxy) -> bool:
    """Whether Dramatiq does something with the actor's return value.

    The result is kept on the execution anyway; handing it to Dramatiq when
    nothing there uses it only earns a warning that it was discarded.
    """
    options = delivery.options
    stores = any(
        options.get("store_results", actor.options.get("store_results", results.store_results))
        for results in actor.broker.middleware
        if isinstance(results, Results)
    )
    return (
        stores
        or options.get("pipe_target") is not None
        or (options.get("on_success") or actor.options.get("on_success")) is not None
    )


def _stop(delivery: MessageProxy, reason: str) -> Stopped:
    end_quietly(delivery)
    return Stopped(reason)
