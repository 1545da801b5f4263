"""Worker app for crash tests: ``dramatiq tests.apps.durable_app``.

Reads DATABASE_URL and ZART_TEST_SCHEMA. Each step records its side effect in
``test_effects``; a step can hold until the test opens a row in ``test_gates``,
so a test knows exactly which step is in flight when it kills the worker.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import dramatiq
import psycopg
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import PostgresBroker

URL = os.environ.get("DATABASE_URL", "")
SCHEMA = os.environ.get("ZART_TEST_SCHEMA", "zart")

TABLES = """
CREATE TABLE IF NOT EXISTS {s}.test_effects (
    execution_id text, name text, at timestamptz DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.test_gates (name text PRIMARY KEY);
"""


def create_tables(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL(TABLES).format(s=sql.Identifier(schema)))


def effect(execution_id: str, name: str, hold: bool = False) -> str:
    """Record a side effect; with ``hold``, then wait until the gate ``name`` is opened."""
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {}.test_effects (execution_id, name) VALUES (%s, %s)").format(
                sql.Identifier(SCHEMA)
            ),
            (execution_id, name),
        )
        while (
            hold
            and not conn.execute(
                sql.SQL("SELECT 1 FROM {}.test_gates WHERE name = %s").format(
                    sql.Identifier(SCHEMA)
                ),
                (name,),
            ).fetchone()
        ):
            time.sleep(0.02)
    return name


def declare(broker: dramatiq.Broker) -> dict[str, zart.DurableActor]:
    @zart.durable(broker=broker, actor_name="ten_steps")
    def ten_steps(execution_id: str, hold_at: int) -> list[str]:
        return [zart.step(f"s{i}", effect, execution_id, f"s{i}", i == hold_at) for i in range(10)]

    @zart.durable(broker=broker, actor_name="sleeper")
    def sleeper(execution_id: str) -> str:
        zart.step("before", effect, execution_id, "before")
        # Long enough that the test surely kills the worker while it sleeps.
        zart.sleep("nap", timedelta(seconds=3))
        return zart.step("after", effect, execution_id, "after")

    @zart.durable(broker=broker, actor_name="waiter")
    def waiter(execution_id: str) -> str:
        zart.step("before", effect, execution_id, "before")
        payload = zart.wait_for_event("go")
        return zart.step("after", effect, execution_id, f"after-{payload['n']}")

    @zart.durable(broker=broker, actor_name="generations")
    def generations(
        execution_id: str, generation: int, last: int, hold_at: int, die_at: int
    ) -> str:
        """One step per generation; holds in generation ``hold_at``, and the worker kills
        itself right after generation ``die_at`` continued as new."""
        name = f"g{generation}"
        zart.step(name, effect, execution_id, name, generation == hold_at)
        if generation < last:
            try:
                zart.continue_as_new(execution_id, generation + 1, last, hold_at, die_at)
            finally:
                if generation == die_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        return name

    return {
        "ten_steps": ten_steps,
        "sleeper": sleeper,
        "waiter": waiter,
        "generations": generations,
    }


if URL:
    broker = PostgresBroker(URL, schema=SCHEMA, heartbeat_interval=0.2)
    dramatiq.set_broker(broker)
    actors = declare(broker)
