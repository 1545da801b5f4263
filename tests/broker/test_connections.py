"""Connection budget: a busy worker process stays within pool_size + 1 sessions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import dramatiq
import psycopg
from dramatiq import Worker

from broker_pg import PostgresBroker

#: Names the measured broker's sessions.
APPLICATION = f"budget-{uuid.uuid4().hex[:8]}"


def broker_sessions(db: psycopg.Connection) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"{APPLICATION}%",),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_busy_worker_stays_within_its_connection_budget(
    make_broker: Callable[..., PostgresBroker],
    start_worker: Callable[..., Worker],
    db: psycopg.Connection,
) -> None:
    pool_size = 3
    broker = make_broker(pool_size=pool_size, application_name=APPLICATION)
    count = 0
    failed_once: set[int] = set()
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="budget_a")
    def a(n: int) -> None:
        nonlocal count
        with lock:
            count += 1

    @dramatiq.actor(broker=broker, queue_name="budget_b", max_retries=1, min_backoff=1)
    def b(n: int) -> None:
        nonlocal count
        with lock:
            # Some fail once, so worker threads also re-enqueue retries.
            if n % 10 == 0 and n not in failed_once:
                failed_once.add(n)
                raise RuntimeError("try again")
            count += 1

    start_worker(broker, threads=8)
    peak = 0
    for n in range(250):
        a.send(n)
        b.send_with_options(args=(n,), delay=n % 3)
        if n % 25 == 0:
            peak = max(peak, broker_sessions(db))
    while True:
        peak = max(peak, broker_sessions(db))
        try:
            broker.join("budget_a", timeout=50)
            broker.join("budget_b", timeout=50)
            break
        except dramatiq.errors.QueueJoinTimeout:
            continue

    assert count == 500
    after = broker_sessions(db)
    # The listener is always there; the pool lends at least one connection.
    assert 2 <= after <= pool_size + 1
    assert peak <= pool_size + 1
