"""The sweeper: executions that nothing would resume are resumed.

Once a heartbeat, in each worker process:

* a run that ended without recording its end — its worker was presumed
  lost, or its writes kept failing while the database was away — is
  abandoned (``running -> retrying``) and resumed from its journal;
* a stopped run of this process that could not release its execution
  releases it now;
* on brokers other than broker_pg, where a checkpoint and the message that
  resumes it are two writes, an overdue wake-up is sent again, and so is a
  branch message that no worker started within ``repair_after``;
* executions waiting for a slot of a concurrency key that has room are
  admitted, should a release have passed them over;
* blocked executions (their replay diverged from their journal) of the
  actors this worker declares are woken, once, if its code differs from
  every code that tried them (``versioning``);
* executions that ended longer ago than the retention are deleted
  (``retention.ExecutionRetention``: one worker at a time, in batches).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

from dramatiq import Message

from . import concurrency, lifecycle
from .background import BackgroundLoop
from .lifecycle import RunRef
from .metrics import observe
from .retention import ExecutionRetention
from .run import EXECUTION_ID, admit_waiters, resend_overdue, resume_now
from .runner import LocalRuns
from .store import Store, Transaction
from .transport import Transport
from .versioning import wake_blocked

logger = logging.getLogger(__name__)


class Sweeper(BackgroundLoop):
    name = "zart-sweeper"

    def __init__(
        self,
        store: Store,
        transport: Transport,
        local_runs: LocalRuns,
        *,
        worker_id: Callable[[], UUID],
        interval: float,
        repair_after: timedelta,
        execution_retention: timedelta | None,
    ) -> None:
        super().__init__()
        self.store = store
        self.transport = transport
        self.local_runs = local_runs
        self.worker_id = worker_id
        self.interval = interval
        self.retry_after = interval
        self.repair_after = repair_after
        self.retention = ExecutionRetention(store, execution_retention)

    def first_wait(self) -> float:
        return self.interval

    def round(self) -> float:
        self.sweep()
        self.retention.run()
        return self.interval

    def sweep(self) -> int:
        """One round; return how many executions it set going again."""
        resumed = 0
        for execution_id, token, status, mine in self.store.fetchall(
            "owned_runs", worker_id=self.worker_id()
        ):
            if execution_id in self.local_runs:
                continue  # its run is still going, here
            run = RunRef(execution_id, token)
            if status == lifecycle.RUNNING:
                resumed += self._resume(run)
            elif mine:
                lifecycle.release_owner(self.store, run)
        if not self.transport.atomic:
            resumed += self.repair_lost_wakeups()
        resumed += self.admit_passed_over()
        # Blocked executions that this worker's code has not tried yet (versioning).
        resumed += len(wake_blocked(self.store, self.transport, self.repair_after.total_seconds()))
        return resumed

    def admit_passed_over(self) -> int:
        """Admit waiters for a slot that a release passed over (their row was busy then)."""
        admitted = 0
        for slot in concurrency.passed_over(self.store, self.interval):
            admit = functools.partial(admit_waiters, self.store, self.transport, slot=slot)
            admitted += len(self.store.atomically(admit))
        return admitted

    def _resume(self, run: RunRef) -> int:
        def abandon(tx: Transaction) -> int:
            found = lifecycle.abandon(self.store, tx, run)
            if found is None:
                return 0  # it moved on meanwhile
            seq, payload = found
            resume_now(self.store, self.transport, tx, payload, seq)
            return 1

        resumed = self.store.atomically(abandon)
        if resumed:
            observe("leases_lost")
            logger.warning(
                "Execution %r: its run ended without recording its end (its worker was lost, "
                "or the database was unreachable); resuming it from its journal.",
                run.execution_id,
            )
        return resumed

    def repair_lost_wakeups(self) -> int:
        """Send again the resuming messages a non-transactional broker may have lost."""
        resent = resend_overdue(self.store, self.transport, self.repair_after.total_seconds())
        for execution_id in resent:
            logger.warning("Re-sent the overdue wake-up of execution %s.", execution_id)
        branches = self.store.fetchall(
            "repair_lost_branches", grace_s=self.repair_after.total_seconds()
        )
        for (payload,) in branches:
            message = Message.decode(payload)
            logger.warning(
                "Re-sending a branch of execution %s that no worker started.",
                message.options.get(EXECUTION_ID),
            )
            self.transport.broker.enqueue(message)
        return len(resent) + len(branches)
