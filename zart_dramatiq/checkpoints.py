"""Group commit: the checkpoints of a process's worker threads share transactions.

The first thread to checkpoint becomes the writer: it writes every
checkpoint queued meanwhile in one statement, then hands the role to the
next thread in line. Each thread still waits for its own checkpoint to
commit before its body goes on, so durability is unchanged; threads that
checkpoint at the same moment share one commit, and an uncontended
checkpoint costs no hand-off to another thread.

Any thread may be interrupted anywhere by an asynchronous exception
(Dramatiq's ``TimeLimit``). Every change to the shared state sits inside a
``try``/``finally`` that restores it: an interrupted writer puts the
checkpoints it had not answered back in line and passes the role on, an
interrupted waiter leaves the line. Nobody waits longer than ``timeout``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from broker_pg import DatabaseUnavailable

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class _Request(Generic[Item, Outcome]):
    __slots__ = ("done", "error", "item", "outcome", "wake")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = False
        #: Set when the request is answered or its thread is made the writer.
        self.wake = threading.Event()
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
        self._lock = threading.Lock()
        self._line: deque[_Request[Item, Outcome]] = deque()
        self._writer: _Request[Item, Outcome] | None = None

    def submit(self, item: Item) -> Outcome:
        """Write ``item`` (with whatever else is waiting) and return its outcome once committed."""
        request: _Request[Item, Outcome] = _Request(item)
        deadline = time.monotonic() + self.timeout
        try:
            with self._lock:
                self._line.append(request)
                if self._writer is None:
                    self._writer = request
            while not request.done:
                if self._writer is request:
                    self._write_line()
                    self._pass_on(request)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DatabaseUnavailable(
                        f"a checkpoint was not written within {self.timeout:.0f}s; "
                        "the run stops and resumes from its journal later"
                    )
                request.wake.wait(remaining)
                request.wake.clear()
        finally:
            self._leave(request)
        if request.error is not None:
            raise request.error
        return request.outcome  # type: ignore[return-value]

    def _write_line(self) -> None:
        """Write everything in line, as this thread's turn as the writer."""
        with self._lock:
            batch = list(self._line)
            self._line.clear()
        try:
            self._settle(batch)
        except BaseException:
            # Interrupted: unanswered requests go back in line for the next writer
            # (a repeated write of a checkpoint that did commit returns it as recorded).
            with self._lock:
                self._line.extendleft(reversed([r for r in batch if not r.done]))
            raise
        for request in batch:
            request.done = True
            request.wake.set()

    def _pass_on(self, request: _Request[Item, Outcome]) -> None:
        """Hand the writer role from ``request`` to the next one in line, if it has it."""
        with self._lock:
            if self._writer is not request:
                return
            self._writer = self._line[0] if self._line else None
            successor = self._writer
        if successor is not None:
            successor.wake.set()

    def _leave(self, request: _Request[Item, Outcome]) -> None:
        with self._lock:
            if request in self._line:
                self._line.remove(request)
        self._pass_on(request)

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
