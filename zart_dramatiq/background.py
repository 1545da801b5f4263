"""A worker process's background loop: one daemon thread per process, fork-safe.

The sweeper and the scheduler are such loops. Each round returns how long to
wait before the next; a round that fails is logged (an unreachable database
once, until it answers again) and the loop goes on.
"""

from __future__ import annotations

import logging
import os
import threading

from broker_pg import DatabaseUnavailable

logger = logging.getLogger(__name__)


class BackgroundLoop:
    """Runs ``round`` in a thread named ``name`` until stopped; ``wake`` cuts a wait short."""

    name = "zart-loop"
    #: Seconds to wait after a round that failed.
    retry_after = 1.0

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._failing = False

    def start(self) -> None:
        """Start the thread, unless it runs in this process already (a forked child starts
        its own)."""
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.retry_after + 10)

    def wake(self) -> None:
        """Run the next round now rather than after the current wait."""
        self._wake.set()

    def round(self) -> float:
        """One round of work; return the seconds to wait before the next."""
        raise NotImplementedError

    def first_wait(self) -> float:
        """Seconds to wait before the first round."""
        return 0.0

    def setup(self) -> None:
        """In the loop's thread, before its first round."""

    def teardown(self) -> None:
        """In the loop's thread, after its last round."""

    def _run(self) -> None:
        self.setup()
        try:
            delay = self.first_wait()
            while not self._stopping.is_set():
                if delay > 0:
                    self._wake.wait(delay)
                    if self._stopping.is_set():
                        break
                self._wake.clear()
                delay = self._guarded_round()
        finally:
            self.teardown()

    def _guarded_round(self) -> float:
        try:
            delay = self.round()
        except DatabaseUnavailable as e:
            if not self._failing:
                logger.warning("%s: %s Trying again every %.1fs.", self.name, e, self.retry_after)
            self._failing = True
            return self.retry_after
        except Exception:
            logger.exception("%s failed; trying again.", self.name)
            return self.retry_after
        self._failing = False
        return delay
