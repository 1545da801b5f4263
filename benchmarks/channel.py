"""The measurement channel: how actors report back to the benchmark driver.

Every broker's actors report through the same Redis database with the same commands, so
the measuring overhead is identical whichever broker delivered the message. The drain
actor does not talk to Redis per message: a per-process tally is flushed by a background
thread, so a no-op stays a no-op and the channel cannot become the bottleneck. Timestamps
are taken inside the actor, so flushing late does not skew the measured window.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import redis

PREFIX = "zbench:"
DONE = PREFIX + "done"
FIRST = PREFIX + "first"
LAST = PREFIX + "last"
LATENCY = PREFIX + "latency"
LATENESS = PREFIX + "lateness"
BARRIER = PREFIX + "barrier"
ALL_KEYS = (DONE, FIRST, LAST, LATENCY, LATENESS, BARRIER)

DEFAULT_URL = "redis://127.0.0.1:6379/15"


def channel_url() -> str:
    return os.environ.get("ZBENCH_CHANNEL_URL", DEFAULT_URL)


def connect(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or channel_url())


class Tally:
    """Counts completions in this process and publishes them every few milliseconds."""

    def __init__(self, client: redis.Redis, interval: float = 0.01) -> None:
        self._client = client
        self._interval = interval
        self._lock = threading.Lock()
        self._pending = 0
        self._first: float | None = None
        self._last = 0.0
        self._thread: threading.Thread | None = None

    def hit(self, started: float, ended: float) -> None:
        with self._lock:
            self._pending += 1
            if self._first is None:
                self._first = started
            self._last = max(self._last, ended)
            if self._thread is None:
                # Started lazily so that merely importing an app module spawns nothing.
                self._thread = threading.Thread(target=self._run, name="zbench-tally", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, first, last = self._pending, self._first, self._last
            self._pending = 0
        if not pending:
            return
        pid = os.getpid()
        pipe = self._client.pipeline(transaction=False)
        pipe.hsetnx(FIRST, str(pid), repr(first))
        pipe.hset(LAST, str(pid), repr(last))
        # The count goes last so that a reader seeing the final count also sees the window.
        pipe.incrby(DONE, pending)
        pipe.execute()


@dataclass(frozen=True)
class Window:
    done: int
    first_start: float | None
    last_end: float | None
    processes: int


class Channel:
    """Driver-side view of the measurement channel."""

    def __init__(self, url: str | None = None) -> None:
        self.client = connect(url)

    def ping(self) -> None:
        self.client.ping()

    def reset(self) -> None:
        self.client.delete(*ALL_KEYS)

    def done(self) -> int:
        return int(self.client.get(DONE) or 0)

    def window(self) -> Window:
        firsts = [float(v) for v in self.client.hvals(FIRST)]
        lasts = [float(v) for v in self.client.hvals(LAST)]
        return Window(
            done=self.done(),
            first_start=min(firsts) if firsts else None,
            last_end=max(lasts) if lasts else None,
            processes=len(firsts),
        )

    def pop(self, key: str, timeout: float) -> float | None:
        item = self.client.blpop([key], timeout=timeout)
        return None if item is None else float(item[1])


def push(client: redis.Redis, key: str, value: float) -> None:
    client.rpush(key, repr(value))


def barrier(client: redis.Redis, parties: int, timeout: float = 60.0) -> None:
    """Block until `parties` processes arrived, so that none starts consuming early."""
    client.incr(BARRIER)
    deadline = time.monotonic() + timeout
    while int(client.get(BARRIER) or 0) < parties:
        if time.monotonic() > deadline:
            arrived = int(client.get(BARRIER) or 0)
            raise TimeoutError(f"only {arrived} of {parties} processes arrived")
        time.sleep(0.001)
