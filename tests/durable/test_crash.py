"""A real dramatiq worker SIGKILLed mid-execution, then restarted: nothing lost, nothing redone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

import zart_dramatiq as zart
from tests.apps import durable_app
from tests.durable.support import eventually

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """``dramatiq tests.apps.durable_app`` subprocesses, each in its own process group."""

    def __init__(self, database_url: str, schema: str, logs: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "ZART_TEST_SCHEMA": schema,
            "PYTHONPATH": str(ROOT),
        }
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"worker-{len(self.running)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "tests.apps.durable_app",
                "--processes",
                "1",
                "--threads",
                "4",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its children: a crash, no cleanup at all."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def close(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def workers(database_url: str, schema: str, db, tmp_path: Path) -> Iterator[Workers]:
    durable_app.create_tables(db, schema)
    workers = Workers(database_url, schema, tmp_path)
    yield workers
    workers.close()


@pytest.fixture
def actors(broker) -> dict[str, zart.DurableActor]:
    return durable_app.declare(broker)


def effects(db, schema: str, execution_id: str) -> Counter[str]:
    query = sql.SQL("SELECT name FROM {}.test_effects WHERE execution_id = %s").format(
        sql.Identifier(schema)
    )
    return Counter(name for (name,) in db.execute(query, (execution_id,)).fetchall())


def open_gate(db, schema: str, name: str) -> None:
    db.execute(
        sql.SQL("INSERT INTO {}.test_gates VALUES (%s)").format(sql.Identifier(schema)), (name,)
    )


def test_kill_mid_execution_of_ten_steps(workers, actors, db, schema) -> None:
    worker = workers.start()
    handle = zart.start(actors["ten_steps"], "ten", 5, execution_id="ten")
    eventually(lambda: effects(db, schema, "ten")["s5"] == 1, timeout=30, what="step s5 to run")
    workers.kill(worker)
    assert handle.status() == "running"  # the dead worker still holds it, for now

    workers.start()
    open_gate(db, schema, "s5")
    assert handle.result(timeout=30) == [f"s{i}" for i in range(10)]
    counts = effects(db, schema, "ten")
    # Completed steps ran exactly once; only the step in flight at the kill ran twice.
    assert {name: counts[name] for name in counts if name != "s5"} == {
        f"s{i}": 1 for i in range(10) if i != 5
    }
    assert counts["s5"] == 2


def test_kill_during_a_sleep(workers, actors, db, schema) -> None:
    worker = workers.start()
    handle = zart.start(actors["sleeper"], "nap", execution_id="nap")
    eventually(lambda: handle.status() == "sleeping", timeout=30, what="the sleep")
    workers.kill(worker)
    workers.start()
    assert handle.result(timeout=30) == "after"
    assert effects(db, schema, "nap") == Counter({"before": 1, "after": 1})


def test_kill_during_an_event_wait(workers, actors, db, schema) -> None:
    worker = workers.start()
    handle = zart.start(actors["waiter"], "wait", execution_id="wait")
    eventually(lambda: handle.status() == "waiting", timeout=30, what="the event wait")
    workers.kill(worker)
    zart.send_event("wait", "go", {"n": 1})  # delivered while no worker runs
    workers.start()
    assert handle.result(timeout=30) == "after-1"
    assert effects(db, schema, "wait") == Counter({"before": 1, "after-1": 1})
