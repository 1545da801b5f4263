"""The README demo: an order goes through a real worker, waits for its shipment, and completes.

    python -m examples.demo

Uses ``DATABASE_URL``, or an embedded PostgreSQL when it is unset, and the
schema ``ZART_SCHEMA`` (default ``zart``). It applies the migrations, starts
``dramatiq examples.orders`` in a subprocess, starts ``fulfil_order``, sends
the ``shipment_ready`` event once the execution waits for it, prints the
receipt and the recorded steps, and stops the worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import IO

from dramatiq.errors import BrokerError

import zart_dramatiq as zart
from broker_pg import migrate, resolve_url

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = os.environ.get("ZART_SCHEMA", "zart")
#: Seconds allowed for the worker to boot and run the order up to its event wait.
WAIT_TIMEOUT = 60.0


class DemoFailed(Exception):
    """The demo could not complete; the message says where it stopped."""


def main() -> int:
    """Run the demo; return 0 on success, 1 with a message on stderr otherwise."""
    with tempfile.TemporaryFile() as worker_log:
        try:
            run(worker_log)
        except (DemoFailed, zart.ZartError, BrokerError) as e:
            print(f"\nThe demo failed: {e}", file=sys.stderr)
            worker_log.seek(0)
            if tail := worker_log.read().decode(errors="replace").splitlines()[-40:]:
                print("Last lines of the worker's log:", *tail, sep="\n  ", file=sys.stderr)
            return 1
    return 0


def run(worker_log: IO[bytes]) -> None:
    url = resolve_url()
    # examples.app and the worker process both read it: everyone uses the same server.
    os.environ["DATABASE_URL"] = url
    applied = migrate(url, schema=SCHEMA)
    print(f"Schema {SCHEMA!r}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))

    # Imported only now, since importing it configures the broker from DATABASE_URL.
    from examples.orders import Order, Shipment, broker, fulfil_order

    try:
        with worker_process(worker_log) as worker:
            print(f"Started a worker: dramatiq examples.orders (pid {worker.pid})")
            order = Order(id=uuid.uuid4().hex[:8], customer="ana", amount=Decimal("42.50"))
            handle = zart.start(fulfil_order, order, execution_id=f"order-{order.id}")
            print(f"Started execution {handle.execution_id}")

            began = time.monotonic()
            wait_for_status(handle, "waiting", worker)
            print(
                f"It validated, charged, slept and now waits for 'shipment_ready' "
                f"({time.monotonic() - began:.1f}s)"
            )
            shipment = Shipment(tracking_number=f"1Z{order.id.upper()}", carrier="UPS")
            zart.send_event(handle.execution_id, "shipment_ready", shipment.model_dump())
            print(f"Sent shipment_ready: {shipment.tracking_number} via {shipment.carrier}")

            receipt = handle.result(timeout=WAIT_TIMEOUT)
            print(f"\nReceipt: {receipt!r}\n")
            print_steps(zart.get_execution(handle.execution_id))
    finally:
        broker.close()


@contextmanager
def worker_process(log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """A ``dramatiq examples.orders`` worker on the same database, stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "examples.orders", "--processes", "1", "--threads", "4"],
        cwd=ROOT,
        env={**os.environ, "ZART_SCHEMA": SCHEMA},
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own process group, so that its worker process can be killed with it.
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
            print("Stopped the worker")
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            print("Killed the worker: it did not stop within 30s", file=sys.stderr)


def wait_for_status(
    handle: zart.ExecutionHandle, status: str, worker: subprocess.Popen[bytes]
) -> None:
    """Return once the execution reaches ``status``; fail if the worker dies or time runs out."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while (current := handle.status()) != status:
        if worker.poll() is not None:
            raise DemoFailed(f"the worker exited with code {worker.returncode}")
        if current in ("completed", "failed", "cancelled", "timed_out"):
            raise DemoFailed(f"execution {handle.execution_id} ended {current}")
        if time.monotonic() > deadline:
            raise DemoFailed(
                f"execution {handle.execution_id} is still {current} after {WAIT_TIMEOUT:.0f}s; "
                "is the worker running on the same database?"
            )
        time.sleep(0.1)


def print_steps(info: zart.ExecutionInfo) -> None:
    print(f"Execution {info.id}: {info.status}, {info.runs} runs")
    print(f"  {'STEP':<28} {'STATUS':<10} {'ATTEMPTS':>8}  DURATION")
    for step in info.steps:
        duration = (
            f"{(step.finished_at - step.started_at).total_seconds():.3f}s"
            if step.finished_at
            else "-"
        )
        print(f"  {step.key:<28} {step.status:<10} {step.attempts:>8}  {duration}")


if __name__ == "__main__":
    sys.exit(main())
