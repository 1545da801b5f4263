"""Real dramatiq workers SIGKILLed mid-fan-out and mid-map, then restarted.

Every branch that completed before the kill ran once, the branches in flight
ran again, the join fired once and the result is right.
"""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

import zart_dramatiq as zart
from tests.apps import durable_app, fanout_app
from tests.durable.test_crash import effects, open_gate
from tests.support import Processes, rows, wait_until

FANOUT_APP = "tests.apps.fanout_app"


@pytest.fixture
def actors(broker, db, schema: str) -> dict[str, zart.DurableActor]:
    durable_app.create_tables(db, schema)
    return fanout_app.declare(broker)


def start_app_worker(processes: Processes) -> subprocess.Popen[bytes]:
    return processes.dramatiq_worker(FANOUT_APP, threads=4)


def branch_statuses(db, schema: str, execution_id: str) -> Counter[str]:
    query = "SELECT status FROM {s}.branches WHERE execution_id = %s"
    return Counter(status for (status,) in rows(db, schema, query, execution_id))


def test_kill_mid_fan_out(processes, actors, db, schema) -> None:
    worker = start_app_worker(processes)
    handle = zart.start(actors["fan_out"], "fan", 20, [7], execution_id="fan")
    # Every branch but the held one has committed its outcome: b7 alone is in flight.
    wait_until(
        lambda: (
            branch_statuses(db, schema, "fan")["completed"] == 19
            and effects(db, schema, "fan")["b7"] == 1
        ),
        timeout=60,
        message="19 branches to complete and b7 to start",
    )
    processes.kill(worker)

    start_app_worker(processes)
    open_gate(db, schema, "b7")
    assert handle.result(timeout=60) == sum(i * i for i in range(20))
    counts = effects(db, schema, "fan")
    assert counts["b7"] == 2  # in flight at the kill: ran again
    assert all(counts[f"b{i}"] == 1 for i in range(20) if i != 7)
    # Opened by run 1, woken once by the join: two runs.
    assert zart.get_execution("fan").runs == 2


def test_kill_mid_map(processes, actors, db, schema) -> None:
    worker = start_app_worker(processes)
    # Two at a time: items 10 and 11 hold both slots, 12..29 are not started yet.
    handle = zart.start(actors["mapper"], "map", 30, 2, [10, 11], execution_id="map")
    wait_until(
        lambda: (
            branch_statuses(db, schema, "map")["completed"] == 10
            and effects(db, schema, "map")["b10"] == 1
            and effects(db, schema, "map")["b11"] == 1
        ),
        timeout=60,
        message="items 0..9 to complete and items 10, 11 to start",
    )
    processes.kill(worker)
    assert branch_statuses(db, schema, "map")["pending"] == 18

    start_app_worker(processes)
    open_gate(db, schema, "b10")
    open_gate(db, schema, "b11")
    assert handle.result(timeout=60) == sum(i * i for i in range(30))
    counts = effects(db, schema, "map")
    assert (counts["b10"], counts["b11"]) == (2, 2)  # in flight at the kill
    assert all(counts[f"b{i}"] == 1 for i in range(30) if i not in (10, 11))
    assert zart.get_execution("map").runs == 2
