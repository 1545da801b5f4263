"""Fixtures: a real PostgreSQL, one fresh schema per test, brokers and workers on it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from psycopg import sql

from broker_pg import PostgresBroker, migrate

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _server_url() -> str:
    """DATABASE_URL, else the local server, else an embedded one (pgserver)."""
    if url := os.environ.get("DATABASE_URL"):
        return url
    try:
        psycopg.connect(LOCAL_SERVER, connect_timeout=2).close()
        return LOCAL_SERVER
    except psycopg.OperationalError:
        from broker_pg import resolve_url

        return resolve_url()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database created for this test session, dropped at its end."""
    server = _server_url()
    name = f"zart_test_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    yield url
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A freshly migrated schema, unique to the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    migrate(database_url, schema=name)
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A plain autocommit connection for assertions on the tables."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def broker(database_url: str, schema: str) -> Iterator[PostgresBroker]:
    broker = PostgresBroker(database_url, schema=schema)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def worker(broker: PostgresBroker) -> Iterator[Worker]:
    worker = Worker(broker, worker_timeout=100, worker_threads=8)
    worker.start()
    yield worker
    worker.stop()
