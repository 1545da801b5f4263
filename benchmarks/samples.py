"""Per-message samples that actors report in bulk, for measurements of thousands of messages.

`channel.push` costs the actor's thread one Redis round trip per message: fine for a few
hundred, but a burst of 10,000 starts would then wait on Redis between messages. A
`SampleBuffer` keeps the values in memory and a background thread RPUSHes them every
10 ms, so the timestamps (read inside the actor) are never delayed by the reporting.
"""

from __future__ import annotations

import threading
import time

import redis

from benchmarks.channel import PREFIX

BURST = PREFIX + "burst"


class SampleBuffer:
    """Floats appended by actor threads, pushed to one Redis list in batches."""

    def __init__(self, client: redis.Redis, key: str, interval: float = 0.01) -> None:
        self._client = client
        self._key = key
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: list[float] = []
        self._thread: threading.Thread | None = None

    def add(self, value: float) -> None:
        with self._lock:
            self._pending.append(value)
            if self._thread is None:
                # Started lazily so that merely importing an app module spawns nothing.
                self._thread = threading.Thread(
                    target=self._run, name="zbench-samples", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._client.rpush(self._key, *map(repr, pending))


def collect(client: redis.Redis, key: str, count: int, timeout: float, stall: float) -> list[float]:
    """Pop `count` samples from `key`; TimeoutError past `timeout`, or `stall` s without one."""
    samples: list[float] = []
    deadline = time.monotonic() + timeout
    progressed = time.monotonic()
    while len(samples) < count:
        popped = client.lpop(key, count - len(samples)) or []
        samples += [float(value) for value in popped]
        now = time.monotonic()
        if popped:
            progressed = now
        elif now > deadline or now - progressed > stall:
            raise TimeoutError(f"only {len(samples):,}/{count:,} samples arrived")
        else:
            time.sleep(0.02)
    return samples
