"""Worker app of the HTTP events load check (`benchmarks/http_events.py`).

`dramatiq benchmarks.apps.http_events_zart` runs the executions, and
`zart-dramatiq --broker benchmarks.apps.http_events_zart:broker serve` serves their HTTP
API: both import this module, so the API knows the actor its events wake.

``waits_for_go(i, events)`` waits for ``events`` events named ``go``, one after the other,
and returns the tags of their payloads in the order it consumed them. The database, schema
and the sessions' ``application_name`` come from ``ZHTTP_PG_URL``, ``ZHTTP_SCHEMA`` and
``ZHTTP_APP_NAME`` (set by the driver: the API's sessions are told apart from the
workers' by it), else ``DATABASE_URL`` or the embedded PostgreSQL, ``bench_http`` and
``zbench-worker``.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq

import zart_dramatiq as zart
from broker_pg import PostgresBroker

QUEUE = "zhttp"
DEFAULT_SCHEMA = "bench_http"
EVENT = "go"


def pg_url() -> str | None:
    return os.environ.get("ZHTTP_PG_URL")


def pg_schema() -> str:
    return os.environ.get("ZHTTP_SCHEMA", DEFAULT_SCHEMA)


broker = PostgresBroker(
    pg_url(),
    schema=pg_schema(),
    application_name=os.environ.get("ZHTTP_APP_NAME", "zbench-worker"),
)
dramatiq.set_broker(broker)


def tag(payload: Any) -> str:
    """What an execution keeps of one event: enough to tell which event it was."""
    return f"{payload['execution']}.{payload['seq']}.{payload['nonce']}"


@zart.durable
@dramatiq.actor(broker=broker, actor_name="zbench_waits_for_go", queue_name=QUEUE)
def waits_for_go(i: int, events: int = 1) -> str:
    # Each wait is a journal entry of its own (event:go, event:go#2, ...): a resume
    # replays the waits already done and parks at the next one.
    return " ".join(tag(zart.wait_for_event(EVENT)) for _ in range(events))
