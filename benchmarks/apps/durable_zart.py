"""Worker app: `dramatiq benchmarks.apps.durable_zart` runs the durable-workflow benchmark.

The database and schema come from ``ZDURABLE_PG_URL`` and ``ZDURABLE_SCHEMA`` (set by
``benchmarks/durable.py``), so the driver and the worker processes share them.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import dramatiq

import zart_dramatiq as zart
from broker_pg import PostgresBroker

QUEUE = "zdurable"
STEPS = 10
NAP = timedelta(seconds=1)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/zbench_durable_zart"
DEFAULT_SCHEMA = "bench_durable"


def pg_url() -> str:
    return os.environ.get("ZDURABLE_PG_URL", DEFAULT_URL)


def pg_schema() -> str:
    return os.environ.get("ZDURABLE_SCHEMA", DEFAULT_SCHEMA)


broker = PostgresBroker(pg_url(), schema=pg_schema())
dramatiq.set_broker(broker)


def noop() -> None:
    """The step body: deliberately no work, so only the checkpointing is measured."""


def wall_clock() -> float:
    return time.time()


@zart.durable
@dramatiq.actor(broker=broker, actor_name="zbench_ten_steps", queue_name=QUEUE)
def ten_steps(seq: int) -> int:
    for i in range(STEPS):
        zart.step(f"s{i}", noop)
    return seq


@zart.durable
@dramatiq.actor(broker=broker, actor_name="zbench_nap", queue_name=QUEUE)
def nap(seq: int) -> float:
    zart.sleep("nap", NAP)
    # The resume time, recorded by a step; the intended one is the sleep's wake_at.
    return zart.step("woke", wall_clock)
