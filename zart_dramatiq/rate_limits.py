"""Rate limits of steps: token buckets in PostgreSQL, shared by every worker.

A step given ``rate_limit=`` reserves a token before its first attempt. When
the bucket has none, the reservation says when its turn comes, and the
execution waits until then durably (holding no thread, past a second), so
callers are served in the order they asked. A step that raises
``RetryAfter`` closes its limit's key until then: every caller waits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta

from .store import Store


@dataclass(frozen=True)
class RateLimit:
    """At most ``rate`` step starts per ``per`` for each ``key`` (``burst`` at once).

    ``name`` identifies the bucket across actors and workers: steps that call
    the same API share one. ``for_key(k)`` gives the same limit for one key,
    say a customer: each key has a bucket of its own.
    """

    name: str
    rate: float
    per: timedelta = timedelta(seconds=1)
    #: How many may start at once after a quiet period; ``rate`` by default.
    burst: float | None = None
    key: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("zart.RateLimit needs a name: the bucket its steps share")
        if not isinstance(self.rate, int | float) or isinstance(self.rate, bool) or self.rate <= 0:
            raise ValueError(f"zart.RateLimit(rate=...) must be a number > 0, not {self.rate!r}")
        if not isinstance(self.per, timedelta) or self.per <= timedelta(0):
            raise ValueError(
                f"zart.RateLimit(per=...) must be a positive timedelta, not {self.per!r}"
            )
        if self.burst is not None and not (
            isinstance(self.burst, int | float)
            and not isinstance(self.burst, bool)
            and self.burst >= 1
        ):
            raise ValueError(f"zart.RateLimit(burst=...) must be a number >= 1, not {self.burst!r}")

    def for_key(self, key: object) -> RateLimit:
        """This limit, for ``key`` alone."""
        return dataclasses.replace(self, key=str(key))

    @property
    def per_second(self) -> float:
        return self.rate / self.per.total_seconds()

    @property
    def capacity(self) -> float:
        return float(self.burst if self.burst is not None else max(self.rate, 1.0))

    def __str__(self) -> str:
        return f"{self.name}[{self.key}]" if self.key else self.name


class RetryAfter(Exception):
    """Raised by a step: run it again after ``seconds``, and, if it has a rate limit, let no
    step of that limit's key start before then.

    It is not a failure: the step's retry policy is not consulted, nor its attempts
    counted against it; the execution's timeout bounds how long it may go on.
    """

    def __init__(self, seconds: float | timedelta, message: str = "") -> None:
        delay = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise ValueError(f"zart.RetryAfter takes seconds >= 0 or a timedelta, not {seconds!r}")
        super().__init__(message or f"retry after {delay:g}s")
        self.seconds = float(delay)


def reserve(store: Store, limit: RateLimit) -> float:
    """Reserve the next token of ``limit``; return the seconds until it may be used."""
    row = store.write(
        "reserve_token",
        name=limit.name,
        key=limit.key,
        rate=limit.per_second,
        burst=limit.capacity,
    )
    assert row is not None
    return float(row[0])


def close(store: Store, limit: RateLimit, seconds: float) -> None:
    """No token of ``limit``'s key may be used for ``seconds`` (``RetryAfter``)."""
    store.write(
        "close_bucket", name=limit.name, key=limit.key, seconds=seconds, burst=limit.capacity
    )
