"""Operators' pause and resume of one execution or of an actor, enforced where runs are taken."""

from __future__ import annotations

import contextlib
import random
import threading
from datetime import timedelta

import pytest

import zart_dramatiq as zart
from tests.support import Effects, scalar, wait_until


def queued(db, schema: str) -> int:
    """Messages not yet consumed: a delivery a pause dropped is gone from here."""
    return scalar(db, schema, "SELECT count(*) FROM {s}.messages")


def test_a_paused_execution_does_not_wake_until_resumed(
    broker, worker, db, schema, effects: Effects
) -> None:
    @zart.durable
    def nap() -> str:
        zart.step("before", lambda: effects("before"))
        zart.sleep("nap", timedelta(milliseconds=200))
        return zart.step("after", lambda: effects("after") or "done")

    handle = zart.start(nap, execution_id="nap-1")
    wait_until(lambda: handle.status() == "sleeping", message="the execution to sleep")
    zart.pause("nap-1")
    assert zart.get_execution("nap-1").paused_at is not None

    # The wake-up comes due, is delivered and dropped: nothing else would run it.
    wait_until(lambda: queued(db, schema) == 0, message="the wake-up to be delivered")
    assert handle.status() == "sleeping"
    assert effects["after"] == 0

    zart.resume("nap-1")
    assert handle.result(timeout=15) == "done"
    assert (effects["before"], effects["after"]) == (1, 1)
    assert zart.get_execution("nap-1").paused_at is None


def test_a_paused_actor_starts_nothing_until_resumed(broker, worker, db, schema, effects) -> None:
    @zart.durable
    def job(n: int) -> int:
        return zart.step("work", lambda: effects(f"work-{n}") or n)

    zart.pause_actor(job.actor_name)
    assert [p.actor_name for p in zart.paused_actors()] == [job.actor_name]
    handles = [zart.start(job, n, execution_id=f"job-{n}") for n in range(3)]
    wait_until(lambda: queued(db, schema) == 0, message="the starts to be delivered")
    assert {h.status() for h in handles} == {"pending"}

    assert zart.resume_actor(job.actor_name) == 3
    assert [h.result(timeout=15) for h in handles] == [0, 1, 2]
    assert all(effects[f"work-{n}"] == 1 for n in range(3))
    assert zart.paused_actors() == []


def test_an_event_for_a_paused_execution_is_kept_for_its_resume(
    broker, worker, db, schema, effects
) -> None:
    @zart.durable
    def approval() -> str:
        decision = zart.wait_for_event("decision")
        return zart.step("apply", lambda: effects("apply") or decision)

    handle = zart.start(approval, execution_id="approval-1")
    wait_until(lambda: handle.status() == "waiting", message="the wait for the event")
    zart.pause("approval-1")
    assert zart.send_event("approval-1", "decision", "yes", key="d-1")
    wait_until(lambda: queued(db, schema) == 0, message="the wake-up to be delivered")
    assert handle.status() == "waiting"

    zart.resume("approval-1")
    assert handle.result(timeout=15) == "yes"
    assert effects["apply"] == 1


def test_a_paused_execution_can_be_cancelled(broker, worker, effects) -> None:
    @zart.durable
    def waits() -> None:
        zart.wait_for_event("never")

    handle = zart.start(waits, execution_id="held")
    wait_until(lambda: handle.status() == "waiting", message="the wait")
    zart.pause("held")
    assert zart.cancel("held") == "waiting"
    zart.resume("held")
    assert handle.status() == "cancelled"


def test_bad_pause_requests_name_what_is_wrong(broker) -> None:
    @zart.durable
    def quick() -> int:
        return 1

    with pytest.raises(zart.UnknownExecution, match="'nobody'"):
        zart.pause("nobody")
    with pytest.raises(zart.UnknownExecution, match="'nobody'"):
        zart.resume("nobody")
    with pytest.raises(zart.UnknownActor, match=r"'nope'.*known: .*quick"):
        zart.pause_actor("nope")
    assert zart.paused_actors() == []


def test_an_ended_execution_cannot_be_paused(broker, worker) -> None:
    @zart.durable
    def quick() -> int:
        return 1

    assert zart.start(quick, execution_id="ended").result(timeout=15) == 1
    with pytest.raises(zart.ExecutionFinished, match="already ended completed"):
        zart.pause("ended")
    assert zart.get_execution("ended").paused_at is None


def test_pausing_and_resuming_while_executions_run_loses_and_doubles_nothing(
    broker, start_worker, effects
) -> None:
    """Pauses and resumes land at every point of the executions' lives, across two workers."""

    @zart.durable
    def hops(n: int) -> int:
        zart.step("one", lambda: effects(f"one-{n}"))
        zart.sleep("gap", timedelta(milliseconds=20))
        zart.step("two", lambda: effects(f"two-{n}"))
        zart.sleep("gap-2", timedelta(milliseconds=20))
        return zart.step("three", lambda: effects(f"three-{n}") or n)

    start_worker(broker, threads=4)
    start_worker(broker, threads=4)
    handles = [zart.start(hops, n, execution_id=f"hops-{n}") for n in range(40)]
    stop = threading.Event()
    chance = random.Random(7)

    def operator() -> None:
        while not stop.is_set():
            victim = f"hops-{chance.randrange(40)}"
            zart.pause_actor(hops.actor_name)
            with contextlib.suppress(zart.ExecutionFinished):
                zart.pause(victim)
            zart.resume_actor(hops.actor_name)
            zart.resume(victim)

    toggler = threading.Thread(target=operator)
    toggler.start()
    try:
        wait_until(
            lambda: sum(h.status() == "completed" for h in handles) >= 20,
            timeout=60,
            message="half the executions to complete under pauses",
        )
    finally:
        stop.set()
        toggler.join()
    assert sorted(h.result(timeout=60) for h in handles) == list(range(40))
    for n in range(40):
        assert (effects[f"one-{n}"], effects[f"two-{n}"], effects[f"three-{n}"]) == (1, 1, 1)
