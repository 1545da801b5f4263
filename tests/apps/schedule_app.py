"""Worker app for the schedule tests: ``dramatiq tests.apps.schedule_app``.

Reads DATABASE_URL and ZART_TEST_SCHEMA. Its schedule ``every-second`` starts the
durable actor ``tick`` every second (overlap ``allow``, catch-up ``all``: every tick
must start, late or not); each run of its step records the execution's id in
``schedule_effects``.

With ``SCHEDULE_APP_DIE_IN_CLAIM=1`` the worker SIGKILLs itself inside its first
claim transaction, right after it started a tick (execution row and first message
written, nothing committed), having noted that tick in ``schedule_deaths`` on a
connection of its own.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from zart_dramatiq.scheduler import Scheduler

URL = os.environ.get("DATABASE_URL", "")
SCHEMA = os.environ.get("ZART_TEST_SCHEMA", "zart")
SCHEDULE = "every-second"

TABLES = """
CREATE TABLE IF NOT EXISTS {s}.schedule_effects (
    execution_id text NOT NULL, at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.schedule_deaths (execution_id text NOT NULL, pid integer NOT NULL);
"""


def create_tables(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL(TABLES).format(s=sql.Identifier(schema)))


def _write(query: str, *params: Any) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(sql.SQL(query).format(s=sql.Identifier(SCHEMA)), params)


def record(execution_id: str) -> str:
    _write("INSERT INTO {s}.schedule_effects (execution_id) VALUES (%s)", execution_id)
    return execution_id


def declare(broker: dramatiq.Broker) -> zart.DurableActor:
    @zart.schedule(
        every=timedelta(seconds=1),
        name=SCHEDULE,
        overlap="allow",
        catchup="all",
        catchup_window=timedelta(minutes=10),
    )
    @zart.durable(broker=broker, actor_name="tick", queue_name="schedule_app")
    def tick() -> str:
        execution_id = zart.context().execution_id
        return zart.step("record", record, execution_id)

    return tick


def die_in_the_first_claim() -> None:
    """Make this process SIGKILL itself inside its first claim, after starting a tick."""
    start = Scheduler._start

    def start_then_die(
        self: Scheduler, tx: Any, claimed: Any, actor: Any, execution_id: str, fired: Any
    ) -> bool:
        active = start(self, tx, claimed, actor, execution_id, fired)
        _write(
            "INSERT INTO {s}.schedule_deaths (execution_id, pid) VALUES (%s, %s)",
            execution_id,
            os.getpid(),
        )
        os.kill(os.getpid(), signal.SIGKILL)
        return active

    Scheduler._start = start_then_die  # type: ignore[method-assign]


if URL:
    broker = PostgresBroker(URL, schema=SCHEMA, heartbeat_interval=0.2)
    dramatiq.set_broker(broker)
    actor = declare(broker)
    if os.environ.get("SCHEDULE_APP_DIE_IN_CLAIM") == "1":
        die_in_the_first_claim()
