"""The DBOS side of the durable-workflow benchmark (`benchmarks/durable.py`).

The same workflow as ``benchmarks/apps/durable_zart.py``: ten no-op steps, each
checkpointed, and a one-second durable sleep. Run as a subprocess by the driver:

    python -m benchmarks.dbos_workflow worker --url URL --executor-id w0 --concurrency 8
    python -m benchmarks.dbos_workflow sleep --url URL --count 50

``worker`` launches DBOS and runs workflows from the queue ``zdurable`` (at most
``--concurrency`` at a time in this process) until SIGTERM. ``sleep`` starts
``--count`` sleeping workflows at once and prints their lateness, one JSON list on the
last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from dbos import DBOS, DBOSConfig

APP_NAME = "zbench_durable"
APP_VERSION = "zbench-1"
QUEUE = "zdurable"
WORKFLOW = "zbench_ten_steps"
STEPS = 10
READY_LINE = "zbench dbos worker ready"


@DBOS.step(name="zbench_noop")
def noop() -> None:
    """The step body: deliberately no work, so only the checkpointing is measured."""


@DBOS.workflow(name=WORKFLOW)
def ten_steps(seq: int) -> int:
    for _ in range(STEPS):
        noop()
    return seq


@DBOS.workflow(name="zbench_nap")
def nap(seq: int) -> float:
    before = time.time()
    DBOS.sleep(1)
    # Lateness against the intended wake time: the time before the sleep + 1 s.
    return time.time() - (before + 1)


def config(url: str, executor_id: str) -> DBOSConfig:
    return {
        "name": APP_NAME,
        "system_database_url": url,
        "executor_id": executor_id,
        # Fixed, so workflows enqueued by the driver's client match this code.
        "application_version": APP_VERSION,
        # The driver migrated the database already; launch only checks it.
        "run_migrations": False,
        "log_level": "WARNING",
    }


def register_queue(concurrency: int, poll: float) -> None:
    DBOS.register_queue(
        QUEUE, worker_concurrency=concurrency, polling_interval_sec=poll, on_conflict="never_update"
    )


def serve(
    url: str,
    executor_id: str,
    before_launch: Callable[[], None] = lambda: None,
    after_launch: Callable[[], None] = lambda: None,
) -> None:
    """Launch DBOS, print READY_LINE, and run workflows until SIGTERM or SIGINT.

    Also the worker of ``benchmarks/dbos_fanout.py``, which listens to its own queues.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    DBOS(config=config(url, executor_id))
    before_launch()
    DBOS.launch()
    after_launch()
    print(READY_LINE, flush=True)
    try:
        stop.wait()
    finally:
        DBOS.destroy()


def run_worker(args: argparse.Namespace) -> None:
    serve(
        args.url, args.executor_id, after_launch=lambda: register_queue(args.concurrency, args.poll)
    )


def run_sleepers(args: argparse.Namespace) -> None:
    DBOS(config=config(args.url, args.executor_id))
    DBOS.launch()
    try:
        # DBOS.sleep holds its thread, so every sleeper needs one: start_workflow runs
        # each on DBOS's own (unbounded) executor, all at once.
        handles = [DBOS.start_workflow(nap, seq) for seq in range(args.count)]
        lateness: list[Any] = [handle.get_result() for handle in handles]
    finally:
        DBOS.destroy()
    print(json.dumps(lateness), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--url", required=True)
    worker.add_argument("--executor-id", required=True)
    worker.add_argument("--concurrency", type=int, default=8)
    worker.add_argument("--poll", type=float, default=0.01)
    sleepers = sub.add_parser("sleep")
    sleepers.add_argument("--url", required=True)
    sleepers.add_argument("--executor-id", default="zbench-sleep")
    sleepers.add_argument("--count", type=int, default=50)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "worker":
        run_worker(args)
    else:
        run_sleepers(args)


if __name__ == "__main__":
    main()
