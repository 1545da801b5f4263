"""Migrations: idempotent, and safe when several processes deploy at once."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from dramatiq.results import Results
from psycopg import sql

from broker_pg import PostgresBackend, PostgresBroker, migrate
from broker_pg.migrations import available_migrations
from tests.support import rows, scalar


def expected_versions() -> list[tuple[int, str]]:
    return [(m.version, m.name) for m in available_migrations()]


def test_migrating_twice_is_a_no_op_the_second_time(
    database_url: str, unmigrated_schema: str, db: psycopg.Connection
) -> None:
    first = migrate(database_url, schema=unmigrated_schema)
    assert first == [f"{v:04d}_{name}" for v, name in expected_versions()]
    tables = rows(
        db,
        unmigrated_schema,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        unmigrated_schema,
    )
    assert {"messages", "dead_letters", "workers", "results", "schema_migrations"} <= {
        t for (t,) in tables
    }
    db.execute(
        sql.SQL(
            "INSERT INTO {}.messages (queue_name, message_id, actor_name, payload)"
            " VALUES ('q', 'kept', 'a', '\\x00')"
        ).format(sql.Identifier(unmigrated_schema))
    )

    assert migrate(database_url, schema=unmigrated_schema) == []
    assert rows(db, unmigrated_schema, "SELECT version, name FROM {s}.schema_migrations") == (
        expected_versions()
    )
    # The second run touched nothing: existing data is still there.
    assert scalar(db, unmigrated_schema, "SELECT message_id FROM {s}.messages") == "kept"


def _migrate_in_child(url: str, schema: str, start: multiprocessing.Barrier) -> list[str]:  # type: ignore[type-arg]
    start.wait(30)
    return migrate(url, schema=schema)


def _child(url: str, schema: str, start, results) -> None:  # type: ignore[no-untyped-def]
    try:
        results.put(("ok", _migrate_in_child(url, schema, start)))
    except BaseException as e:
        results.put(("error", repr(e)))


def test_concurrent_migrations_of_a_fresh_schema_all_succeed(
    database_url: str, unmigrated_schema: str, db: psycopg.Connection
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    results = context.Queue()
    children = [
        context.Process(target=_child, args=(database_url, unmigrated_schema, start, results))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0

    assert [status for status, _ in outcomes] == ["ok"] * 4, outcomes
    applied = [name for _, names in outcomes for name in names]
    # Each migration was applied by exactly one of the runners.
    assert sorted(applied) == sorted(f"{v:04d}_{name}" for v, name in expected_versions())
    assert rows(db, unmigrated_schema, "SELECT version, name FROM {s}.schema_migrations") == (
        expected_versions()
    )


@pytest.mark.parametrize("name", ["Mixed_Case", "x" * 63])
def test_any_valid_schema_name_works_end_to_end(
    database_url: str, name: str, db: psycopg.Connection
) -> None:
    schema = f"{name}_{uuid.uuid4().hex[:8]}"[-63:]
    migrate(database_url, schema=schema)
    broker = PostgresBroker(database_url, schema=schema, poll_interval=30)
    backend = PostgresBackend(database_url, schema=schema)
    broker.add_middleware(Results(backend=backend))
    try:

        @dramatiq.actor(broker=broker, store_results=True)
        def echo(value: int) -> int:
            return value

        consumer = broker.consume(echo.queue_name, prefetch=1, timeout=5000)
        waiting: list[object] = []
        thread = threading.Thread(target=lambda: waiting.append(next(consumer)))
        thread.start()
        sent = echo.send(5)
        thread.join(10)
        [received] = waiting
        assert received is not None and received.message_id == sent.message_id
        consumer.ack(received)
        consumer.close()

        worker = Worker(broker, worker_timeout=100, worker_threads=1)
        worker.start()
        try:
            assert echo.send(6).get_result(backend=backend, block=True, timeout=10_000) == 6
        finally:
            worker.stop()
    finally:
        backend.close()
        broker.close()
        db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
