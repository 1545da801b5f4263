"""Worker app for the connection-budget and pgbouncer tests: ``dramatiq tests.apps.pool_app``.

Environment: ``DATABASE_URL`` (the server, or a pgbouncer in front of it),
``ZART_TEST_SCHEMA``, and ``POOL_APP_NAME``: how the worker's sessions appear in
``pg_stat_activity`` (``<name>`` for the pool, ``<name>-listener`` for the LISTEN session).

Its actors open no connection of their own, so a worker's sessions are the
framework's alone: ``few_steps`` (checkpointed steps), ``nap_and_wait`` (a step, a
durable sleep, an event) and the plain ``record``, which writes on the broker's pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import dramatiq
import psycopg
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import PostgresBroker

URL = os.environ.get("DATABASE_URL", "")
SCHEMA = os.environ.get("ZART_TEST_SCHEMA", "zart")
APPLICATION_NAME = os.environ.get("POOL_APP_NAME", "pool-app")
QUEUE = "pool_app"
STEPS = 3


def create_tables(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {}.recorded (n integer PRIMARY KEY)").format(sql.Identifier(schema))
    )


def square(n: int, i: int) -> int:
    return n * n + i


@dataclass(frozen=True)
class Actors:
    few_steps: zart.DurableActor
    nap_and_wait: zart.DurableActor
    record: dramatiq.Actor


def declare(broker: PostgresBroker) -> Actors:
    @zart.durable(broker=broker, actor_name="few_steps", queue_name=QUEUE)
    def few_steps(n: int) -> int:
        return sum(zart.step(f"s{i}", square, n, i) for i in range(STEPS))

    @zart.durable(broker=broker, actor_name="nap_and_wait", queue_name=QUEUE)
    def nap_and_wait(n: int) -> int:
        before = zart.step("before", square, n, 0)
        zart.sleep("nap", timedelta(milliseconds=200))
        event = zart.wait_for_event("go")
        return before + int(event["add"])

    @dramatiq.actor(broker=broker, actor_name="record", queue_name=QUEUE)
    def record(n: int) -> None:
        with broker.db.connection() as conn:
            conn.execute(
                sql.SQL("INSERT INTO {}.recorded (n) VALUES (%s)").format(
                    sql.Identifier(broker.db.schema)
                ),
                (n,),
            )

    return Actors(few_steps, nap_and_wait, record)


if URL:
    broker = PostgresBroker(URL, schema=SCHEMA, application_name=APPLICATION_NAME)
    dramatiq.set_broker(broker)
    actors = declare(broker)
