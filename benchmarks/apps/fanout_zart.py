"""Worker app: `dramatiq benchmarks.apps.fanout_zart` runs the fan-out benchmark's zart side.

Two durable actors: ``fanout`` runs ``n`` no-op branches with ``zart.parallel``, and
``fan_map`` maps the same no-op over ``n`` items with ``zart.map`` at most
``max_concurrency`` at a time. The branches run as ordinary messages of the actors'
queue, on any worker process. The database and schema come from ``ZFANOUT_PG_URL`` and
``ZFANOUT_SCHEMA`` (set by ``benchmarks/fanout.py``), else ``DATABASE_URL`` or the
embedded PostgreSQL and the schema ``bench_fanout``.
"""

from __future__ import annotations

import os

import dramatiq

import zart_dramatiq as zart
from broker_pg import PostgresBroker

QUEUE = "zfanout"
DEFAULT_SCHEMA = "bench_fanout"


def pg_url() -> str | None:
    return os.environ.get("ZFANOUT_PG_URL")


def pg_schema() -> str:
    return os.environ.get("ZFANOUT_SCHEMA", DEFAULT_SCHEMA)


broker = PostgresBroker(pg_url(), schema=pg_schema())
dramatiq.set_broker(broker)


def noop(i: int) -> int:
    """The branch body: no work, so only the fan-out and join are measured.

    It returns its argument so that the parent's sum checks every branch's result.
    """
    return i


@zart.durable
@dramatiq.actor(broker=broker, actor_name="zbench_fanout", queue_name=QUEUE)
def fanout(n: int) -> int:
    results = zart.parallel(*[zart.call(f"b{i}", noop, i) for i in range(n)])
    return sum(results)


@zart.durable
@dramatiq.actor(broker=broker, actor_name="zbench_map", queue_name=QUEUE)
def fan_map(n: int, max_concurrency: int) -> int:
    return sum(zart.map("m", noop, list(range(n)), max_concurrency=max_concurrency))
