"""A rolling deploy: the previous release's worker on the current schema, side by side with
the current code, on one real workflow in both directions.

``releases/`` holds the previous release's wheel (built from its tag); each migration
since then must keep it working (expand, then contract a release later).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest

import zart_dramatiq as zart
from tests.support import ROOT, Processes, wait_until

PREVIOUS_RELEASE = ROOT / "releases" / "zart_dramatiq-0.1.0-py3-none-any.whl"

APP = '''
"""A worker of one release: ``dramatiq rolling_app`` with that release alone on the path."""

import os
from datetime import timedelta

import dramatiq

import zart_dramatiq as zart
from broker_pg import PostgresBroker

print("zart_dramatiq from", os.path.dirname(zart.__file__), flush=True)

broker = PostgresBroker(
    os.environ["DATABASE_URL"], schema=os.environ["ZART_TEST_SCHEMA"], heartbeat_interval=0.2
)
dramatiq.set_broker(broker)


@zart.durable(actor_name="rolling_order")
def rolling_order(order: int) -> str:
    reserved = zart.step("reserve", lambda: f"reserved {order}")
    zart.sleep("settle", timedelta(milliseconds=50))
    decision = zart.wait_for_event("decision")
    return zart.step("ship", lambda: f"{reserved}, {decision}")
'''


def declare() -> zart.DurableActor:
    """The same workflow in the current code."""

    @zart.durable(actor_name="rolling_order")
    def rolling_order(order: int) -> str:
        reserved = zart.step("reserve", lambda: f"reserved {order}")
        zart.sleep("settle", timedelta(milliseconds=50))
        decision = zart.wait_for_event("decision")
        return zart.step("ship", lambda: f"{reserved}, {decision}")

    return rolling_order


@pytest.fixture
def releases(tmp_path: Path) -> tuple[Path, Path]:
    """The same worker app twice: beside the previous release's packages, unpacked on
    their own, and beside this checkout's."""
    previous, current = tmp_path / "previous", tmp_path / "current"
    with zipfile.ZipFile(PREVIOUS_RELEASE) as wheel:
        wheel.extractall(previous)
    current.mkdir()
    for app_dir in (previous, current):
        (app_dir / "rolling_app.py").write_text(APP)
    return previous, current


def worker_of(processes: Processes, *path: Path) -> subprocess.Popen[bytes]:
    """``dramatiq rolling_app`` with ``path`` alone to import from (-P: not the checkout)."""
    args = [sys.executable, "-P", "-m", "dramatiq", "rolling_app", "--processes", "1"]
    return processes.start([*args, "--threads", "4", "--path", *map(str, path)])


def runs_from(processes: Processes, worker: subprocess.Popen[bytes], where: Path) -> bool:
    return f"zart_dramatiq from {where / 'zart_dramatiq'}" in processes.log_of(worker).read_text()


def status(execution_id: str) -> str:
    return zart.get_execution(execution_id).status


def test_the_previous_release_and_this_one_run_one_workflow_together(
    broker, processes: Processes, releases: tuple[Path, Path]
) -> None:
    previous, current = releases
    rolling_order = declare()
    old = worker_of(processes, previous)

    # Started by the current code, run by the previous release.
    for n in (1, 2):
        zart.start(rolling_order, n, execution_id=f"order-{n}")
    wait_until(
        lambda: {status("order-1"), status("order-2")} == {"waiting"},
        timeout=30,
        message=lambda: f"the previous release to run them; {processes.output()[-2000:]}",
    )
    zart.send_event("order-1", "decision", "approved")
    assert zart.get_handle("order-1").result(timeout=30) == "reserved 1, approved"
    assert runs_from(processes, old, previous)

    # The previous release stops mid-workflow; the current one finishes its executions.
    old.terminate()
    old.wait(30)
    new = worker_of(processes, current, ROOT)
    zart.send_event("order-2", "decision", "approved")
    assert zart.get_handle("order-2").result(timeout=30) == "reserved 2, approved"

    # And back: started and suspended by the current code, ended by the previous release.
    zart.start(rolling_order, 3, execution_id="order-3")
    wait_until(lambda: status("order-3") == "waiting", timeout=30, message="order-3 to wait")
    assert runs_from(processes, new, ROOT)
    new.terminate()
    new.wait(30)
    worker_of(processes, previous)
    zart.send_event("order-3", "decision", "approved")
    assert zart.get_handle("order-3").result(timeout=30) == "reserved 3, approved"
