"""Event waits with an inbox: before, during and after the wait; keys; timeouts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel

import zart_dramatiq as zart
from tests.support import rows, scalar, wait_until


class Shipment(BaseModel):
    tracking_number: str


def waiting(handle: zart.ExecutionHandle) -> bool:
    return handle.status() == "waiting"


def test_an_event_sent_before_the_wait_is_kept_and_consumed(broker, worker) -> None:
    @zart.durable
    def flow() -> str:
        zart.sleep("first", timedelta(milliseconds=300))
        return zart.wait_for_event("go", model=Shipment).tracking_number

    handle = zart.start(flow)
    wait_until(lambda: handle.status() == "sleeping", timeout=15, message="the sleep")
    assert zart.send_event(handle.execution_id, "go", {"tracking_number": "T-1"})
    assert handle.result(timeout=15) == "T-1"


def test_an_event_during_the_wait_wakes_the_execution(broker, worker, db, schema) -> None:
    @zart.durable
    def flow() -> dict:
        return zart.wait_for_event("approval", timeout=timedelta(minutes=5))

    handle = zart.start(flow)
    wait_until(lambda: waiting(handle), timeout=15, message="the event wait")
    # While it waits, its only message is due at the wait's deadline, not before.
    query = "SELECT state, eta > now() + interval '4 minutes' FROM {s}.messages"
    assert rows(db, schema, query) == [("delayed", True)]
    zart.send_event(handle.execution_id, "approval", {"ok": True})
    assert handle.result(timeout=15) == {"ok": True}


def test_waiting_twice_for_one_name_consumes_successive_events(broker, worker) -> None:
    @zart.durable
    def flow() -> list[int]:
        return [zart.wait_for_event("tick")["n"] for _ in range(3)]

    handle = zart.start(flow)
    wait_until(lambda: waiting(handle), timeout=15, message="the first wait")
    for n in (1, 2, 3):
        zart.send_event(handle.execution_id, "tick", {"n": n})
    assert handle.result(timeout=15) == [1, 2, 3]


def test_the_same_key_is_stored_once(broker, worker) -> None:
    @zart.durable
    def flow() -> list[int]:
        first = zart.wait_for_event("pay")["n"]
        second = zart.wait_for_event("pay", timeout=timedelta(milliseconds=300), default={"n": 0})
        return [first, second["n"]]

    handle = zart.start(flow)
    assert zart.send_event(handle.execution_id, "pay", {"n": 1}, key="payment-1") is True
    assert zart.send_event(handle.execution_id, "pay", {"n": 1}, key="payment-1") is False
    assert handle.result(timeout=15) == [1, 0]


def test_a_timeout_is_recorded_so_a_late_event_changes_nothing(broker, worker) -> None:
    @zart.durable
    def flow() -> str:
        try:
            zart.wait_for_event("reply", timeout=timedelta(milliseconds=200))
        except zart.EventTimeout:
            outcome = "timed out"
        zart.wait_for_event("continue")
        return outcome

    handle = zart.start(flow)
    wait_until(
        lambda: any(
            s.key == "event:reply" and s.status == "timed_out"
            for s in zart.get_execution(handle.execution_id).steps
        ),
        timeout=15,
        message="the recorded timeout",
    )
    zart.send_event(handle.execution_id, "reply", {"late": True})  # kept in the inbox, unused
    zart.send_event(handle.execution_id, "continue", {})
    assert handle.result(timeout=15) == "timed out"
    with pytest.raises(zart.ExecutionFinished, match="completed"):
        zart.send_event(handle.execution_id, "reply", {"later": True})


def test_sending_to_an_unknown_execution_is_a_clear_error(broker) -> None:
    with pytest.raises(zart.UnknownExecution, match="nope"):
        zart.send_event("nope", "x", {})


def test_a_payload_that_fails_its_model_is_an_error_naming_the_event(broker, worker) -> None:
    @zart.durable(max_retries=0)
    def flow() -> str:
        return zart.wait_for_event("shipment", model=Shipment).tracking_number

    handle = zart.start(flow)
    zart.send_event(handle.execution_id, "shipment", {"wrong": 1})
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    assert failure.value.error["type"].endswith("SerializationError")
    assert "'shipment'" in failure.value.error["message"]


def test_a_wait_without_timeout_parks_and_costs_nothing(broker, worker, db, schema) -> None:
    @zart.durable
    def flow() -> dict:
        return zart.wait_for_event("someday")

    handle = zart.start(flow)
    wait_until(lambda: waiting(handle), timeout=15, message="the event wait")
    assert rows(db, schema, "SELECT state FROM {s}.messages") == [("parked",)]
    runs = "SELECT runs FROM {s}.executions"
    assert scalar(db, schema, runs) == 1
    broker.join(flow.queue_name, timeout=5000)  # nothing claimable: parked rows are not waited on
    assert scalar(db, schema, runs) == 1
    zart.send_event(handle.execution_id, "someday", {"n": 1})
    assert handle.result(timeout=15) == {"n": 1}
