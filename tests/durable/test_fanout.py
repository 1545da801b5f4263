"""Parallel steps and durable map: branches as messages, joined once, in call order.

Branch functions live at module level: a worker imports them by name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, timedelta

import dramatiq
import pytest
import tenacity

import zart_dramatiq as zart
from tests.support import Effects, wait_until

EFFECTS = Effects()
#: Lets a test hold branches until it has seen what it waits for.
GATE = threading.Event()
#: Branches that must run at the same time to get past it.
BARRIER = threading.Barrier(2, timeout=20)
#: How many branches run now, and the most seen at once.
RUNNING = {"now": 0, "peak": 0}
RUNNING_LOCK = threading.Lock()


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    EFFECTS.counts.clear()
    GATE.clear()
    BARRIER.reset()
    RUNNING.update(now=0, peak=0)
    yield
    GATE.set()  # let any held branch go before the worker stops


def double(x: int) -> int:
    EFFECTS(f"double:{x}")
    return 2 * x


def as_date(day: int) -> date:
    return date(2026, 11, day)


def meet(name: str) -> str:
    BARRIER.wait()
    return name


def fail_on(x: int, bad: int) -> int:
    EFFECTS(f"item:{x}")
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def fail_on_one(x: int) -> int:
    return fail_on(x, 1)


def held(x: int) -> int:
    GATE.wait(20)
    return x


def counted(x: int) -> int:
    with RUNNING_LOCK:
        RUNNING["now"] += 1
        RUNNING["peak"] = max(RUNNING["peak"], RUNNING["now"])
    try:
        EFFECTS(f"item:{x}")
        return x * x
    finally:
        with RUNNING_LOCK:
            RUNNING["now"] -= 1


def flaky(x: int) -> int:
    EFFECTS("flaky")
    if EFFECTS["flaky"] < 3:
        raise ConnectionError("try again")
    return x


def noop(x: int) -> int:
    return x


def test_parallel_runs_branches_and_returns_results_in_call_order(broker, worker) -> None:
    @zart.durable
    def flow() -> list[object]:
        a, b = zart.parallel(zart.call("double", double, 21), zart.call("day", as_date, 29))
        return [a, b.isoformat()]  # typed by each function's return annotation

    assert zart.start(flow).result(timeout=20) == [42, "2026-11-29"]


def test_branches_run_concurrently_and_the_parent_holds_no_thread(broker, start_worker) -> None:
    # Two threads: both branches must run at once to pass the barrier, so the
    # waiting parent cannot be holding one of them.
    start_worker(broker, threads=2)

    @zart.durable
    def flow() -> list[str]:
        return zart.parallel(zart.call("a", meet, "a"), zart.call("b", meet, "b"))  # type: ignore[no-any-return]

    assert zart.start(flow).result(timeout=30) == ["a", "b"]


def test_the_join_wakes_the_parent_once_and_replays_from_the_journal(broker, worker) -> None:
    runs: list[int] = []

    @zart.durable
    def flow() -> int:
        runs.append(zart.context().run)
        results = zart.parallel(*[zart.call(f"b{i}", double, i) for i in range(20)])
        zart.sleep("after", timedelta(milliseconds=10))
        return sum(results)

    handle = zart.start(flow)
    assert handle.result(timeout=30) == 2 * sum(range(20))
    # Run 1 opens the group, run 2 is the one wake-up, run 3 follows the sleep.
    assert runs == [1, 2, 3]
    assert all(EFFECTS[f"double:{i}"] == 1 for i in range(20))
    info = zart.get_execution(handle.execution_id)
    (group,) = info.groups
    assert (group.status, group.size, group.open) == ("completed", 20, 0)
    assert [b.status for b in group.branches] == ["completed"] * 20


def test_a_failed_branch_fails_the_group_with_its_error_and_replays_the_same(
    broker, worker
) -> None:
    caught: list[str] = []

    @zart.durable
    def flow() -> str:
        try:
            zart.parallel(zart.call("good", fail_on, 1, 2), zart.call("bad", fail_on, 2, 2))
        except ValueError as error:
            caught.append(str(error))
        zart.sleep("after", timedelta(milliseconds=10))
        return "handled"

    assert zart.start(flow).result(timeout=20) == "handled"
    # Raised at the parallel call on the first wake-up and again on the replay.
    assert caught == ["item 2 is bad", "item 2 is bad"]
    assert EFFECTS["item:2"] == 1


def test_an_unhandled_branch_failure_fails_the_execution_and_unstarted_branches_never_run(
    broker, worker
) -> None:
    @zart.durable
    def flow() -> list[int]:
        return zart.map("items", fail_on_one, range(6), max_concurrency=1)

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed) as failed:
        handle.result(timeout=20)
    assert failed.value.error is not None and "item 1 is bad" in failed.value.error["message"]
    # One at a time: item 1 failed, so items 2..5 were never started.
    assert [EFFECTS[f"item:{i}"] for i in range(6)] == [1, 1, 0, 0, 0, 0]
    (group,) = zart.get_execution(handle.execution_id).groups
    assert [b.status for b in group.branches] == ["completed", "failed"] + ["skipped"] * 4


def test_settled_returns_results_and_errors_side_by_side(broker, worker) -> None:
    @zart.durable
    def flow() -> list[str]:
        outcomes = zart.parallel(
            zart.call("one", fail_on, 1, 2), zart.call("two", fail_on, 2, 2), mode="settled"
        )
        return [repr(o) if isinstance(o, Exception) else str(o) for o in outcomes]

    assert zart.start(flow).result(timeout=20) == ["1", "ValueError('item 2 is bad')"]


def test_first_returns_the_first_branch_to_complete_and_records_it(broker, worker) -> None:
    @zart.durable
    def flow() -> list[object]:
        first = zart.parallel(
            zart.call("slow", held, 1), zart.call("fast", double, 2), mode="first"
        )
        return [first.branch, first.name, first.value]

    handle = zart.start(flow)
    assert handle.result(timeout=20) == [1, "fast", 4]
    GATE.set()
    (group,) = zart.get_execution(handle.execution_id).groups
    assert (group.mode, group.winner, group.status) == ("first", 1, "completed")


def test_map_keeps_at_most_max_concurrency_branches_open(broker, worker) -> None:
    @zart.durable
    def flow() -> list[int]:
        return zart.map("squares", counted, range(30), max_concurrency=3)

    handle = zart.start(flow)
    assert handle.result(timeout=30) == [x * x for x in range(30)]
    assert 1 <= RUNNING["peak"] <= 3
    assert all(EFFECTS[f"item:{i}"] == 1 for i in range(30))


def test_a_map_of_ten_thousand_items_wakes_its_parent_once(broker, start_worker) -> None:
    start_worker(broker, threads=8, prefetch=64)

    @zart.durable
    def flow() -> int:
        return sum(zart.map("many", noop, range(10_000)))

    handle = zart.start(flow)
    assert handle.result(timeout=300) == sum(range(10_000))
    # One run to open the map, one when its last item ended.
    assert zart.get_execution(handle.execution_id).runs == 2


def test_a_branch_retries_under_its_own_policy(broker, worker) -> None:
    policy = zart.Retry.fixed(3, timedelta(milliseconds=10))

    @zart.durable
    def flow() -> list[int]:
        return zart.parallel(zart.call("flaky", flaky, 7, retry=policy))  # type: ignore[no-any-return]

    handle = zart.start(flow)
    assert handle.result(timeout=20) == [7]
    (group,) = zart.get_execution(handle.execution_id).groups
    assert group.branches[0].attempts == 3


def test_a_retry_reruns_only_the_branches_that_failed(broker, worker) -> None:
    ITEM_3_FAILS.set()

    @zart.durable
    def flow() -> list[int]:
        return zart.map("items", fails_while_flagged, range(5))

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed):
        handle.result(timeout=20)
    ITEM_3_FAILS.clear()
    zart.retry(handle.execution_id)
    assert handle.result(timeout=20) == list(range(5))
    # Completed items kept their results; only the failed one ran again.
    assert [EFFECTS[f"item:{i}"] for i in range(5)] == [1, 1, 1, 2, 1]


ITEM_3_FAILS = threading.Event()


def fails_while_flagged(x: int) -> int:
    EFFECTS(f"item:{x}")
    if x == 3 and ITEM_3_FAILS.is_set():
        raise ValueError("item 3 is bad")
    return x


def test_a_branch_function_another_worker_cannot_import_is_refused() -> None:
    def local(x: int) -> int:
        return x

    for fn in (lambda x: x, local):
        with pytest.raises(TypeError, match="module level"):
            zart.call("b", fn, 1)


def test_a_retry_policy_that_cannot_travel_is_refused() -> None:

    custom = zart.Retry(stop=tenacity.stop_after_attempt(2))
    with pytest.raises(ValueError, match=r"Retry\.fixed"):
        zart.call("b", double, 1, retry=custom)
    # One built by Retry.fixed travels, and comes back the same.
    policy = zart.Retry.fixed(3, timedelta(seconds=2), non_retryable=(KeyError,))
    assert zart.Retry.from_json(policy.to_json()).to_json() == policy.to_json()


def test_two_branches_with_one_name_fail_the_execution_writing_nothing(
    broker, worker, db, schema
) -> None:
    @zart.durable
    def flow() -> list[int]:
        return zart.parallel(zart.call("same", double, 1), zart.call("same", double, 2))  # type: ignore[no-any-return]

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed) as failed:
        handle.result(timeout=20)
    assert (
        failed.value.error is not None
        and "two branches named 'same'" in failed.value.error["message"]
    )
    assert db.execute(f'SELECT count(*) FROM "{schema}".step_groups').fetchone() == (0,)
    assert EFFECTS["double:1"] == 0


def test_a_cancelled_parent_starts_no_more_branches(broker, worker) -> None:
    @zart.durable
    def flow() -> list[int]:
        return zart.map("items", held_then_counted, range(5), max_concurrency=1)

    handle = zart.start(flow)
    wait_until(lambda: EFFECTS["held:0"] == 1, timeout=20, message="item 0 to start")
    assert zart.cancel(handle.execution_id) == "waiting"
    GATE.set()
    # Item 0 ends (its outcome is recorded: it ran), and no item after it starts.
    wait_until(
        lambda: zart.get_execution(handle.execution_id).groups[0].branches[0].status == "completed",
        timeout=20,
        message="item 0 to be recorded",
    )
    (group,) = zart.get_execution(handle.execution_id).groups
    assert [b.status for b in group.branches[1:]] == ["pending"] * 4
    assert [EFFECTS[f"held:{i}"] for i in range(5)] == [1, 0, 0, 0, 0]
    assert zart.get_execution(handle.execution_id).status == "cancelled"


def test_a_parent_past_its_deadline_times_out_while_its_branches_run(broker, worker) -> None:
    @zart.durable(timeout=timedelta(milliseconds=300))
    def flow() -> list[int]:
        return zart.parallel(zart.call("slow", held, 1))  # type: ignore[no-any-return]

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed) as failed:
        handle.result(timeout=20)
    assert failed.value.status == "timed_out"
    GATE.set()


def held_then_counted(x: int) -> int:
    EFFECTS(f"held:{x}")
    GATE.wait(20)
    return x


def test_branch_deliveries_fire_no_callback_of_the_actor(broker, worker) -> None:
    successes: list[object] = []

    @dramatiq.actor
    def on_done(message: dict, result: object) -> None:
        successes.append(result)

    @zart.durable(on_success=on_done.actor_name)
    def flow() -> list[int]:
        return zart.parallel(zart.call("a", double, 1), zart.call("b", double, 2))  # type: ignore[no-any-return]

    handle = zart.start(flow)
    assert handle.result(timeout=20) == [2, 4]
    wait_until(lambda: successes, timeout=20, message="the execution's on_success")
    broker.join(on_done.queue_name)
    # Once, for the execution: not for each branch.
    assert successes == [[2, 4]]
