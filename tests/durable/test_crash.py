"""A real dramatiq worker SIGKILLed mid-execution, then restarted: nothing lost, nothing redone."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest
from psycopg import sql

import zart_dramatiq as zart
from tests.apps import durable_app
from tests.support import Processes, rows, wait_until

#: The worker app these tests crash and restart.
DURABLE_APP = "tests.apps.durable_app"


@pytest.fixture
def actors(broker, db, schema: str) -> dict[str, zart.DurableActor]:
    durable_app.create_tables(db, schema)
    return durable_app.declare(broker)


def start_app_worker(processes: Processes) -> subprocess.Popen[bytes]:
    return processes.dramatiq_worker(DURABLE_APP, threads=4)


def effects(db, schema: str, execution_id: str) -> Counter[str]:
    query = "SELECT name FROM {s}.test_effects WHERE execution_id = %s"
    return Counter(name for (name,) in rows(db, schema, query, execution_id))


def open_gate(db, schema: str, name: str) -> None:
    db.execute(
        sql.SQL("INSERT INTO {}.test_gates VALUES (%s)").format(sql.Identifier(schema)), (name,)
    )


def test_kill_mid_execution_of_ten_steps(processes, actors, db, schema) -> None:
    worker = start_app_worker(processes)
    handle = zart.start(actors["ten_steps"], "ten", 5, execution_id="ten")
    wait_until(lambda: effects(db, schema, "ten")["s5"] == 1, timeout=30, message="step s5 to run")
    processes.kill(worker)
    assert handle.status() == "running"  # the dead worker still holds it, for now

    start_app_worker(processes)
    open_gate(db, schema, "s5")
    assert handle.result(timeout=30) == [f"s{i}" for i in range(10)]
    counts = effects(db, schema, "ten")
    # Completed steps ran exactly once; only the step in flight at the kill ran twice.
    assert {name: counts[name] for name in counts if name != "s5"} == {
        f"s{i}": 1 for i in range(10) if i != 5
    }
    assert counts["s5"] == 2


def test_kill_during_a_sleep(processes, actors, db, schema) -> None:
    worker = start_app_worker(processes)
    handle = zart.start(actors["sleeper"], "nap", execution_id="nap")
    wait_until(lambda: handle.status() == "sleeping", timeout=30, message="the sleep")
    processes.kill(worker)
    assert handle.status() == "sleeping"
    start_app_worker(processes)
    assert handle.result(timeout=30) == "after"
    assert effects(db, schema, "nap") == Counter({"before": 1, "after": 1})


def test_kill_during_an_event_wait(processes, actors, db, schema) -> None:
    worker = start_app_worker(processes)
    handle = zart.start(actors["waiter"], "wait", execution_id="wait")
    wait_until(lambda: handle.status() == "waiting", timeout=30, message="the event wait")
    processes.kill(worker)
    zart.send_event("wait", "go", {"n": 1})  # delivered while no worker runs
    start_app_worker(processes)
    assert handle.result(timeout=30) == "after-1"
    assert effects(db, schema, "wait") == Counter({"before": 1, "after-1": 1})
