"""Housekeeping by live workers: the messages table is vacuumed after heavy churn."""

from __future__ import annotations

import dramatiq
import pytest

from broker_pg import maintenance
from tests.support import wait_until


def test_a_worker_vacuums_the_messages_table_once_it_holds_many_dead_rows(
    broker, worker, db, schema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "VACUUM_AFTER", 50)

    @dramatiq.actor(queue_name="churn")
    def noop(n: int) -> None:
        pass

    def last_vacuum() -> object:
        row = db.execute(
            "SELECT last_vacuum FROM pg_stat_user_tables"
            " WHERE schemaname = %s AND relname = 'messages'",
            (schema,),
        ).fetchone()
        return row[0] if row else None

    assert last_vacuum() is None
    with broker.batch():
        for n in range(60):
            noop.send(n)
    broker.join("churn")
    wait_until(last_vacuum, timeout=15, message="a vacuum of the messages table")
