"""A backend for Dramatiq's rate limiters and barriers on the broker's database.

``ConcurrentRateLimiter``, ``WindowRateLimiter``, ``BucketRateLimiter`` and
``Barrier`` (``dramatiq.rate_limits``) work on it as on Redis: no other server
needed. The state lives in the ``rate_limits`` table (migration 0013).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from dramatiq.rate_limits import RateLimiterBackend
from dramatiq.results.backend import DEFAULT_TIMEOUT

from .database import DEFAULT_SCHEMA, Database, channel_name
from .sqlfile import Queries

logger = logging.getLogger(__name__)

#: Seconds between two purges of expired rows by one backend, while each finds
#: fewer than ``PURGE_BATCH`` of them (a full batch: the next write purges again).
PURGE_INTERVAL = 60.0
#: Most expired rows one purge deletes.
PURGE_BATCH = 1000


class PostgresRateLimiterBackend(RateLimiterBackend):
    """Keeps rate limiter and barrier state in the ``rate_limits`` table of ``schema``.

    Every operation is one atomic statement (``incr_and_sum``: one transaction
    that first locks its keys); ttls are in milliseconds on the server's clock.
    An expired key is absent; expired rows are purged by ``purge_expired``,
    which writes call every ``PURGE_INTERVAL`` seconds (at most ``PURGE_BATCH``
    rows a time).

    ``wait`` (``Barrier.wait(block=True)``) waits on LISTEN/NOTIFY, on the LISTEN
    session its database shares with everything else in the process, for at most
    its ``timeout``; without one (``None``), for at most ``default_timeout``
    milliseconds: nothing waits without a bound. Like ``PostgresBackend``, it
    has a pool of its own (``pool_size``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_size: int = 4,
        application_name: str = "broker_pg",
        default_timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        self.db = Database(
            url, schema=schema, pool_size=pool_size, application_name=application_name
        )
        self.queries = Queries("broker_pg", "rate_limits.sql", self.db.schema)
        self.channel = channel_name(self.db.schema, "rate_limits")
        self.default_timeout = default_timeout
        self.purge_interval = PURGE_INTERVAL
        self.purge_batch = PURGE_BATCH
        self._lock_prefix = f"{self.db.schema}.rate_limits."
        self._next_purge = 0.0
        self._purging = threading.Lock()

    def add(self, key: str, value: int, ttl: int) -> bool:
        """Set ``key`` to ``value`` for ``ttl`` ms, unless it exists; whether it was set."""
        return self._write("add", {"key": key, "value": value, "ttl_ms": ttl})

    def incr(self, key: str, amount: int, maximum: int, ttl: int) -> bool:
        """Add ``amount`` to ``key`` (0 if absent) unless it would pass ``maximum``."""
        return self._write(
            "incr", {"key": key, "amount": amount, "maximum": maximum, "ttl_ms": ttl}
        )

    def decr(self, key: str, amount: int, minimum: int, ttl: int) -> bool:
        """Subtract ``amount`` from ``key`` (0 if absent) unless it would fall below ``minimum``."""
        return self._write(
            "decr", {"key": key, "amount": amount, "minimum": minimum, "ttl_ms": ttl}
        )

    def incr_and_sum(
        self,
        key: str,
        keys: Callable[[], Iterable[str]],
        amount: int,
        maximum: int,
        ttl: int,
    ) -> bool:
        """Add ``amount`` to ``key`` unless it, or ``amount`` plus the sum of ``keys()``,
        would pass ``maximum``."""
        self._maybe_purge()
        summed = list(keys())
        params = {
            "key": key,
            "keys": summed,
            "amount": amount,
            "maximum": maximum,
            "ttl_ms": ttl,
        }
        with self.db.connection() as conn, conn.transaction():
            conn.execute(
                self.queries["lock_keys"],
                {"lock_prefix": self._lock_prefix, "keys": [key, *summed]},
            )
            row = conn.execute(self.queries["incr_and_sum"], params).fetchone()
        return bool(row and row[0])

    def wait(self, key: str, timeout: int | None) -> bool:
        """Wait at most ``timeout`` ms (``default_timeout`` if None) for an event on ``key``.

        An event notified before the wait began counts, until its ttl runs out.
        """
        timeout_ms = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000
        # Subscribed first, then looked: an event stored in between still wakes us.
        with self.db.notifications.subscribe(self.channel, payload=key) as events:
            while not self._notified(key):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                events.wait(remaining)
        return True

    def wait_notify(self, key: str, ttl: int) -> None:
        """Record an event on ``key`` for ``ttl`` ms, and wake those waiting for it."""
        self._maybe_purge()
        with self.db.connection() as conn:
            conn.execute(
                self.queries["notify"], {"key": key, "ttl_ms": ttl, "channel": self.channel}
            )

    def purge_expired(self, limit: int = PURGE_BATCH) -> int:
        """Delete at most ``limit`` expired rows, oldest first; return how many went."""
        with self.db.connection() as conn:
            row = conn.execute(self.queries["purge_expired"], {"limit": limit}).fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        self.db.close()

    def _write(self, query: str, params: dict[str, object]) -> bool:
        self._maybe_purge()
        with self.db.connection() as conn:
            row = conn.execute(self.queries[query], params).fetchone()
        return bool(row and row[0])

    def _notified(self, key: str) -> bool:
        with self.db.connection() as conn:
            return conn.execute(self.queries["notified"], {"key": key}).fetchone() is not None

    def _maybe_purge(self) -> None:
        """Purge a batch of expired rows if one is due and no other thread is at it.

        Before the caller's write, and never failing it: a purge is housekeeping.
        """
        if time.monotonic() < self._next_purge or not self._purging.acquire(blocking=False):
            return
        try:
            # Set first: a purge that fails is tried again an interval later, not every write.
            self._next_purge = time.monotonic() + self.purge_interval
            if self.purge_expired(self.purge_batch) >= self.purge_batch:
                self._next_purge = 0.0  # more expired rows: go on at the next write
        except Exception as e:
            logger.warning("Purging expired rate limiter keys failed (%s).", e, exc_info=True)
        finally:
            self._purging.release()
