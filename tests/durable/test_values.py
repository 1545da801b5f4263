"""Durable values and the execution's context, as a durable body sees them."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from uuid import UUID

import dramatiq
import pytest

import zart_dramatiq as zart


def test_now_uuid_and_capture_are_taken_once_and_replayed(broker, worker, effects) -> None:
    seen: list[tuple[datetime, UUID, float]] = []

    def draw() -> float:
        effects("draw")
        return random.random()

    @zart.durable
    def flow() -> str:
        values = (zart.now("stamped-at"), zart.uuid("order-id"), zart.capture("draw", draw))
        seen.append(values)
        zart.sleep("pause", timedelta(milliseconds=50))
        seen.append((zart.now("later"), zart.uuid("another"), 0.0))
        return "done"

    assert zart.start(flow).result(timeout=15) == "done"
    # The body ran twice (before and after the sleep); the first three values
    # were taken on the first run and replayed, typed, on the second.
    first, replayed, after = seen
    assert replayed == first
    stamp, order_id, drawn = first
    assert isinstance(stamp, datetime) and stamp.tzinfo is not None
    assert isinstance(order_id, UUID) and isinstance(drawn, float)
    assert effects["draw"] == 1
    # Values taken later are new ones.
    assert after[0] > stamp and after[1] != order_id


def test_the_context_names_the_execution_its_run_and_its_attempt(broker, worker) -> None:
    seen: list[zart.ExecutionContext] = []

    @zart.durable
    @dramatiq.actor(max_retries=1, min_backoff=10, max_backoff=10)
    def flow() -> str:
        context = zart.context()
        seen.append(context)
        if context.attempt == 1:
            raise RuntimeError("first attempt fails")
        return context.execution_id

    handle = zart.start(flow, execution_id="ctx-1")
    assert handle.result(timeout=15) == "ctx-1"
    first, second = seen
    assert (first.execution_id, first.actor, first.attempt, first.generation) == (
        "ctx-1",
        "flow",
        1,
        0,
    )
    assert (second.attempt, second.run) == (2, first.run + 1)
    assert first.parent_id is None


def test_the_context_outside_an_execution_is_an_error() -> None:
    with pytest.raises(zart.NotInExecution):
        zart.context()


def test_durable_values_outside_an_execution_are_an_error() -> None:
    with pytest.raises(zart.NotInExecution):
        zart.now("stamped-at")
