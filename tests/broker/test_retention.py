"""Retention: workers delete dead letters and results past their time, in batches, one at a time."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import psycopg
import pytest

from broker_pg import PostgresBroker, maintenance
from broker_pg.maintenance import Retention
from tests.support import Processes, rows, scalar, wait_until


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    """Batches of 3 rows per table, so a handful of rows takes several."""
    monkeypatch.setattr(maintenance, "RETENTION_BATCH", 3)
    return 3


@pytest.fixture
def other_db(database_url: str) -> Iterator[psycopg.Connection]:
    """A second session, as a second worker has."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def add_dead_letters(db: psycopg.Connection, schema: str, first_id: int, n: int, age: str) -> None:
    """``n`` dead letters with ids from ``first_id``, dead ``age`` ago."""
    rows(
        db,
        schema,
        "INSERT INTO {s}.dead_letters (id, queue_name, message_id, actor_name, priority,"
        " payload, deliveries, enqueued_at, error, dead_at)"
        " SELECT i, 'q', 'm' || i, 'a', 0, '\\x00', 1, now(), 'boom', now() - %s::interval"
        " FROM generate_series(%s::int, %s::int - 1) AS i RETURNING id",
        age,
        first_id,
        first_id + n,
    )


def add_results(db: psycopg.Connection, schema: str, prefix: str, n: int, expires_in: str) -> None:
    """``n`` results keyed ``prefix-i`` that expire ``expires_in`` from now (negative: expired)."""
    rows(
        db,
        schema,
        "INSERT INTO {s}.results (key, value, expires_at)"
        " SELECT %s || '-' || i, '\\x00', now() + %s::interval"
        " FROM generate_series(1, %s::int) AS i RETURNING key",
        prefix,
        expires_in,
        n,
    )


def dead_letter_ids(db: psycopg.Connection, schema: str) -> list[int]:
    return [row[0] for row in rows(db, schema, "SELECT id FROM {s}.dead_letters ORDER BY id")]


def result_keys(db: psycopg.Connection, schema: str) -> list[str]:
    return [row[0] for row in rows(db, schema, "SELECT key FROM {s}.results ORDER BY key")]


def consuming(broker: PostgresBroker) -> PostgresBroker:
    """Make ``broker`` a live worker: its heartbeats, and the maintenance with them, start."""
    broker.declare_queue("janitor")
    broker.consume("janitor").close()
    return broker


def test_workers_delete_dead_letters_and_results_past_retention_in_batches(
    make_broker: Callable[..., PostgresBroker],
    db: psycopg.Connection,
    schema: str,
    small_batches: int,
) -> None:
    add_dead_letters(db, schema, 1, 7, "8 days")
    add_dead_letters(db, schema, 100, 2, "6 days")
    add_results(db, schema, "expired", 7, "-1 second")
    add_results(db, schema, "live", 2, "1 hour")

    # The default dead-letter retention is 7 days; 7 rows take three batches of 3.
    consuming(make_broker(heartbeat_interval=0.05))
    wait_until(
        lambda: len(dead_letter_ids(db, schema)) == 2 and len(result_keys(db, schema)) == 2,
        message=lambda: (
            f"rows past retention to go; left: {dead_letter_ids(db, schema)}, "
            f"{result_keys(db, schema)}"
        ),
    )
    assert dead_letter_ids(db, schema) == [100, 101]
    assert result_keys(db, schema) == ["live-1", "live-2"]


def test_listener_registrations_of_ended_sessions_are_deleted(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    # One registration of a session long gone, and one of a live session (this one).
    rows(
        db,
        schema,
        "INSERT INTO {s}.listeners (channel, pid, backend_start)"
        " SELECT 'c', 0, now() UNION ALL"
        " SELECT 'c', pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        " RETURNING pid",
    )
    consuming(make_broker(heartbeat_interval=0.05))
    wait_until(
        lambda: rows(db, schema, "SELECT pid FROM {s}.listeners") == [(db.info.backend_pid,)],
        message="the ended session's registration to go",
    )


def test_a_dead_letter_ttl_of_none_keeps_dead_letters_while_results_still_expire(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    add_dead_letters(db, schema, 1, 3, "400 days")
    add_results(db, schema, "expired", 2, "-1 second")

    consuming(make_broker(heartbeat_interval=0.05, dead_letter_ttl=None))
    # Expired results go in the same batch that would delete the dead letters.
    wait_until(lambda: result_keys(db, schema) == [], message="the expired results to go")
    assert dead_letter_ids(db, schema) == [1, 2, 3]


def test_while_one_worker_holds_the_lock_the_others_delete_nothing_and_rest(
    make_broker: Callable[..., PostgresBroker],
    db: psycopg.Connection,
    other_db: psycopg.Connection,
    database_url: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(maintenance, "RETENTION_INTERVAL", 3600.0)
    add_dead_letters(db, schema, 1, 5, "8 days")
    first, second = (make_broker().maintenance.retention for _ in range(2))

    with psycopg.connect(database_url) as holder, holder.transaction():
        assert holder.execute(first.take_lock, first.lock).fetchone() == (True,)
        assert first.run(db) == 0
        assert second.run(other_db) == 0
        assert len(dead_letter_ids(db, schema)) == 5

    # Released: they leave the round to the worker that had it rather than
    # contend for the lock at every heartbeat.
    assert not first.due and not second.due
    assert first.run(db) == 0
    assert len(dead_letter_ids(db, schema)) == 5


def test_a_batch_excludes_every_other_worker_until_it_commits(
    make_broker: Callable[..., PostgresBroker],
    db: psycopg.Connection,
    other_db: psycopg.Connection,
    database_url: str,
    schema: str,
    small_batches: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(maintenance, "RETENTION_INTERVAL", 0.0)
    add_dead_letters(db, schema, 1, 5, "8 days")
    first, second = (make_broker().maintenance.retention for _ in range(2))

    with psycopg.connect(database_url, autocommit=True) as conn:
        with conn.transaction():
            # The first worker's batch, its transaction held open.
            assert first.run(conn) == 3
            assert second.run(other_db) == 0
            assert len(dead_letter_ids(db, schema)) == 5
        assert len(dead_letter_ids(db, schema)) == 2
    assert second.run(other_db) == 2
    assert first.run(db) == 0
    assert dead_letter_ids(db, schema) == []


def test_a_worker_killed_mid_batch_leaves_nothing_locked(
    make_broker: Callable[..., PostgresBroker],
    processes: Processes,
    db: psycopg.Connection,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(maintenance, "RETENTION_INTERVAL", 0.0)
    add_dead_letters(db, schema, 1, 4, "8 days")
    victim = processes.start(
        [sys.executable, "-m", "tests.broker.apps.retention_batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert victim.stdout is not None
    assert victim.stdout.readline().strip() == b"4", processes.output()
    survivor: Retention = make_broker().maintenance.retention
    assert survivor.run(db) == 0
    assert advisory_locks(db, schema) == 1  # the victim's, mid-batch

    processes.kill(victim)
    # Its session ends with it, and with the session its transaction and lock.
    wait_until(lambda: survivor.run(db) == 4, message="the survivor to take over the batch")
    assert dead_letter_ids(db, schema) == []
    assert advisory_locks(db, schema) == 0


def advisory_locks(db: psycopg.Connection, schema: str) -> int:
    """Advisory locks held in the test database."""
    return scalar(
        db,
        schema,
        "SELECT count(*) FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
