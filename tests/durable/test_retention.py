"""Retention: workers delete ended executions past it, with steps and events; never open ones."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

import zart_dramatiq as zart
from broker_pg import PostgresBroker, maintenance
from tests.support import rows, wait_until
from zart_dramatiq.middleware import middleware_for
from zart_dramatiq.retention import ExecutionRetention


@pytest.fixture(autouse=True)
def small_batches_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 3, tried at every round: a handful of executions takes several rounds.

    Set before any worker starts, so its first round already follows them.
    """
    monkeypatch.setattr(maintenance, "RETENTION_BATCH", 3)
    monkeypatch.setattr(maintenance, "RETENTION_INTERVAL", 0.0)


def execution_ids(db: psycopg.Connection, schema: str, table: str = "executions") -> list[str]:
    column = "id" if table == "executions" else "execution_id"
    query = f"SELECT DISTINCT {column} FROM {{s}}.{table} ORDER BY 1"
    return [row[0] for row in rows(db, schema, query)]


def add_ended(db: psycopg.Connection, schema: str, prefix: str, n: int, ended_ago: str) -> None:
    """``n`` completed executions ``prefix-i`` ended ``ended_ago``, each with a step and event."""
    rows(
        db,
        schema,
        "INSERT INTO {s}.executions (id, actor_name, queue_name, status, input_hash, input,"
        " resume_message, finished_at)"
        " SELECT %s || '-' || i, 'flow', 'default', 'completed', 'h', '[]', '\\x00',"
        " now() - %s::interval FROM generate_series(1, %s::int) AS i RETURNING id",
        prefix,
        ended_ago,
        n,
    )
    rows(
        db,
        schema,
        "INSERT INTO {s}.steps (execution_id, step_key, kind, name, status)"
        " SELECT id, 'step:work', 'step', 'work', 'completed' FROM {s}.executions"
        " WHERE id LIKE %s || '-%%' RETURNING 1",
        prefix,
    )
    rows(
        db,
        schema,
        "INSERT INTO {s}.events (execution_id, name, payload)"
        " SELECT id, 'go', '1' FROM {s}.executions WHERE id LIKE %s || '-%%' RETURNING 1",
        prefix,
    )


def test_workers_delete_executions_ended_past_retention_with_their_steps_and_events(
    broker: PostgresBroker, worker, db: psycopg.Connection, schema: str
) -> None:
    @zart.durable
    def flow(n: int) -> int:
        zart.step("work", lambda: n)
        return zart.wait_for_event("go")

    handles = [zart.start(flow, n, execution_id=f"old-{n}") for n in range(5)]
    handles.append(zart.start(flow, 5, execution_id="recent"))
    still_open = zart.start(flow, 6, execution_id="open")
    for handle in handles:
        zart.send_event(handle.execution_id, "go", 1)
    zart.send_event("open", "unrelated", 2)
    assert [handle.result(timeout=15) for handle in handles] == [1] * 6
    wait_until(lambda: still_open.status() == "waiting", message="the open execution's wait")

    # Past the default retention (30 days): the old ones by their end, the open
    # one, which never ended, by its start.
    rows(
        db,
        schema,
        "UPDATE {s}.executions SET finished_at = now() - interval '31 days'"
        " WHERE id LIKE 'old-%%' RETURNING 1",
    )
    rows(
        db,
        schema,
        "UPDATE {s}.executions SET created_at = now() - interval '400 days',"
        " updated_at = now() - interval '400 days' WHERE id = 'open' RETURNING 1",
    )
    # Five executions take two batches of three.
    wait_until(
        lambda: execution_ids(db, schema) == ["open", "recent"],
        timeout=15,
        message=lambda: f"the old executions to go; left: {execution_ids(db, schema)}",
    )
    assert execution_ids(db, schema, "steps") == ["open", "recent"]
    assert execution_ids(db, schema, "events") == ["open", "recent"]
    assert still_open.status() == "waiting"


def test_executions_go_in_batches_until_none_is_left_past_retention(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    add_ended(db, schema, "old", 5, "2 hours")
    add_ended(db, schema, "recent", 1, "30 minutes")
    retention = ExecutionRetention(middleware_for(broker).store, timedelta(hours=1))

    assert [retention.run(), retention.run(), retention.run()] == [3, 2, 0]
    assert execution_ids(db, schema) == ["recent-1"]
    assert execution_ids(db, schema, "steps") == ["recent-1"]
    assert execution_ids(db, schema, "events") == ["recent-1"]


def test_while_one_worker_holds_the_lock_no_other_deletes_executions(
    broker: PostgresBroker,
    database_url: str,
    db: psycopg.Connection,
    schema: str,
) -> None:
    add_ended(db, schema, "old", 5, "40 days")
    store = middleware_for(broker).store
    first, second = (ExecutionRetention(store, timedelta(days=30)) for _ in range(2))
    assert first.job is not None

    with psycopg.connect(database_url) as holder, holder.transaction():
        assert holder.execute(first.job.take_lock, first.job.lock).fetchone() == (True,)
        assert first.run() == 0
        assert second.run() == 0
        assert len(execution_ids(db, schema)) == 5

    assert first.run() == 3
    assert second.run() == 2
    assert execution_ids(db, schema) == []


def test_an_execution_retention_of_none_keeps_every_execution(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    middleware = zart.DurableMiddleware(execution_retention=None)
    broker.add_middleware(middleware)
    middleware.bind(broker)
    add_ended(db, schema, "ancient", 4, "3650 days")

    assert middleware.sweeper.retention.run() == 0
    assert len(execution_ids(db, schema)) == 4
    # An explicit purge still deletes them, with the same query.
    assert zart.purge_executions(timedelta(days=1), broker=broker) == 4
    assert execution_ids(db, schema) == []
