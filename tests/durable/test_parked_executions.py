"""Parked executions are free for the sweeper too: its repair of lost wake-ups
(on brokers other than broker_pg) reads what may be overdue, not every sleeper."""

from __future__ import annotations

import psycopg
import pytest

from broker_pg.sqlfile import Queries
from tests.support import executed_plan

PARKED = 50_000
#: Pages the repair may touch, with the parked executions spread over thousands.
PAGES_BOUND = 100


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_the_repair_of_lost_wakeups_reads_only_what_may_be_overdue(
    db: psycopg.Connection, schema: str, generic: bool
) -> None:
    t = f'"{schema}".executions'
    columns = "id, actor_name, queue_name, status, input_hash, input, resume_message"
    # Sleepers due tomorrow, event waits with no deadline, and one overdue sleeper.
    db.execute(
        f"INSERT INTO {t} ({columns}, wake_at, updated_at) "
        "SELECT 's' || n, 'a', 'q', 'sleeping', '', '[]'::jsonb, '\\x00'::bytea, "
        "now() + interval '1 day', now() - interval '1 hour' FROM generate_series(1, %s) AS n "
        "UNION ALL "
        "SELECT 'w' || n, 'a', 'q', 'waiting', '', '[]'::jsonb, '\\x00'::bytea, "
        "NULL, now() - interval '1 hour' FROM generate_series(1, %s) AS n "
        "UNION ALL "
        "SELECT 'late', 'a', 'q', 'sleeping', '', '[]'::jsonb, '\\x01'::bytea, "
        "now() - interval '1 hour', now() - interval '1 hour'",
        (PARKED, PARKED),
    )
    # An overdue sleeper an operator paused is left alone.
    db.execute(
        f"INSERT INTO {t} ({columns}, wake_at, updated_at, paused_at) "
        "VALUES ('held', 'a', 'q', 'sleeping', '', '[]'::jsonb, '\\x02'::bytea, "
        "now() - interval '1 hour', now() - interval '1 hour', now())"
    )
    db.execute(f"ANALYZE {t}")
    pages = db.execute(f"SELECT relpages FROM pg_class WHERE oid = '{t}'::regclass").fetchone()
    assert pages is not None and pages[0] > 10 * PAGES_BOUND

    query = Queries("zart_dramatiq", "queries.sql", schema)["overdue_wakeups"]
    params = {"grace_s": 60, "id": None, "actor": None, "limit": 1000}
    plan = executed_plan(db, query, params, generic=generic)
    assert ("Seq Scan", None) not in plan.scans(), plan.scans()
    assert plan.pages < PAGES_BOUND, f"the repair touched {plan.pages} pages: {plan.scans()}"

    with db.transaction(force_rollback=True):
        repaired = db.execute(query, params).fetchall()
    assert repaired == [(b"\x01", 0)]
