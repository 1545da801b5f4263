"""Fixtures: a real PostgreSQL, one fresh schema per test, brokers, workers and processes on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from psycopg import sql

from broker_pg import PostgresBroker, migrate
from tests.support import Cli, Processes, drop_schema, new_schema_name

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
    name = new_schema_name()
    migrate(database_url, schema=name)
    yield name
    drop_schema(database_url, name)


@pytest.fixture
def unmigrated_schema(database_url: str) -> Iterator[str]:
    """A schema name nobody has created yet, unique to the test; dropped at the end."""
    name = new_schema_name()
    yield name
    drop_schema(database_url, name)


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
def make_broker(database_url: str, schema: str) -> Iterator[Callable[..., PostgresBroker]]:
    """Build extra brokers on the test schema (each one is a separate worker); closed at the end."""
    made: list[PostgresBroker] = []

    def make(**kwargs: Any) -> PostgresBroker:
        broker = PostgresBroker(database_url, schema=schema, **kwargs)
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        broker.close()


@pytest.fixture
def start_worker(
    broker: PostgresBroker, make_broker: Callable[..., PostgresBroker]
) -> Iterator[Callable[..., Worker]]:
    """Start Dramatiq workers in this process; stopped (before any broker closes) at the end."""
    started: list[Worker] = []

    def start(
        broker: dramatiq.Broker,
        *,
        threads: int = 4,
        timeout: int = 100,
        prefetch: int | None = None,
        queues: set[str] | None = None,
    ) -> Worker:
        worker = Worker(broker, queues=queues, worker_timeout=timeout, worker_threads=threads)
        if prefetch is not None:
            worker.queue_prefetch = prefetch
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop()


@pytest.fixture
def worker(broker: PostgresBroker, start_worker: Callable[..., Worker]) -> Worker:
    """A worker with eight threads on the test broker."""
    return start_worker(broker, threads=8)


@pytest.fixture
def processes(database_url: str, schema: str, tmp_path: Path) -> Iterator[Processes]:
    """Start subprocesses on the test schema, logging under ``tmp_path``; stopped at the end."""
    started = Processes(database_url, schema, tmp_path)
    yield started
    started.close()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], database_url: str, schema: str) -> Cli:
    """The zart-dramatiq command, in-process, on the test schema."""
    return Cli(capsys, "--url", database_url, "--schema", schema)
