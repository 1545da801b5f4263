"""Per-step retry policies, built from tenacity's strategies."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import tenacity
from tenacity import RetryCallState

from .errors import NotAllowedInStep

#: The default condition: any exception may be tried again. One shared instance,
#: so that a policy still using it can be described (``Retry.to_json``).
_ANY_EXCEPTION = tenacity.retry_if_exception_type(Exception)


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
    retry: Any = field(default_factory=lambda: _ANY_EXCEPTION)
    non_retryable: tuple[type[BaseException], ...] = ()
    max_inline_wait: timedelta = timedelta(seconds=1)
    #: How ``fixed`` or ``exponential`` built it, so that a branch running on
    #: another worker can rebuild it (``to_json``); None for any other policy.
    spec: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def fixed(cls, attempts: int, delay: timedelta, **options: Any) -> Retry:
        return cls(
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_fixed(delay.total_seconds()),
            **options,
        )._described("fixed", attempts=attempts, delay=delay.total_seconds())

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
        )._described(
            "exponential",
            attempts=attempts,
            initial=initial.total_seconds(),
            maximum=maximum.total_seconds(),
            jitter=jitter,
        )

    def _described(self, kind: str, **parameters: Any) -> Retry:
        if self.retry is not _ANY_EXCEPTION:
            return self  # a custom condition has no description
        return replace(
            self,
            spec={
                "kind": kind,
                **parameters,
                "non_retryable": [_type_name(t) for t in self.non_retryable],
                "max_inline_wait": self.max_inline_wait.total_seconds(),
            },
        )

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON, to rebuild with ``from_json`` on another worker.

        Raises ValueError for a policy built from tenacity strategies directly:
        only ``Retry.fixed`` and ``Retry.exponential`` can travel.
        """
        if self.spec is None:
            raise ValueError(
                f"{self!r} cannot be sent to another worker: a branch's retry policy must be "
                "built with Retry.fixed(...) or Retry.exponential(...) (with non_retryable "
                "and max_inline_wait as options, and no custom retry condition)"
            )
        return self.spec

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> Retry:
        options: dict[str, Any] = {
            "non_retryable": tuple(_import_type(name) for name in spec["non_retryable"]),
            "max_inline_wait": timedelta(seconds=spec["max_inline_wait"]),
        }
        if spec["kind"] == "fixed":
            return cls.fixed(spec["attempts"], timedelta(seconds=spec["delay"]), **options)
        if spec["kind"] == "exponential":
            return cls.exponential(
                spec["attempts"],
                timedelta(seconds=spec["initial"]),
                maximum=timedelta(seconds=spec["maximum"]),
                jitter=spec["jitter"],
                **options,
            )
        raise ValueError(f"unknown retry policy {spec['kind']!r}")

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


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_type(name: str) -> type[BaseException]:
    module, _, qualname = name.rpartition(".")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


#: Steps without a policy run once; their error is recorded and re-raised.
NO_RETRY = Retry.fixed(1, timedelta(0))
