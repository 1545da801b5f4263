"""Worker app for transactional-step crash tests: ``dramatiq tests.apps.transactional_app``.

Reads DATABASE_URL and ZART_TEST_SCHEMA, and serves its actors on the broker of
``tests.apps.durable_app`` (whose effects and gates it uses too): a step's
function inserts an order on the step's connection, records an effect on a
connection of its own (committed at once, so the test sees the function run),
then holds until the test opens its gate.
"""

from __future__ import annotations

import dramatiq
import psycopg
from psycopg import sql

import zart_dramatiq as zart
from tests.apps import durable_app
from tests.apps.durable_app import SCHEMA, effect
from zart_dramatiq.transactional import transactional_step

ORDERS = """
CREATE TABLE IF NOT EXISTS {s}.test_orders (
    id serial PRIMARY KEY, execution_id text NOT NULL, item text NOT NULL
);
"""


def create_tables(conn: psycopg.Connection, schema: str) -> None:
    durable_app.create_tables(conn, schema)
    conn.execute(sql.SQL(ORDERS).format(s=sql.Identifier(schema)))


def place_order(conn: psycopg.Connection, execution_id: str, item: str) -> int:
    """Insert the order, then hold at the gate ``place_order`` until the test opens it."""
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {}.test_orders (execution_id, item) VALUES (%s, %s) RETURNING id"
        ).format(sql.Identifier(SCHEMA)),
        (execution_id, item),
    ).fetchone()
    assert row is not None
    effect(execution_id, "place_order", hold=True)
    return int(row[0])


def declare(broker: dramatiq.Broker) -> dict[str, zart.DurableActor]:
    @zart.durable(broker=broker, actor_name="order_flow")
    def order_flow(execution_id: str, item: str) -> int:
        order_id = transactional_step("place", place_order, execution_id, item)
        zart.step("after", effect, execution_id, "after")
        return order_id

    return {"order_flow": order_flow}


if durable_app.URL:
    broker = durable_app.broker
    actors = declare(broker)
