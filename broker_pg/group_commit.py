"""Group commit: writes of a process's threads that happen at the same moment share a transaction.

The first thread to write becomes the writer: it writes every item queued
meanwhile in one statement, then hands the role to the next thread in line.
Each thread still waits for its own item to commit before it goes on, so
durability is unchanged; threads that write at the same moment share one
commit, and an uncontended write costs no hand-off to another thread.

Used for the messages that producer threads send and for the checkpoints of
durable steps.

Any thread may be interrupted anywhere by an asynchronous exception
(Dramatiq's ``TimeLimit``). Every change to the shared state sits inside a
``try``/``finally`` that restores it: an interrupted writer puts the items
it had not answered back in line and passes the role on, an interrupted
waiter leaves the line. Nobody waits longer than ``timeout``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Generic, TypeVar

from .errors import DatabaseUnavailable

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class _Request(Generic[Item, Outcome]):
    __slots__ = ("done", "error", "item", "outcome", "wake")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = False
        #: Gets a token when the request is answered or its thread is made the
        #: writer (a C queue: cheaper than an Event's condition variable).
        self.wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Item, Outcome]):
    """Writes items in batches with ``write``, which returns one outcome per item, in order.

    ``timeout`` bounds how long a caller waits for its item; past it the
    caller gets DatabaseUnavailable, saying ``what`` was not written and
    ``then`` what happens next.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Sequence[Outcome]],
        *,
        timeout: float,
        what: str,
        then: str,
    ) -> None:
        self._write = write
        self.timeout = timeout
        self._what = what
        self._then = then
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._line: deque[_Request[Item, Outcome]] = deque()
        self._writer: _Request[Item, Outcome] | None = None

    def submit(self, item: Item) -> Outcome:
        """Write ``item`` (with whatever else is waiting) and return its outcome once committed."""
        if self._pid != os.getpid():
            # A forked child: the parent's threads, and the line they stood in, are not here.
            self._start_afresh()
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
                        f"{self._what} was not written within {self.timeout:.0f}s; {self._then}"
                    )
                with suppress(queue.Empty):
                    request.wake.get(timeout=remaining)
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
            # (a write must be safe to repeat for an item whose first write did commit).
            with self._lock:
                self._line.extendleft(reversed([r for r in batch if not r.done]))
            raise
        for request in batch:
            request.done = True
            request.wake.put(None)

    def _pass_on(self, request: _Request[Item, Outcome]) -> None:
        """Hand the writer role from ``request`` to the next one in line, if it has it."""
        with self._lock:
            if self._writer is not request:
                return
            self._writer = self._line[0] if self._line else None
            successor = self._writer
        if successor is not None:
            successor.wake.put(None)

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
