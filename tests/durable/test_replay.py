"""Replay with a journal: recorded steps return their values and never run again."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
from pydantic import BaseModel

import zart_dramatiq as zart
from tests.support import Effects, wait_until
from zart_dramatiq.store import StepRecord, Store


class Money(BaseModel):
    amount: int
    currency: str


@dataclasses.dataclass
class Parcel:
    weight: float
    tags: list[str]


def test_steps_restore_their_annotated_types_on_replay(broker, worker, effects: Effects) -> None:
    seen: list[tuple[object, ...]] = []

    def price() -> Money:
        effects("price")
        return Money(amount=5, currency="EUR")

    def parcel() -> Parcel:
        effects("parcel")
        return Parcel(weight=1.5, tags=["fragile"])

    def stamp() -> datetime:
        effects("stamp")
        return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def nothing() -> None:
        effects("nothing")

    @zart.durable
    def flow() -> str:
        values = (
            zart.step("price", price),
            zart.step("parcel", parcel),
            zart.step("stamp", stamp),
            zart.step("nothing", nothing),
        )
        seen.append(values)
        zart.sleep("pause", timedelta(milliseconds=50))
        return "done"

    handle = zart.start(flow)
    assert handle.result(timeout=15) == "done"
    # The body ran twice (before and after the sleep); the second run replayed.
    assert len(seen) == 2
    assert seen[0] == seen[1]
    price_value, parcel_value, stamp_value, nothing_value = seen[1]
    assert isinstance(price_value, Money) and price_value.currency == "EUR"
    assert isinstance(parcel_value, Parcel) and parcel_value.tags == ["fragile"]
    assert isinstance(stamp_value, datetime) and stamp_value.tzinfo is not None
    assert nothing_value is None
    assert [effects[n] for n in ("price", "parcel", "stamp", "nothing")] == [1, 1, 1, 1]


def test_repeated_step_names_get_an_occurrence_index(broker, worker, effects: Effects) -> None:
    @zart.durable
    def flow() -> list[int]:
        results = [zart.step("charge", lambda i=i: effects(f"charge-{i}") or i) for i in range(3)]
        zart.sleep("pause", timedelta(milliseconds=20))
        return results

    handle = zart.start(flow)
    assert handle.result(timeout=15) == [0, 1, 2]
    keys = [s.key for s in zart.get_execution(handle.execution_id).steps if s.kind == "step"]
    assert sorted(keys) == ["step:charge", "step:charge#2", "step:charge#3"]
    assert all(effects[f"charge-{i}"] == 1 for i in range(3))


def first_function() -> int:
    return 1


def second_function() -> int:
    return 2


def test_a_step_that_resolves_to_another_function_on_replay_blocks_naming_it(
    broker, worker
) -> None:
    switch = {"fn": first_function}

    @zart.durable(max_retries=0)
    def flow() -> int:
        value = zart.step("pick", switch["fn"])
        zart.sleep("pause", timedelta(milliseconds=100))
        return value

    handle = zart.start(flow)
    wait_until(lambda: handle.status() == "sleeping", timeout=15, message="the first run to pause")
    switch["fn"] = second_function
    # Parked, not failed: code that replays it may still come (tests/durable/test_versioning.py).
    wait_until(lambda: handle.status() == "blocked", timeout=15, message="the replay to block")
    blocked = zart.get_execution(handle.execution_id).blocked
    assert blocked is not None
    assert (blocked.step, blocked.kind) == ("step:pick", "changed")
    assert "'pick'" in blocked.message
    assert "first_function" in blocked.message
    switch["fn"] = first_function
    assert zart.unblock(handle.execution_id)
    assert handle.result(timeout=15) == 1


def test_a_resumed_body_loads_its_journal_in_one_transaction(broker, worker, monkeypatch) -> None:
    statements: list[str] = []
    resumed = threading.Event()
    write_then_read, run, record_step = Store.write_then_read, Store.run, Store.record_step

    def counted(name: str) -> None:
        if resumed.is_set() and threading.current_thread() is not threading.main_thread():
            statements.append(name)

    def counting_write_then_read(self: Store, write: str, read: str, **params: object) -> object:
        counted(f"{write}, then {read}")
        return write_then_read(self, write, read, **params)

    def counting_run(self: Store, tx: object, query: str, **params: object) -> object:
        counted(query)
        return run(self, tx, query, **params)  # type: ignore[arg-type]

    def counting_record_step(self: Store, record: StepRecord, tx: object = None) -> object:
        counted("record_step")
        return record_step(self, record, tx)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "write_then_read", counting_write_then_read)
    monkeypatch.setattr(Store, "run", counting_run)
    monkeypatch.setattr(Store, "record_step", counting_record_step)

    @zart.durable
    def flow() -> int:
        total = sum(zart.step(f"s{i}", lambda i=i: i) for i in range(10))
        zart.sleep("pause", timedelta(milliseconds=200))
        return total

    handle = zart.start(flow)
    wait_until(lambda: handle.status() == "sleeping", timeout=15, message="the pause")
    resumed.set()
    assert handle.result(timeout=15) == 45
    # acquire and its journal (one transaction), the sleep's completion, the finish:
    # ten steps cost nothing.
    assert statements == ["acquire, then journal", "record_step", "finish"]


def test_code_outside_a_durable_body_cannot_call_steps(broker) -> None:
    with pytest.raises(zart.NotInExecution, match="durable"):
        zart.step("x", lambda: 1)


def test_plain_send_starts_an_execution_keyed_by_message_id(broker, worker, effects) -> None:
    @zart.durable
    def flow(x: int) -> int:
        return zart.step("double", lambda: effects("double") or x * 2)

    message = flow.send(21)

    def completed() -> zart.ExecutionInfo | None:
        try:
            info = zart.get_execution(message.message_id)
        except zart.UnknownExecution:  # created by its first delivery
            return None
        return info if info.status == "completed" else None

    info = wait_until(completed, timeout=15, message="the execution started by send()")
    assert info.result == 42
    assert effects["double"] == 1


def test_durable_accepts_an_existing_actor(broker, worker) -> None:
    @zart.durable(timeout=timedelta(minutes=5))
    @dramatiq.actor(queue_name="wrapped")
    def wrapped(name: str) -> str:
        return zart.step("greet", lambda: f"hi {name}")

    assert isinstance(wrapped, zart.DurableActor)
    assert zart.start(wrapped, "ana").result(timeout=15) == "hi ana"
