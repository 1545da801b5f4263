"""The shared LISTEN session: it survives a cut, a forked child gets its own, it closes unused."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from dramatiq.results import ResultTimeout

import zart_dramatiq as zart
from broker_pg import PostgresBackend, PostgresBroker, notifications
from broker_pg.database import channel_name
from tests.support import wait_until
from zart_dramatiq.store import RESULT_WAITER


def message(n: int = 0) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name="default", actor_name="job", args=(n,), kwargs={}, options={}
    )


def session_pids(db: psycopg.Connection, name: str) -> list[int]:
    """Server processes of the sessions whose name starts with ``name`` in the test database."""
    return [
        pid
        for (pid,) in db.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE %s",
            (f"{name}%",),
        ).fetchall()
    ]


def listeners(db: psycopg.Connection, schema: str, channel: str) -> list[int]:
    """Server processes of the sessions registered as listening on ``channel``."""
    return [
        pid
        for (pid,) in db.execute(
            f'SELECT pid FROM "{schema}".listeners WHERE channel = %s', (channel,)
        ).fetchall()
    ]


class Waiter:
    """A thread waiting on ``call``; ``outcome`` is what it returned or raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome: Any = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.outcome = call()
        except BaseException as e:
            self.outcome = e

    def result(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still waiting after {timeout}s"
        return self.outcome


@pytest.fixture
def application() -> str:
    return f"notify-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def backend(database_url: str, schema: str, application: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(database_url, schema=schema, application_name=application)
    yield backend
    backend.close()


def test_waiters_survive_a_cut_listen_session(
    database_url: str,
    schema: str,
    application: str,
    backend: PostgresBackend,
    db: psycopg.Connection,
) -> None:
    lost, later = message(1), message(2)
    waiting_for_lost = Waiter(lambda: backend.get_result(lost, block=True, timeout=60_000))
    waiting_for_later = Waiter(lambda: backend.get_result(later, block=True, timeout=60_000))
    hub = backend.db.notifications
    wait_until(
        lambda: hub.subscribers(backend.channel) == 2 and hub.listening(backend.channel),
        message="both waiters to listen",
    )
    [old_pid] = session_pids(db, f"{application}-listener")

    # A result whose notification is lost (as it would be while the session is down).
    silent = PostgresBackend(database_url, schema=schema, application_name=application)
    silent.channel = channel_name(schema, "nobody-listens")
    try:
        silent.store_result(lost, "stored unheard", ttl=60_000)
    finally:
        silent.close()
    db.execute("SELECT pg_terminate_backend(%s)", (old_pid,))

    # The reconnect wakes every waiter to look again, long before its own timeout.
    assert waiting_for_lost.result(timeout=10) == "stored unheard"
    # And the new session listens again: a notification reaches the other one.
    wait_until(
        lambda: (
            session_pids(db, f"{application}-listener") not in ([], [old_pid])
            and hub.listening(backend.channel)
        ),
        message="the LISTEN session to come back",
    )
    backend.store_result(later, "heard", ttl=60_000)
    assert waiting_for_later.result(timeout=10) == "heard"


def test_a_durable_result_waiter_survives_a_cut_listen_session(
    broker: PostgresBroker, worker: Worker, db: psycopg.Connection
) -> None:
    @zart.durable
    def flow() -> str:
        return str(zart.wait_for_event("go"))

    handle = zart.start(flow)
    wait_until(lambda: handle.status() == "waiting", timeout=15, message="the event wait")
    waiter = Waiter(lambda: handle.result(timeout=60))
    hub = broker.db.notifications
    channel = channel_name(broker.db.schema, "executions")
    wait_until(
        lambda: hub.subscribers(channel) == 1 and hub.listening(channel),
        message="the waiter to listen",
    )
    old_pid = hub.backend_pid
    # While a durable result is awaited, the session is registered as a listener
    # (which makes ends notify), and bears the waiter's name.
    wait_until(lambda: old_pid in listeners(db, broker.db.schema, channel), message="registered")
    assert old_pid in session_pids(db, RESULT_WAITER)
    db.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    wait_until(
        lambda: (
            (pid := hub.backend_pid) not in (None, old_pid)
            and pid in session_pids(db, RESULT_WAITER)
            and pid in listeners(db, broker.db.schema, channel)
            and hub.listening(channel)
        ),
        message="the LISTEN session to come back registered, under the waiter's name",
    )

    sent_at = time.monotonic()
    zart.send_event(handle.execution_id, "go", "now")
    assert waiter.result(timeout=15) == "now"
    # Woken by the notification, not by the waiter's periodic look (every 5 s).
    assert time.monotonic() - sent_at < 4.0


def test_a_waiter_gives_up_at_its_timeout(backend: PostgresBackend) -> None:
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        backend.get_result(message(), block=True, timeout=300)
    assert 0.3 <= time.monotonic() - started < 3.0


def _wait_in_child(backend: PostgresBackend, wanted: dramatiq.Message[Any], report: Any) -> None:
    report.put(backend.get_result(wanted, block=True, timeout=20_000))


def test_a_forked_child_opens_a_listen_session_of_its_own(
    application: str, backend: PostgresBackend, db: psycopg.Connection
) -> None:
    mine, childs = message(1), message(2)
    hub = backend.db.notifications
    with hub.subscribe(backend.channel, payload=backend.build_message_key(mine)) as stored:
        wait_until(lambda: hub.listening(backend.channel), message="the parent to listen")
        [parent_pid] = session_pids(db, f"{application}-listener")

        context = multiprocessing.get_context("fork")
        report = context.Queue()
        child = context.Process(target=_wait_in_child, args=(backend, childs, report))
        child.start()
        try:
            wait_until(
                lambda: len(session_pids(db, f"{application}-listener")) == 2,
                message="the child's own LISTEN session",
            )
            backend.store_result(childs, "for the child", ttl=60_000)
            assert report.get(timeout=20) == "for the child"
        finally:
            child.join(20)
        assert child.exitcode == 0

        # The parent's session was left alone, and still serves the parent.
        wait_until(
            lambda: session_pids(db, f"{application}-listener") == [parent_pid],
            message="only the parent's session to remain",
        )
        stored.wait(0)  # forget the wake-ups so far
        backend.store_result(mine, "for the parent", ttl=60_000)
        assert stored.wait(10)


def test_the_session_closes_once_unused_and_opens_again_when_needed(
    application: str,
    backend: PostgresBackend,
    db: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notifications, "LINGER", 0.2)
    first, second = message(1), message(2)
    hub = backend.db.notifications
    with hub.subscribe(backend.channel, payload=backend.build_message_key(first)):
        wait_until(lambda: hub.listening(backend.channel), message="the session to listen")
        assert len(session_pids(db, f"{application}-listener")) == 1
    wait_until(
        lambda: session_pids(db, f"{application}-listener") == [],
        message="the unused session to close",
    )

    waiter = Waiter(lambda: backend.get_result(second, block=True, timeout=30_000))
    wait_until(lambda: hub.listening(backend.channel), message="the session to open again")
    backend.store_result(second, "again", ttl=60_000)
    assert waiter.result(timeout=10) == "again"


def test_an_end_is_notified_only_while_someone_waits_for_results(
    broker: PostgresBroker, worker: Worker, db: psycopg.Connection, schema: str
) -> None:
    @zart.durable
    def flow() -> str:
        return str(zart.wait_for_event("go"))

    channel = channel_name(schema, "executions")
    db.execute(f'LISTEN "{channel}"')  # overhears, without registering as a listener

    unheard = zart.start(flow)
    wait_until(lambda: unheard.status() == "waiting", timeout=15, message="the event wait")
    zart.send_event(unheard.execution_id, "go", "quietly")
    wait_until(lambda: unheard.status() == "completed", timeout=15, message="the end")
    # Notifications arrive in commit order: the marker, sent after the end, comes
    # first only if the end notified nobody.
    db.execute("SELECT pg_notify(%s, 'marker')", (channel,))
    assert next(db.notifies(timeout=10)).payload == "marker"

    heard = zart.start(flow)
    wait_until(lambda: heard.status() == "waiting", timeout=15, message="the event wait")
    waiter = Waiter(lambda: heard.result(timeout=60))
    hub = broker.db.notifications
    wait_until(lambda: hub.backend_pid in listeners(db, schema, channel), message="registered")
    zart.send_event(heard.execution_id, "go", "aloud")
    assert next(db.notifies(timeout=10)).payload == heard.execution_id
    assert waiter.result(timeout=15) == "aloud"
