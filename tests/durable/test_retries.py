"""Per-step retries from tenacity strategies, and Dramatiq's whole-actor Retries."""

from __future__ import annotations

from datetime import timedelta

import pytest
import tenacity

import zart_dramatiq as zart
from tests.support import Effects, wait_until


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def failing(effects: Effects, name: str, times: int, error: type[Exception] = Flaky):
    def call() -> str:
        effects(name)
        if effects[name] <= times:
            raise error(f"{name} attempt {effects[name]}")
        return f"{name} ok"

    return call


def test_fixed_retries_run_inline_and_record_attempts(broker, worker, effects) -> None:
    policy = zart.Retry.fixed(4, timedelta(milliseconds=10))

    @zart.durable
    def flow() -> str:
        return zart.step("call", failing(effects, "call", 2), retry=policy)

    handle = zart.start(flow)
    assert handle.result(timeout=15) == "call ok"
    (step,) = zart.get_execution(handle.execution_id).steps
    assert (step.status, step.attempts) == ("completed", 3)
    assert effects["call"] == 3


def test_exhausted_retries_record_the_error_and_replays_reraise_it(broker, worker, effects) -> None:
    policy = zart.Retry.exponential(2, timedelta(milliseconds=5), jitter=True)

    @zart.durable
    def flow() -> str:
        try:
            zart.step("charge", failing(effects, "charge", 99), retry=policy)
        except Flaky as error:
            # Compensation: runs on the first pass and again, identically, on replay.
            reason = str(error)
            refund = zart.step("refund", lambda: effects("refund") or f"refunded: {reason}")
        zart.sleep("settle", timedelta(milliseconds=50))
        return refund

    handle = zart.start(flow)
    assert handle.result(timeout=15) == "refunded: charge attempt 2"
    steps = {s.key: s for s in zart.get_execution(handle.execution_id).steps}
    assert steps["step:charge"].status == "failed"
    assert steps["step:charge"].attempts == 2
    assert steps["step:charge"].error["message"] == "charge attempt 2"
    assert effects["charge"] == 2
    assert effects["refund"] == 1


def test_non_retryable_errors_fail_the_step_at_once(broker, worker, effects) -> None:
    policy = zart.Retry.fixed(5, timedelta(milliseconds=5), non_retryable=(Fatal,))

    @zart.durable(max_retries=0)
    def flow() -> str:
        return zart.step("call", failing(effects, "call", 3, Fatal), retry=policy)

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    assert failure.value.error["type"].endswith("Fatal")
    assert effects["call"] == 1


def test_retry_on_predicate_and_tenacity_strategies(broker, worker, effects) -> None:
    policy = zart.Retry(
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_fixed(0.01),
        retry=tenacity.retry_if_exception_message(match=".*attempt [12]$"),
    )

    @zart.durable(max_retries=0)
    def flow() -> str:
        return zart.step("call", failing(effects, "call", 99), retry=policy)

    with pytest.raises(zart.ExecutionFailed):
        zart.start(flow).result(timeout=15)
    # Attempts 1 and 2 match the predicate; attempt 3's error does not.
    assert effects["call"] == 3


def test_long_backoff_is_a_durable_suspension(broker, worker, effects) -> None:
    policy = zart.Retry.fixed(3, timedelta(seconds=1), max_inline_wait=timedelta(milliseconds=100))

    @zart.durable
    def flow() -> str:
        return zart.step("call", failing(effects, "call", 1), retry=policy)

    handle = zart.start(flow)
    wait_until(
        lambda: handle.status() == "retrying", timeout=15, message="the step to wait for its retry"
    )
    step = zart.get_execution(handle.execution_id).steps[0]
    assert (step.status, step.attempts, step.wake_at is not None) == ("retrying", 1, True)
    assert handle.result(timeout=15) == "call ok"
    assert zart.get_execution(handle.execution_id).steps[0].attempts == 2


@zart.step(name="decorated", retry=zart.Retry.fixed(3, timedelta(milliseconds=5)))
def decorated_step(effects: Effects) -> int:
    effects("decorated")
    if effects["decorated"] < 2:
        raise Flaky("once")
    return 7


def test_step_decorator_with_retry(broker, worker, effects) -> None:
    @zart.durable
    def flow() -> int:
        return decorated_step(effects) * 2

    handle = zart.start(flow)
    assert handle.result(timeout=15) == 14
    assert zart.get_execution(handle.execution_id).steps[0].key == "step:decorated"


def test_dramatiq_retries_rerun_the_body_but_never_recorded_steps(broker, worker, effects) -> None:
    @zart.durable(min_backoff=10, max_backoff=20, max_retries=3)
    def flow() -> str:
        zart.step("first", lambda: effects("first"))
        effects("body")
        if effects["body"] < 3:
            raise Flaky("the body fails outside any step")
        return zart.step("second", lambda: effects("second") or "done")

    handle = zart.start(flow)
    assert handle.result(timeout=15) == "done"
    assert (effects["first"], effects["body"], effects["second"]) == (1, 3, 1)


def test_a_decorated_step_called_outside_a_durable_body_is_a_plain_call(effects) -> None:
    # No retry policy, no checkpoint: the first call's error reaches the caller.
    with pytest.raises(Flaky):
        decorated_step(effects)
    assert decorated_step(effects) == 7
    assert effects["decorated"] == 2
