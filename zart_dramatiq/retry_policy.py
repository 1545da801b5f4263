"""Per-step retry policies, built from tenacity's strategies."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import tenacity
from tenacity import RetryCallState

from .errors import NotAllowedInStep


@dataclass(frozen=True)
class Retry:
    """When and how often a failing step is tried again.

    ``stop``, ``wait`` and ``retry`` are tenacity strategies (``stop_after_attempt``,
    ``wait_exponential``, ``wait_random_exponential``, ``retry_if_exception_type``,
    ...). Exceptions of a ``non_retryable`` type fail the step at once, and so
    does NotAllowedInStep (a misuse no attempt can get past). A wait
    up to ``max_inline_wait`` is slept in the worker thread; a longer one is a
    durable suspension that frees the thread.
    """

    stop: Any = field(default_factory=lambda: tenacity.stop_after_attempt(3))
    wait: Any = field(default_factory=lambda: tenacity.wait_exponential(multiplier=1, max=60))
    retry: Any = field(default_factory=lambda: tenacity.retry_if_exception_type(Exception))
    non_retryable: tuple[type[BaseException], ...] = ()
    max_inline_wait: timedelta = timedelta(seconds=1)

    @classmethod
    def fixed(cls, attempts: int, delay: timedelta, **options: Any) -> Retry:
        return cls(
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_fixed(delay.total_seconds()),
            **options,
        )

    @classmethod
    def exponential(
        cls,
        attempts: int,
        initial: timedelta,
        *,
        maximum: timedelta = timedelta(minutes=5),
        jitter: bool = False,
        **options: Any,
    ) -> Retry:
        wait_class = tenacity.wait_random_exponential if jitter else tenacity.wait_exponential
        return cls(
            stop=tenacity.stop_after_attempt(attempts),
            wait=wait_class(multiplier=initial.total_seconds(), max=maximum.total_seconds()),
            **options,
        )

    def next_wait(self, attempt: int, error: BaseException, elapsed: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if isinstance(error, (*self.non_retryable, NotAllowedInStep)):
            return None
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        state.start_time = 0.0
        state.outcome_timestamp = elapsed
        future = tenacity.Future(attempt)
        future.set_exception(error)
        state.outcome = future
        if not self.retry(state) or self.stop(state):
            return None
        return float(self.wait(state))


#: Steps without a policy run once; their error is recorded and re-raised.
NO_RETRY = Retry(stop=tenacity.stop_after_attempt(1))
