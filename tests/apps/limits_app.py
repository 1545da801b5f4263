"""Worker app for the concurrency-key test: ``dramatiq tests.apps.limits_app``.

``limited`` allows two open executions per customer. Each records, in
``test_open``, how many executions of its customer were open when it entered
(counted by the database, across processes), and leaves before it ends.
"""

from __future__ import annotations

from datetime import timedelta

import dramatiq
import psycopg
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from tests.apps.durable_app import SCHEMA, URL

MAX_PER_CUSTOMER = 2

TABLES = """
CREATE TABLE IF NOT EXISTS {s}.test_open (customer text PRIMARY KEY, n int NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.test_entered (customer text, order_id int, open_then int);
"""


def create_tables(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL(TABLES).format(s=sql.Identifier(schema)))


def _count(customer: str, order_id: int, delta: int) -> None:
    with psycopg.connect(URL, autocommit=True) as conn, conn.transaction():
        (open_now,) = conn.execute(
            sql.SQL(
                "INSERT INTO {s}.test_open VALUES (%s, %s) ON CONFLICT (customer) "
                "DO UPDATE SET n = test_open.n + excluded.n RETURNING n"
            ).format(s=sql.Identifier(SCHEMA)),
            (customer, delta),
        ).fetchone()
        if delta > 0:
            conn.execute(
                sql.SQL("INSERT INTO {s}.test_entered VALUES (%s, %s, %s)").format(
                    s=sql.Identifier(SCHEMA)
                ),
                (customer, order_id, open_now),
            )


def declare(broker: dramatiq.Broker) -> zart.DurableActor:
    @zart.durable(
        broker=broker,
        actor_name="limited",
        concurrency=zart.Limit(key=lambda customer, order_id: customer, max=MAX_PER_CUSTOMER),
    )
    def limited(customer: str, order_id: int) -> int:
        zart.step("enter", _count, customer, order_id, 1)
        zart.sleep("work", timedelta(milliseconds=20))
        zart.step("leave", _count, customer, order_id, -1)
        return order_id

    return limited


if URL:
    broker = PostgresBroker(URL, schema=SCHEMA, heartbeat_interval=0.2)
    dramatiq.set_broker(broker)
    limited = declare(broker)
