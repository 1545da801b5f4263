"""Checkpointed steps: ``zart.step(name, fn, ...)`` and the ``@zart.step`` decorator."""

from __future__ import annotations

import functools
import inspect
import time
import typing
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar, overload

from . import rate_limits
from .errors import NonDeterminismError, StepResultTooLarge
from .limits import json_size
from .metrics import observe
from .rate_limits import RateLimit, RetryAfter
from .retry_policy import NO_RETRY, Retry
from .run import Run, current_run, in_execution
from .serialization import dump, error_from_json, error_to_json, load, type_hints
from .store import Transaction
from .tracing import span

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def run_step(
    name: str,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry: Retry,
    rate_limit: RateLimit | None = None,
) -> T:
    """Return ``fn``'s recorded result, or run it, checkpoint it and return it."""
    run = current_run()
    key = run.key("step", name)
    fn_name = qualified_name(fn)
    annotation = return_annotation(fn)
    recorded = run.journal.get(key)
    if recorded is None:
        if rate_limit is not None:
            _wait_for_token(run, key, name, fn_name, rate_limit, retry)
        return _attempt(
            run, key, name, fn, fn_name, annotation, args, kwargs, retry, 0, 0.0, rate_limit
        )
    check_same_fn(run, key, name, recorded, fn_name)
    if recorded["status"] in ("completed", "failed"):
        return recorded_outcome(run, name, recorded, annotation)
    # Retrying after a durable backoff: the policy counts from the first attempt.
    return _attempt(
        run,
        key,
        name,
        fn,
        fn_name,
        annotation,
        args,
        kwargs,
        retry,
        recorded["attempts"],
        run.seconds_since(recorded),
        rate_limit,
    )


def check_same_fn(run: Run, key: str, name: str, recorded: dict[str, Any], fn_name: str) -> None:
    """Raise NonDeterminismError if step ``key`` was recorded as a call of another function."""
    if recorded["fn"] != fn_name:
        raise run.diverge(
            NonDeterminismError(
                f"step {name!r} ({key}) was recorded as a call of {recorded['fn']} but now "
                f"calls {fn_name}: the workflow's code changed under a running execution, "
                "or code outside steps is not deterministic.",
                step=key,
                kind="changed",
            )
        )


def recorded_outcome(run: Run, name: str, recorded: dict[str, Any], annotation: Any) -> Any:
    """A recorded step's result, or its recorded error raised again."""
    if recorded["status"] == "failed":
        raise run.final(error_from_json(recorded["error"], step=name))
    return load(recorded["result"], annotation, what=f"the recorded result of step {name!r}")


def _attempt(
    run: Run,
    key: str,
    name: str,
    fn: Callable[..., T],
    fn_name: str,
    annotation: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry: Retry,
    attempts: int,
    elapsed_before: float,
    rate_limit: RateLimit | None = None,
) -> T:
    first_started = time.monotonic() - elapsed_before
    while True:
        attempts += 1
        started = time.monotonic()
        try:
            with (
                run.running_step(name),
                span(f"zart.step {name}", **{"zart.step": key, "zart.attempt": attempts}),
            ):
                value = fn(*args, **kwargs)
        except RetryAfter as later:
            # Not a failure: the callee asked for time. Its key stays closed until then.
            if rate_limit is not None:
                rate_limits.close(run.store, rate_limit, later.seconds)
            _observe_attempt(run, "retrying", started)
            if later.seconds <= retry.max_inline_wait.total_seconds():
                time.sleep(later.seconds)
                attempts -= 1
                continue
            _pause_for_retry(run, key, name, fn_name, later, attempts - 1, started, later.seconds)
        except Exception as error:
            wait = retry.next_wait(attempts, error, time.monotonic() - first_started)
            _observe_attempt(run, "failed" if wait is None else "retrying", started)
            if wait is None:
                return _fail(run, key, name, fn_name, annotation, error, attempts, started)
            if wait <= retry.max_inline_wait.total_seconds():
                time.sleep(wait)
                continue
            # A long backoff frees the thread: resume when the next attempt is due.
            _pause_for_retry(run, key, name, fn_name, error, attempts, started, wait)
        _observe_attempt(run, "completed", started)
        data = dump(value, annotation, what=f"step {name!r}")
        size = json_size(data)
        if size > run.limits.payload_bytes:
            # The function ran, and would return as much again: the step fails for good.
            too_large = StepResultTooLarge(name, size, run.limits.payload_bytes)
            return _fail(run, key, name, fn_name, annotation, too_large, attempts, started)
        recorded = run.record(
            key,
            kind="step",
            name=name,
            fn=fn_name,
            status="completed",
            result=data,
            attempts=attempts,
            started=started,
        )
        if recorded.status == "completed" and recorded.result == data:
            return value
        # Another run recorded this step first: its outcome is the one that counts.
        return recorded_outcome(run, name, asdict(recorded), annotation)


def _wait_for_token(
    run: Run, key: str, name: str, fn_name: str, limit: RateLimit, retry: Retry
) -> None:
    """Before a step's first attempt: take a token of ``limit``, waiting for its turn.

    A short wait is slept here; a longer one suspends the execution until then,
    recorded as the step's wait (attempt 0), so its replay does not ask again.
    """
    wait = rate_limits.reserve(run.store, limit)
    if wait <= 0:
        return
    if wait <= retry.max_inline_wait.total_seconds():
        time.sleep(wait)
        return
    waiting = RetryAfter(wait, f"waiting for a token of rate limit {limit}")
    _pause_for_retry(run, key, name, fn_name, waiting, 0, time.monotonic(), wait)


def _observe_attempt(run: Run, outcome: str, started: float) -> None:
    observe("step_attempts", actor=run.actor, outcome=outcome)
    observe("step_seconds", time.monotonic() - started, actor=run.actor)


def _fail(
    run: Run,
    key: str,
    name: str,
    fn_name: str,
    annotation: Any,
    error: BaseException,
    attempts: int,
    started: float,
) -> Any:
    """Record ``error`` as the step's final outcome and raise it.

    If another run recorded the step first, its outcome is the one that counts.
    """
    failure = error_to_json(error)
    recorded = run.record(
        key,
        kind="step",
        name=name,
        fn=fn_name,
        status="failed",
        error=failure,
        attempts=attempts,
        started=started,
    )
    if recorded.status == "failed" and recorded.error == failure:
        raise run.final(error)
    return recorded_outcome(run, name, asdict(recorded), annotation)


def _pause_for_retry(
    run: Run,
    key: str,
    name: str,
    fn_name: str,
    error: Exception,
    attempts: int,
    started: float,
    wait: float,
) -> NoReturn:
    def pause(tx: Transaction) -> None:
        recorded = run.record(
            key,
            kind="step",
            name=name,
            fn=fn_name,
            status="retrying",
            error=error_to_json(error),
            attempts=attempts,
            started=started,
            wake_in_s=wait,
            tx=tx,
        )
        run.suspend(tx, status="retrying", wake_at=recorded.wake_at)

    run.store.atomically(pause)
    assert run.suspension is not None
    raise run.suspension from error


@overload
def step(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...
@overload
def step(name: F, /) -> F: ...
@overload
def step(
    name: str | None = None,
    /,
    *,
    retry: Retry | None = None,
    rate_limit: RateLimit | None = None,
) -> Callable[[F], F]: ...
def step(
    name: Any = None,
    fn: Any = None,
    /,
    *args: Any,
    retry: Retry | None = None,
    rate_limit: RateLimit | None = None,
    **kwargs: Any,
) -> Any:
    """A checkpointed step, called inline or used as a decorator.

    ``zart.step("charge", charge_card, order_id)`` runs a function once per
    execution; ``@zart.step`` / ``@zart.step("charge", retry=Retry.fixed(...))``
    makes every call of the function, inside a durable body, such a step.
    Results are restored through the function's return annotation.
    ``rate_limit`` (a ``zart.RateLimit``) makes the step wait its turn before it starts.
    """
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise TypeError(f"rate_limit takes a zart.RateLimit(...), not {rate_limit!r}")
    if fn is None:
        if callable(name):
            return _decorate(name, None, retry, rate_limit)
        step_name = kwargs.pop("name", name)
        if args or kwargs:
            raise TypeError(
                f"@zart.step takes only name, retry and rate_limit, not {sorted(kwargs)}"
            )
        return functools.partial(_decorate, name=step_name, retry=retry, rate_limit=rate_limit)
    return run_step(name, fn, args, kwargs, retry or NO_RETRY, rate_limit)


def _decorate(
    fn: F, name: str | None, retry: Retry | None, rate_limit: RateLimit | None = None
) -> F:
    step_name = name or fn.__name__
    policy = retry or NO_RETRY

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not in_execution():
            return fn(*args, **kwargs)  # outside a durable body it is a plain call
        return run_step(step_name, fn, args, kwargs, policy, rate_limit)

    return typing.cast(F, wrapper)


def qualified_name(fn: Callable[..., Any]) -> str:
    target = inspect.unwrap(fn)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def return_annotation(fn: Callable[..., Any]) -> Any:
    return type_hints(fn).get("return", Any)
