"""Group commit: the checkpoints of a process's worker threads share transactions.

One writer thread per process takes every checkpoint queued meanwhile and
writes them in one statement; each worker thread waits for its own
checkpoint to commit before its body goes on, so durability is unchanged.

The writer is a thread of its own so that nothing a worker thread suffers —
an asynchronous exception such as Dramatiq's ``TimeLimit``, an interrupted
wait — can leave the batch half-written or the writer role unclaimed. A
worker thread waits a bounded time, never forever.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from broker_pg import DatabaseUnavailable

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class _Request(Generic[Item, Outcome]):
    __slots__ = ("done", "error", "item", "outcome")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None


class CheckpointWriter(Generic[Item, Outcome]):
    """Writes items in batches with ``write``, which returns one outcome per item, in order.

    ``write`` retries transient errors itself; ``timeout`` bounds how long a
    caller waits for its item.
    """

    def __init__(
        self, write: Callable[[Sequence[Item]], Sequence[Outcome]], *, timeout: float
    ) -> None:
        self._write = write
        self.timeout = timeout
        self._queue: queue.SimpleQueue[_Request[Item, Outcome]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def submit(self, item: Item) -> Outcome:
        """Write ``item`` (with whatever else is waiting) and return its outcome once committed."""
        request: _Request[Item, Outcome] = _Request(item)
        self._ensure_writer()
        self._queue.put(request)
        if not request.done.wait(self.timeout):
            raise DatabaseUnavailable(
                f"a checkpoint was not written within {self.timeout:.0f}s; "
                "the run stops and resumes from its journal later"
            )
        if request.error is not None:
            raise request.error
        return request.outcome  # type: ignore[return-value]

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._serve, name="zart-checkpoints", daemon=True).start()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._settle(batch)
            except BaseException as error:  # never leave a caller without an answer
                logger.exception("Checkpoint writer failed.")
                for request in batch:
                    if not request.done.is_set():
                        request.error = error
            for request in batch:
                request.done.set()

    def _settle(self, batch: list[_Request[Item, Outcome]]) -> None:
        try:
            outcomes = self._write([request.item for request in batch])
        except DatabaseUnavailable as error:
            for request in batch:
                request.error = error
            return
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
                return
            # One bad item must not fail its neighbours: write each on its own.
            for request in batch:
                self._settle([request])
            return
        for request, outcome in zip(batch, outcomes, strict=True):
            request.outcome = outcome
