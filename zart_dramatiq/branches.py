"""One branch of a parallel group or map, delivered to any worker: run it and join.

A branch runs its function under its own retry policy, then records its
outcome in one transaction with the group's join counter and the ack of its
message. That transaction also sends a map's next item, or, for the branch
that ends the group, writes the group's outcome into the parent's journal and
wakes the parent (``joins``). A branch whose group already ended, or whose
execution did, does not run.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import dramatiq
from dramatiq import MessageProxy
from dramatiq.asyncio import async_to_sync
from dramatiq.middleware.time_limit import TimeLimitExceeded
from psycopg.types.json import Jsonb

from broker_pg import DatabaseUnavailable
from broker_pg.group_commit import GroupCommit

from .errors import StepResultTooLarge
from .fanout import BRANCH, resolve
from .joins import entry_ended
from .limits import Limits, json_size
from .retry_policy import Retry
from .run import EXECUTION_ID, continuation, end_quietly
from .serialization import convert_arguments, dump, error_to_json, load, type_hints
from .signals import Abandoned, BranchEnded
from .store import Store, Transaction
from .tracing import span
from .transport import Transport

logger = logging.getLogger(__name__)


def is_branch(delivery: MessageProxy) -> bool:
    return BRANCH in delivery.options


@dataclass(frozen=True)
class Outcome:
    """How a branch's attempts ended."""

    status: str  # completed | failed | retrying
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    #: Seconds before the next attempt, for a branch that backs off durably.
    retry_in: float | None = None


@dataclass(frozen=True)
class Settlement:
    """A branch delivery's outcome, to record."""

    delivery: MessageProxy
    where: dict[str, Any]
    outcome: Outcome


@dataclass(frozen=True)
class Question:
    """Whether a delivered branch should run: its group, index and execution."""

    where: dict[str, Any]


class BranchRunner:
    """Runs the branch deliveries of one middleware.

    The bookkeeping of the branches that this process's threads deliver or
    finish at the same moment shares one transaction: one read of the states
    of those starting, and the outcomes of those ending.
    """

    def __init__(self, store: Store, transport: Transport, limits: Limits) -> None:
        self.store = store
        self.transport = transport
        self.limits = limits
        timeout = store.write_timeout + 10.0
        then = "its message is handed back and runs again"
        self._bookkeeping: GroupCommit[Question | Settlement, Any] = GroupCommit(
            self._bookkeep, timeout=timeout, what="a branch's state or outcome", then=then
        )

    def deliver(
        self, delivery: MessageProxy, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> NoReturn:
        """Run one branch delivery to its end, recorded; raises BranchEnded."""
        end_quietly(delivery)
        spec = delivery.options[BRANCH]
        execution_id = str(delivery.options[EXECUTION_ID])
        key, index = spec["group"], int(spec["index"])
        where = {"id": execution_id, "key": key, "index": index}
        try:
            runnable, attempts, elapsed = self._bookkeeping.submit(Question(where))
            if not runnable:
                # Its group or execution ended, or this is a duplicate: nothing to run.
                self.store.atomically(lambda tx: self.transport.settle(tx, delivery))
                raise BranchEnded(f"branch {key}[{index}] of {execution_id!r} has nothing to run")
            if not self.transport.atomic:
                self.store.write("touch_branch", **where)
            with span(
                f"zart.branch {key}[{index}]",
                delivery.options,
                **{"zart.execution_id": execution_id, "zart.function": spec["fn"]},
            ):
                outcome = self._attempts(
                    spec, args, kwargs, attempts=attempts, elapsed=elapsed or 0.0
                )
            self._bookkeeping.submit(Settlement(delivery, where, outcome))
        except DatabaseUnavailable as error:
            logger.warning(
                "Branch %s[%d] of execution %r: could not record its outcome (%s); "
                "its message is handed back and runs again.",
                key,
                index,
                execution_id,
                error,
            )
            self.transport.hand_back(delivery)
            raise Abandoned(
                f"branch {key}[{index}] of execution {execution_id!r}: {error}"
            ) from error
        raise BranchEnded(f"branch {key}[{index}] of {execution_id!r} ended {outcome.status}")

    def _bookkeep(self, batch: Sequence[Question | Settlement]) -> list[Any]:
        """Answer the questions and record the settlements of ``batch``, in one transaction."""
        questions = [item.where for item in batch if isinstance(item, Question)]
        # One lock order for every transaction: groups by execution, group and index.
        settlements = sorted(
            (item for item in batch if isinstance(item, Settlement)),
            key=lambda s: (s.where["id"], s.where["key"], s.where["index"]),
        )

        def bookkeep(tx: Transaction) -> list[tuple[Any, ...]]:
            states = self._states(tx, questions)
            for settlement in settlements:
                self._record(tx, settlement)
            return states

        if settlements:
            states = iter(self.store.atomically(bookkeep))
        else:
            states = iter(self.store.fetchall("branch_states", batch=Jsonb(questions)))
        return [next(states) if isinstance(item, Question) else None for item in batch]

    def _states(self, tx: Transaction, questions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        if not questions:
            return []
        return self.store.run_all(tx, "branch_states", batch=Jsonb(questions))

    def _attempts(
        self,
        spec: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        attempts: int,
        elapsed: float,
    ) -> Outcome:
        """Call the branch's function until it succeeds, or its policy gives up or backs off."""
        policy = Retry.from_json(spec["retry"])
        first_started = time.monotonic() - elapsed
        try:
            fn = resolve(spec["fn"])
            # An async def branch runs on the AsyncIO middleware's loop, as async actors do.
            call = async_to_sync(fn) if inspect.iscoroutinefunction(fn) else fn
            args, kwargs = convert_arguments(fn, args, kwargs, load, owner=spec["fn"])
        except Exception as error:
            return Outcome("failed", error=error_to_json(error), attempts=attempts + 1)
        annotation = type_hints(fn).get("return", Any)
        while True:
            attempts += 1
            try:
                value = call(*args, **kwargs)
                data = dump(value, annotation, what=f"branch {spec['fn']}")
            except (Exception, TimeLimitExceeded) as error:
                wait = policy.next_wait(attempts, error, time.monotonic() - first_started)
                if wait is None:
                    return Outcome("failed", error=error_to_json(error), attempts=attempts)
                if wait <= policy.max_inline_wait.total_seconds():
                    time.sleep(wait)
                    continue
                return Outcome(
                    "retrying", error=error_to_json(error), attempts=attempts, retry_in=wait
                )
            size = json_size(data)
            if size > self.limits.payload_bytes:
                too_large = StepResultTooLarge(spec["fn"], size, self.limits.payload_bytes)
                return Outcome("failed", error=error_to_json(too_large), attempts=attempts)
            return Outcome("completed", result=data, attempts=attempts)

    def _record(self, tx: Transaction, settlement: Settlement) -> None:
        """The branch's outcome, the join and the ack of its message, inside ``tx``."""
        delivery, where, outcome = settlement.delivery, settlement.where, settlement.outcome
        self.transport.settle(tx, delivery)
        if outcome.status == "retrying":
            if self.store.run(
                tx, "retry_branch", attempts=outcome.attempts, error=outcome.error, **where
            ):
                assert outcome.retry_in is not None
                self.transport.send(tx, continuation(delivery), int(outcome.retry_in * 1000))
            return
        group = self.store.run(tx, "lock_group", **where)
        if group is None:
            return  # the execution continued as new: the group is gone
        mode, status, open_, window, next_branch, active = group
        group_status, winner = _after(mode, status, outcome.status, open_ - 1, where["index"])
        settled = self.store.run(
            tx,
            "settle_branch",
            status=outcome.status,
            result=outcome.result,
            error=outcome.error,
            attempts=outcome.attempts,
            group_status=group_status,
            winner=winner,
            **where,
        )
        if not settled or not settled[0]:
            return  # recorded by another delivery of this branch
        if group_status == "running":
            if window is not None and active:
                self._send_next(tx, where, start=next_branch, count=1)
        elif status == "running":
            self._end_group(tx, where, group_status, winner, outcome)

    def _send_next(self, tx: Transaction, where: dict[str, Any], start: int, count: int) -> None:
        queued = self.store.run_all(
            tx, "queue_branches", id=where["id"], key=where["key"], start=start, count=count
        )
        self.transport.send_many(tx, [dramatiq.Message.decode(payload) for _, payload in queued])

    def _end_group(
        self,
        tx: Transaction,
        where: dict[str, Any],
        status: str,
        winner: int | None,
        outcome: Outcome,
    ) -> None:
        self.store.run(
            tx,
            "end_group",
            id=where["id"],
            key=where["key"],
            status=status,
            winner=winner,
            error=outcome.error if status == "failed" else None,
        )
        entry_ended(self.store, self.transport, tx, where["id"], where["key"])


def _after(
    mode: str, status: str, branch: str, still_open: int, index: int
) -> tuple[str, int | None]:
    """The group's status once this branch has ended, and the winner of a 'first' group."""
    if status != "running":
        return status, None
    if mode == "first" and branch == "completed":
        return "completed", index
    if mode == "all" and branch == "failed":
        return "failed", None
    if still_open == 0:
        # 'first': every branch failed; 'all' and 'settled': every branch ended.
        return ("failed" if mode == "first" else "completed"), None
    return "running", None
