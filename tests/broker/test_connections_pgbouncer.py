"""Behind a real pgbouncer (Debian's package).

In session mode a client keeps its server session: workers, their LISTEN session
and result waiters work unchanged. In transaction mode a server session serves
whichever client has a transaction: producers (``send``, ``zart.start``,
``send_event``, waiting for results) work with ``transaction_pooling``, which
prepares no statements, sets nothing for the session and polls instead of
listening; a worker refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import zart_dramatiq as zart
from broker_pg import ConfigurationError, Database, PostgresBroker
from broker_pg.database import TRANSACTION_POOLING_ENV
from tests.apps import pool_app
from tests.pgbouncer import PgBouncer, require_pgbouncer
from tests.support import Processes, scalar, wait_until

APP = "tests.apps.pool_app"


@pytest.fixture
def make_bouncer(database_url: str) -> Iterator[Callable[..., PgBouncer]]:
    """Start pgbouncers in front of the test server; stopped at the end."""
    binary = require_pgbouncer()
    made: list[PgBouncer] = []

    def make(pool_mode: str, *, server_connections: int) -> PgBouncer:
        bouncer = PgBouncer(
            binary, database_url, pool_mode=pool_mode, server_connections=server_connections
        )
        made.append(bouncer)
        bouncer.start()
        return bouncer

    yield make
    for bouncer in made:
        bouncer.close()


def test_listen_and_notify_work_through_pgbouncer_in_session_mode(
    make_bouncer: Callable[..., PgBouncer], database_url: str
) -> None:
    bouncer = make_bouncer("session", server_connections=4)
    database = Database(bouncer.url(database_url), application_name="bounced")
    received: list[str] = []
    try:
        hub = database.notifications
        with hub.subscribe("bounced_channel", on_notify=received.append):
            wait_until(lambda: hub.listening("bounced_channel"), message="LISTEN")
            assert "bounced-listener" in bouncer.clients(database_url)
            with psycopg.connect(database_url, autocommit=True) as direct:
                direct.execute("SELECT pg_notify('bounced_channel', 'hello')")
            wait_until(lambda: received == ["hello"], message="the notification")
    finally:
        database.close()


def test_workers_behind_pgbouncer_in_session_mode_run_durable_executions(
    make_bouncer: Callable[..., PgBouncer],
    database_url: str,
    schema: str,
    processes: Processes,
    db: psycopg.Connection,
) -> None:
    bouncer = make_bouncer("session", server_connections=20)
    url = bouncer.url(database_url)
    pool_app.create_tables(db, schema)
    processes.dramatiq_worker(
        APP, threads=4, env={"DATABASE_URL": url, "POOL_APP_NAME": "bounced-worker"}
    )
    producer = PostgresBroker(url, schema=schema, application_name="bounced-producer")
    try:
        actors = pool_app.declare(producer)
        handles = {n: zart.start(actors.nap_and_wait, n) for n in range(5)}
        # A step, then a durable sleep, then a wait: the event wakes a parked execution.
        wait_until(
            lambda: all(h.status() == "waiting" for h in handles.values()),
            timeout=30,
            message=lambda: f"the executions to wait for their event:\n{processes.output()}",
        )
        for n, handle in handles.items():
            zart.send_event(handle.execution_id, "go", {"add": n}, broker=producer)
        assert {n: h.result(timeout=30) for n, h in handles.items()} == {
            n: n * n + n for n in handles
        }
        # The worker's pool and LISTEN session were pgbouncer's clients.
        clients = bouncer.clients(database_url)
        assert "bounced-worker" in clients
        assert "bounced-worker-listener" in clients
    finally:
        producer.close()


def test_producers_behind_pgbouncer_in_transaction_mode_send_start_and_send_events(
    make_bouncer: Callable[..., PgBouncer],
    database_url: str,
    schema: str,
    processes: Processes,
    db: psycopg.Connection,
) -> None:
    # One server session for every client: a statement prepared or a setting left
    # on it by one client would meet the others.
    bouncer = make_bouncer("transaction", server_connections=1)
    pool_app.create_tables(db, schema)
    processes.dramatiq_worker(APP, threads=4, env={"POOL_APP_NAME": "direct-worker"})
    producer = PostgresBroker(
        bouncer.url(database_url),
        schema=schema,
        pool_size=3,
        application_name="bounced-producer",
        transaction_pooling=True,
    )
    actors = pool_app.declare(producer)

    def produce(first: int) -> dict[str, Any]:
        numbers = range(first, first + 10)
        for n in numbers:
            actors.record.send(n)
        steps = {n: zart.start(actors.few_steps, n) for n in numbers}
        naps = {n: zart.start(actors.nap_and_wait, n) for n in numbers[:3]}
        for n, handle in naps.items():
            zart.send_event(handle.execution_id, "go", {"add": n}, broker=producer)
        return {
            "steps": {n: h.result(timeout=60) for n, h in steps.items()},
            "naps": {n: h.result(timeout=60) for n, h in naps.items()},
        }

    try:
        # Producer threads at once: the pool's connections take turns on the one server session.
        with ThreadPoolExecutor(3) as pool:
            outcomes = list(pool.map(produce, [0, 10, 20]))
        clients = bouncer.clients(database_url)
    finally:
        producer.close()

    for first, outcome in zip([0, 10, 20], outcomes, strict=True):
        numbers = range(first, first + 10)
        assert outcome["steps"] == {
            n: sum(pool_app.square(n, i) for i in range(3)) for n in numbers
        }
        assert outcome["naps"] == {n: n * n + n for n in numbers[:3]}
    wait_until(
        lambda: scalar(db, schema, "SELECT count(*) FROM {s}.recorded") == 30,
        message="the plain messages to run",
    )
    # Waiting for results opened no LISTEN session through the pgbouncer...
    assert "bounced-producer" in clients
    assert not [name for name in clients if "listener" in name]
    # ...and no setting of ours stayed on its server session for other clients.
    with psycopg.connect(bouncer.url(database_url), autocommit=True) as other:
        seen = other.execute("SHOW statement_timeout").fetchone()
    assert seen == db.execute("SHOW statement_timeout").fetchone()


def test_a_worker_behind_transaction_pooling_refuses_to_start_saying_what_to_do(
    database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRANSACTION_POOLING_ENV, "1")
    broker = PostgresBroker(database_url, schema=schema)
    try:
        broker.declare_queue("refused")
        # Dramatiq restarts a failed consumer: each attempt says the same.
        for _ in range(2):
            with pytest.raises(ConfigurationError, match="pgbouncer in pool_mode=session"):
                broker.consume("refused")
    finally:
        broker.close()
