"""Group commit: concurrent checkpoints of one process share a transaction.

Each worker thread still waits for its own checkpoint to commit before its
body goes on, so nothing about durability changes; threads that checkpoint
at the same moment simply pay for one commit between them. There is no
background thread: the first caller writes, and whoever arrives meanwhile
is written by the next caller in line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class _Request(Generic[Item, Outcome]):
    __slots__ = ("error", "item", "lead", "outcome", "ready")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.ready = threading.Event()
        self.lead = False
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Item, Outcome]):
    """Writes items in batches with ``write``, which returns one outcome per item, in order."""

    def __init__(self, write: Callable[[Sequence[Item]], Sequence[Outcome]]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._pending: list[_Request[Item, Outcome]] = []
        self._writing = False

    def submit(self, item: Item) -> Outcome:
        """Write ``item`` (with whatever else is waiting) and return its outcome once committed."""
        request: _Request[Item, Outcome] = _Request(item)
        with self._lock:
            self._pending.append(request)
            request.lead = not self._writing
            self._writing = True
        if not request.lead:
            request.ready.wait()
        if request.lead:
            self._write_pending()
        if request.error is not None:
            raise request.error
        return request.outcome  # type: ignore[return-value]

    def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        self._settle(batch)
        with self._lock:
            successor = self._pending[0] if self._pending else None
            if successor is None:
                self._writing = False
            else:
                successor.lead = True
        for request in batch:
            request.ready.set()
        if successor is not None:
            successor.ready.set()

    def _settle(self, batch: list[_Request[Item, Outcome]]) -> None:
        try:
            outcomes = self._write([request.item for request in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
                return
            # One bad item must not fail its neighbours: write each on its own.
            for request in batch:
                self._settle([request])
            return
        except BaseException as error:  # an interrupt (time limit, shutdown) of this thread
            for request in batch:
                request.error = error
            return
        for request, outcome in zip(batch, outcomes, strict=True):
            request.outcome = outcome
