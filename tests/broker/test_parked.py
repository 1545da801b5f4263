"""Parked work is free: the claim and the next-due lookup never scan rows due later.

A durable system's queues are mostly parked work (sleeps, event waits, long
retry backoffs). These tests fill a queue with such rows and read the plan the
claim ran with, as a worker runs it (a prepared statement, with the plan made
for the values or, as workers make it, without them): it must probe indexes
whose scanned part does not grow with the parked rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from broker_pg import PostgresBroker
from tests.support import executed_plan

QUEUE = "parked"
PARKED = 100_000
#: Pages a claim may touch, with the parked rows spread over thousands of them.
PAGES_BOUND = 100


@pytest.fixture
def crowded(db: psycopg.Connection, schema: str) -> Iterator[uuid.UUID]:
    """A queue with PARKED delayed and PARKED parked rows, 3 ready and 2 come due; a worker row."""
    worker = uuid.uuid4()
    t = f'"{schema}".messages'
    db.execute(
        f'INSERT INTO "{schema}".workers (id, hostname, pid, backend_pid) VALUES (%s, %s, 0, 0)',
        (worker, "test"),
    )
    for state, eta in (("delayed", "now() + interval '1 day'"), ("parked", "now()")):
        db.execute(
            f"INSERT INTO {t} (queue_name, message_id, actor_name, state, eta, payload) "
            f"SELECT %s, 'p' || n, 'sleeper', %s, {eta} + n * interval '1 ms', '\\x00'::bytea "
            "FROM generate_series(1, %s) AS n",
            (QUEUE, state, PARKED),
        )
    db.execute(
        f"INSERT INTO {t} (queue_name, message_id, actor_name, state, eta, payload) "
        "SELECT %s, 'r' || n, 'job', 'queued', now(), '\\x00'::bytea "
        "FROM generate_series(1, 3) AS n "
        "UNION ALL "
        "SELECT %s, 'd' || n, 'job', 'delayed', now() - interval '1 s', '\\x00'::bytea "
        "FROM generate_series(1, 2) AS n",
        (QUEUE, QUEUE),
    )
    db.execute(f"ANALYZE {t}")
    # A scan that passed the parked rows would read them all: many times the bound.
    pages = db.execute(f"SELECT relpages FROM pg_class WHERE oid = '{t}'::regclass").fetchone()
    assert pages is not None and pages[0] > 10 * PAGES_BOUND
    yield worker


def claim_params(worker: uuid.UUID, limit: int) -> dict[str, Any]:
    return {
        **{f"{kind}_{part}": [] for kind in ("ack", "back") for part in ("ids", "deliveries")},
        "ack_owners": [],
        "back_owners": [],
        "worker_id": worker,
        "claim_token": uuid.uuid4(),
        "queue_name": QUEUE,
        "limit": limit,
        "channel": "test-parked",
    }


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_claim_reads_only_due_rows_among_many_parked_ones(
    make_broker: Any, db: psycopg.Connection, crowded: uuid.UUID, generic: bool
) -> None:
    broker: PostgresBroker = make_broker()
    query = broker.queries["settle_and_claim"]
    params = claim_params(crowded, limit=10)
    plan = executed_plan(db, query, params, generic=generic)
    assert ("Seq Scan", None) not in plan.scans(), plan.scans()
    assert {("Index Scan", "messages_ready"), ("Index Scan", "messages_delayed")} <= plan.scans()
    assert plan.pages < PAGES_BOUND, f"the claim touched {plan.pages} pages"

    with db.transaction(force_rollback=True):
        rows = db.execute(query, params).fetchall()
    *claimed, (*_, due_in, registered) = rows
    # The ready rows and the delayed rows whose time came, nothing parked; and
    # the next delayed row is a day away.
    assert len(claimed) == 5 and registered
    assert 86_000 < due_in <= 86_400


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_the_next_due_lookup_is_one_index_probe(
    make_broker: Any,
    db: psycopg.Connection,
    schema: str,
    crowded: uuid.UUID,
    generic: bool,
) -> None:
    broker: PostgresBroker = make_broker()
    # Nothing due: an idle claim finds nothing and asks when the next row comes due.
    db.execute(
        f'DELETE FROM "{schema}".messages WHERE queue_name = %s AND state <> %s AND eta < now()',
        (QUEUE, "parked"),
    )
    plan = executed_plan(
        db,
        broker.queries["settle_and_claim"],
        claim_params(crowded, limit=10),
        generic=generic,
    )
    assert ("Seq Scan", None) not in plan.scans(), plan.scans()
    assert plan.pages < PAGES_BOUND, f"an idle claim touched {plan.pages} pages"


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_a_claim_in_a_deep_backlog_writes_its_rows_by_key(
    make_broker: Any, db: psycopg.Connection, schema: str, generic: bool
) -> None:
    # Not parked work, but the same promise: a claim's cost does not grow with
    # the queue. 20,000 ready rows, 5,000 leased to other workers, one ack to settle.
    broker: PostgresBroker = make_broker()
    worker, other = uuid.uuid4(), uuid.uuid4()
    t = f'"{schema}".messages'
    db.execute(
        f'INSERT INTO "{schema}".workers (id, hostname, pid, backend_pid)'
        " VALUES (%s, 'test', 0, 0), (%s, 'test', 0, 0)",
        (worker, other),
    )
    db.execute(
        f"INSERT INTO {t} (queue_name, message_id, actor_name, state, lease_owner, deliveries,"
        " payload) SELECT %s, 'm' || n, 'job', CASE WHEN n <= 5000 THEN 'claimed' ELSE"
        " 'queued' END, CASE WHEN n <= 5000 THEN %s::uuid END, (n <= 5000)::int, '\\x00'::bytea"
        " FROM generate_series(1, 25000) AS n",
        (QUEUE, other),
    )
    db.execute(f"ANALYZE {t}")
    [(acked,)] = db.execute(f"SELECT min(id) FROM {t}").fetchall()
    params = {
        **claim_params(worker, limit=16),
        "ack_ids": [acked],
        "ack_deliveries": [1],
        "ack_owners": [other],
    }
    plan = executed_plan(db, broker.queries["settle_and_claim"], params, generic=generic)
    assert ("Seq Scan", None) not in plan.scans(), plan.scans()
    assert ("Index Scan", "messages_claimed") not in plan.scans(), plan.scans()
    assert plan.pages < 4 * PAGES_BOUND, f"the claim touched {plan.pages} pages"


def test_a_plan_made_on_an_empty_queue_does_not_scan_it_once_full(
    make_broker: Any, db: psycopg.Connection, schema: str
) -> None:
    # A worker's session plans the claim once, maybe on an empty queue; where
    # statistics lag (autovacuum off or behind), nothing re-plans it when a
    # backlog arrives.
    broker: PostgresBroker = make_broker()
    worker = uuid.uuid4()
    t = f'"{schema}".messages'
    db.execute(
        f'INSERT INTO "{schema}".workers (id, hostname, pid, backend_pid)'
        " VALUES (%s, 'test', 0, 0)",
        (worker,),
    )
    db.execute(f"VACUUM ANALYZE {t}")
    query, params = broker.queries["settle_and_claim"], claim_params(worker, limit=16)
    executed_plan(db, query, params, generic=True)  # planned on the empty queue
    db.execute(
        f"INSERT INTO {t} (queue_name, message_id, actor_name, payload)"
        " SELECT %s, 'm' || n, 'job', '\\x00'::bytea FROM generate_series(1, 20000) AS n",
        (QUEUE,),
    )
    plan = executed_plan(db, query, params, generic=True)
    assert ("Seq Scan", None) not in plan.scans(), plan.scans()
    # (A claim of 16 writes 16 rows and their index entries: a few hundred pages
    # at most, where a scan of the queue would read all of its 20,000 rows.)
    assert plan.pages < 4 * PAGES_BOUND, f"the claim touched {plan.pages} pages"
