"""Rate limits of steps (token buckets in PostgreSQL) and zart.RetryAfter."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import zart_dramatiq as zart
from tests.support import Effects, wait_until


def step_of(execution_id: str, key: str) -> zart.StepInfo | None:
    return next((s for s in zart.get_execution(execution_id).steps if s.key == key), None)


def test_steps_of_one_limit_start_no_faster_than_its_rate(broker, worker) -> None:
    starts: list[float] = []
    lock = threading.Lock()
    api = zart.RateLimit("api", rate=20, burst=1)

    def call_api() -> None:
        with lock:
            starts.append(time.monotonic())

    @zart.durable
    def caller(n: int) -> int:
        zart.step("call", call_api, rate_limit=api)
        return n

    handles = [zart.start(caller, n) for n in range(10)]
    assert sorted(h.result(timeout=30) for h in handles) == list(range(10))
    # Ten starts at 20 a second, one at once: at least nine intervals of 50 ms between
    # the first and the last (less a margin for the round trips that reserve them).
    assert max(starts) - min(starts) >= 9 * 0.05 * 0.8


def test_keys_of_a_limit_have_buckets_of_their_own(broker, worker, effects: Effects) -> None:
    per_customer = zart.RateLimit("per-customer", rate=1, per=timedelta(hours=1))

    @zart.durable
    def notify(customer: str, n: int) -> int:
        zart.step("send", lambda: effects(customer), rate_limit=per_customer.for_key(customer))
        return n

    assert zart.start(notify, "acme", 1, execution_id="acme-1").result(timeout=15) == 1
    zart.start(notify, "acme", 2, execution_id="acme-2")
    assert zart.start(notify, "globex", 3, execution_id="globex-3").result(timeout=15) == 3

    # The second of acme's waits for its turn, an hour away, holding no thread.
    wait_until(lambda: step_of("acme-2", "step:send") is not None, message="acme's second wait")
    waiting = zart.get_execution("acme-2")
    send = step_of("acme-2", "step:send")
    assert waiting.status == "retrying" and send is not None
    assert send.attempts == 0 and "per-customer[acme]" in send.error["message"]
    assert send.wake_at is not None and send.wake_at > send.started_at + timedelta(minutes=50)
    assert (effects["acme"], effects["globex"]) == (1, 1)
    zart.cancel("acme-2")


def test_retry_after_runs_the_step_again_without_counting_an_attempt(broker, worker) -> None:
    calls = Effects()

    def flaky() -> str:
        calls("call")
        if calls["call"] < 3:
            raise zart.RetryAfter(0.01, "busy, come back soon")
        return "done"

    @zart.durable
    def patient() -> str:
        return zart.step("call", flaky)

    handle = zart.start(patient, execution_id="patient")
    assert handle.result(timeout=15) == "done"
    assert calls["call"] == 3
    call = step_of("patient", "step:call")
    assert call is not None and call.attempts == 1


def test_retry_after_closes_the_limits_key_for_everyone(broker, worker, effects) -> None:
    api = zart.RateLimit("closing", rate=100)

    def call_api(n: int) -> int:
        effects(f"call-{n}")
        if n == 1:
            raise zart.RetryAfter(timedelta(hours=1), "429 Too Many Requests")
        return n

    @zart.durable
    def caller(n: int) -> int:
        return zart.step("call", call_api, n, rate_limit=api)

    zart.start(caller, 1, execution_id="first")
    wait_until(lambda: zart.get_execution("first").status == "retrying", message="the 429")
    first = step_of("first", "step:call")
    assert first is not None and "429" in first.error["message"]

    zart.start(caller, 2, execution_id="second")
    wait_until(lambda: step_of("second", "step:call") is not None, message="the second's wait")
    second = step_of("second", "step:call")
    assert second is not None and second.attempts == 0 and "closing" in second.error["message"]
    assert effects["call-2"] == 0
    zart.cancel("first")
    zart.cancel("second")


def test_bad_rate_limits_are_refused_with_what_to_do(broker) -> None:
    with pytest.raises(ValueError, match=r"rate=.*> 0"):
        zart.RateLimit("api", rate=0)
    with pytest.raises(ValueError, match="positive timedelta"):
        zart.RateLimit("api", rate=1, per=timedelta(0))
    with pytest.raises(ValueError, match="needs a name"):
        zart.RateLimit("", rate=1)
    with pytest.raises(ValueError, match=r"burst=.*>= 1"):
        zart.RateLimit("api", rate=1, burst=0.5)
    with pytest.raises(ValueError, match="seconds >= 0"):
        zart.RetryAfter(-1)
    with pytest.raises(TypeError, match=r"zart.RateLimit"):
        zart.step("x", print, rate_limit="api")  # type: ignore[call-overload]
