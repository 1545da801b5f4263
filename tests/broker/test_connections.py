"""Connection budget and errors.

A process stays within pool_size + 1 sessions per database, whatever its threads
(consumers, result waiters); a schema that was never migrated says to migrate it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import Database, PostgresBackend, PostgresBroker, database
from broker_pg.database import channel_name
from broker_pg.errors import SchemaMissing
from tests.support import wait_until
from zart_dramatiq.store import RESULT_WAITER

#: Names the measured broker's sessions.
APPLICATION = f"budget-{uuid.uuid4().hex[:8]}"


def broker_sessions(db: psycopg.Connection, application: str = APPLICATION) -> int:
    return sessions(db, application)


def sessions(db: psycopg.Connection, application: str) -> int:
    """Sessions whose name contains ``application``.

    While a durable result waits, the LISTEN session's name starts with
    RESULT_WAITER (ends of executions notify only then); its own name follows.
    """
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE %s",
        (f"%{application}%",),
    ).fetchone()
    assert row is not None
    return int(row[0])


def listener_sessions(db: psycopg.Connection, application: str) -> list[int]:
    return [
        pid
        for (pid,) in db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (f"{application}-listener",),
        ).fetchall()
    ]


class Waiters:
    """Threads each waiting on a call; what each returned or raised, by its key."""

    def __init__(self, calls: dict[Any, Callable[[], Any]]) -> None:
        self.outcomes: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(key, call), daemon=True)
            for key, call in calls.items()
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, key: Any, call: Callable[[], Any]) -> None:
        try:
            outcome = call()
        except BaseException as e:
            outcome = e
        with self._lock:
            self.outcomes[key] = outcome

    def join(self, timeout: float = 30.0) -> dict[Any, Any]:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "some waiters are still waiting"
        return self.outcomes


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


def test_threads_waiting_for_results_share_one_listen_session(
    database_url: str, schema: str, db: psycopg.Connection
) -> None:
    application = f"results-{uuid.uuid4().hex[:8]}"
    pool_size, waiting = 2, 20
    backend = PostgresBackend(
        database_url, schema=schema, pool_size=pool_size, application_name=application
    )
    try:
        messages = {
            n: dramatiq.Message(
                queue_name="default", actor_name="job", args=(n,), kwargs={}, options={}
            )
            for n in range(waiting)
        }
        waiters = Waiters(
            {
                n: (lambda m=m: backend.get_result(m, block=True, timeout=30_000))
                for n, m in messages.items()
            }
        )
        hub = backend.db.notifications
        wait_until(
            lambda: hub.subscribers(backend.channel) == waiting and hub.listening(backend.channel),
            message="every thread to wait",
        )
        assert sessions(db, application) <= pool_size + 1
        assert len(listener_sessions(db, application)) == 1

        peak = 0
        for n, message in messages.items():
            backend.store_result(message, n * 10, ttl=60_000)
            peak = max(peak, sessions(db, application))
        assert waiters.join() == {n: n * 10 for n in messages}
        assert peak <= pool_size + 1
    finally:
        backend.close()
    # Closing the backend ends its LISTEN session too.
    wait_until(lambda: sessions(db, application) == 0, message="its sessions to end")


def test_threads_waiting_for_executions_share_the_workers_listen_session(
    make_broker: Callable[..., PostgresBroker],
    start_worker: Callable[..., Worker],
    db: psycopg.Connection,
) -> None:
    application = f"handles-{uuid.uuid4().hex[:8]}"
    pool_size, waiting = 3, 12
    broker = make_broker(pool_size=pool_size, application_name=application)

    @zart.durable(broker=broker, queue_name="budget_durable")
    def flow(n: int) -> int:
        return int(zart.wait_for_event("go")["n"]) * 10

    start_worker(broker, threads=4)
    handles = {n: zart.start(flow, n) for n in range(waiting)}
    wait_until(
        lambda: all(h.status() == "waiting" for h in handles.values()),
        timeout=20,
        message="every execution to wait for its event",
    )
    waiters = Waiters({n: (lambda h=h: h.result(timeout=30)) for n, h in handles.items()})
    hub = broker.db.notifications
    channel = channel_name(broker.db.schema, "executions")
    wait_until(
        lambda: hub.subscribers(channel) == waiting and hub.listening(channel),
        message="every thread to wait",
    )
    # The worker's own LISTEN session serves them: its name now starts with the waiter's.
    assert listener_sessions(db, f"{RESULT_WAITER} {application}")
    assert sessions(db, application) <= pool_size + 1

    peak = 0
    for n, handle in handles.items():
        zart.send_event(handle.execution_id, "go", {"n": n}, broker=broker)
        peak = max(peak, sessions(db, application))
    outcomes = waiters.join()
    assert outcomes == {n: n * 10 for n in handles}
    assert peak <= pool_size + 1


def test_a_missing_schema_says_to_migrate_it(database_url: str, unmigrated_schema: str) -> None:
    broker = PostgresBroker(database_url, schema=unmigrated_schema)
    try:
        dramatiq.set_broker(broker)

        @zart.durable(broker=broker)
        def flow() -> None:
            pass

        with pytest.raises(SchemaMissing) as raised:
            zart.start(flow)
        message = str(raised.value)
        assert "run `zart-dramatiq migrate` first" in message
        assert f"--schema {unmigrated_schema}" in message
        assert f"broker_pg.migrate(url, schema={unmigrated_schema!r})" in message

        # A consumer (whose LISTEN session registers the worker) says so at once,
        # rather than that it could not connect.
        broker.declare_queue("default")
        started = time.monotonic()
        with pytest.raises(SchemaMissing, match="zart-dramatiq migrate"):
            broker.consume("default")
        assert time.monotonic() - started < broker.db.connect_timeout / 2
    finally:
        broker.close()


def test_a_worker_on_a_missing_schema_logs_that_it_is_missing(
    database_url: str, unmigrated_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = PostgresBroker(database_url, schema=unmigrated_schema)

    @dramatiq.actor(broker=broker, queue_name="unmigrated")
    def job() -> None:
        pass

    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    with caplog.at_level(logging.CRITICAL, logger="dramatiq"):
        worker.start()
        try:
            record = wait_until(
                lambda: next(
                    (r for r in caplog.records if r.exc_info and r.exc_info[1] is not None), None
                ),
                message="the consumer's error",
            )
        finally:
            worker.stop()
            broker.close()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], SchemaMissing)
    assert "zart-dramatiq migrate" in str(record.exc_info[1])


def test_missing_objects_of_this_schema_say_to_migrate_others_stay_as_they_are(
    database_url: str, unmigrated_schema: str, db: psycopg.Connection
) -> None:
    name = sql.Identifier(unmigrated_schema)
    database = Database(database_url, schema=unmigrated_schema)
    try:
        # No schema at all (3F000).
        with (
            pytest.raises(SchemaMissing, match=f'schema "{unmigrated_schema}" does not exist'),
            database.connection() as conn,
        ):
            conn.execute(sql.SQL("SELECT {}.notify_execution_ended('c', 'e', 'w')").format(name))
        # The schema, without its tables (42P01): a half-finished setup.
        db.execute(sql.SQL("CREATE SCHEMA {}").format(name))
        with (
            pytest.raises(SchemaMissing, match=f'relation "{unmigrated_schema}.messages"'),
            database.connection() as conn,
        ):
            conn.execute(sql.SQL("SELECT 1 FROM {}.messages").format(name))
        # What is missing elsewhere is the caller's own error, left as it is.
        with pytest.raises(psycopg.errors.UndefinedTable), database.connection() as conn:
            conn.execute("SELECT 1 FROM public.no_such_table")
        with pytest.raises(psycopg.errors.InvalidSchemaName), database.connection() as conn:
            conn.execute("SELECT no_such_schema_at_all.f()")
    finally:
        database.close()


def test_no_statement_waits_without_bound(
    database_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "STATEMENT_TIMEOUT_MS", 200)
    broker = PostgresBroker(database_url, schema=schema, application_name="bounded")
    broker.declare_queue("bounded")
    message = dramatiq.Message(queue_name="bounded", actor_name="x", args=(), kwargs={}, options={})
    try:
        with psycopg.connect(database_url) as locker, locker.transaction():
            # A server that never answers: the table stays locked by another session.
            locker.execute(
                sql.SQL("LOCK TABLE {}.messages IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(schema)
                )
            )
            with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
                broker.enqueue(message)
    finally:
        broker.close()


class _Interrupted(BaseException):
    """Raised asynchronously in a thread, as Dramatiq's TimeLimit does."""


def test_a_thread_interrupted_while_waiting_for_a_connection_loses_none(
    database_url: str, schema: str
) -> None:
    import ctypes

    db = Database(database_url, schema=schema, pool_size=1)
    try:
        outcome: list[BaseException | None] = []

        def waiter() -> None:
            try:
                with db.connection():
                    outcome.append(None)
            except _Interrupted as e:
                outcome.append(e)

        with db.connection():  # the pool's only connection is lent: the waiter queues
            thread = threading.Thread(target=waiter)
            thread.start()
            wait_until(
                lambda: db.pool.get_stats().get("requests_waiting", 0) == 1,
                message="the thread to wait for a connection",
            )
            ident = ctypes.c_ulong(thread.ident or 0)
            assert (
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, ctypes.py_object(_Interrupted))
                == 1
            )
        # Handing it the connection wakes it, and the exception raises in its wait.
        thread.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], _Interrupted)
        # The connection came back: the pool still lends its only one.
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        db.close()
