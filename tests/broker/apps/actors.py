"""Actors shared by the worker subprocesses and the tests that send to them.

They record their progress in tables the test creates (see ``create_tables``) and
block on a PostgreSQL advisory lock, the *gate*, which the test holds to keep them
in flight and releases to let them finish.
"""

from __future__ import annotations

import zlib

import dramatiq
import psycopg
from psycopg import sql

QUEUE = "crashy"


def gate_key(schema: str) -> int:
    """The advisory lock key the actors of ``schema`` wait on."""
    return zlib.crc32(schema.encode())


def create_tables(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(
        sql.SQL(
            "CREATE TABLE {s}.test_starts (n integer NOT NULL, at timestamptz DEFAULT now());"
            "CREATE TABLE {s}.test_done (n integer NOT NULL);"
            "CREATE TABLE {s}.test_events (event text NOT NULL)"
        ).format(s=sql.Identifier(schema))
    )


def declare_actors(broker: dramatiq.Broker, url: str, schema: str) -> dramatiq.Actor:
    s = sql.Identifier(schema)
    key = gate_key(schema)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="gated", max_retries=0)
    def gated(n: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("INSERT INTO {}.test_starts (n) VALUES (%s)").format(s), (n,))
            conn.execute("SELECT pg_advisory_lock_shared(%s)", (key,))
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", (key,))
            conn.execute(sql.SQL("INSERT INTO {}.test_done (n) VALUES (%s)").format(s), (n,))

    return gated
