"""Many workers, bounded connections.

A process uses at most ``pool_size + 1`` sessions per database (the pool and one
LISTEN session); threads share the pool, waiting for a free connection rather than
opening more. By default sixteen ``dramatiq`` processes of eight threads fit in
PostgreSQL's default ``max_connections`` of 100, with room to spare.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

import zart_dramatiq as zart
from broker_pg import ConfigurationError, Database, DatabaseUnavailable, PostgresBroker, migrate
from broker_pg.database import DEFAULT_POOL_SIZE, POOL_SIZE_ENV
from tests.apps import pool_app
from tests.faults.harness import OwnPostgres, new_own_postgres
from tests.support import Processes, new_schema_name, scalar, wait_until

#: The server of the budget test: PostgreSQL's defaults.
MAX_CONNECTIONS = 100
SUPERUSER_RESERVED = 3
PROCESSES = 16
THREADS = 8
EXECUTIONS = 300
#: What a worker logs when it lacks a connection: PostgreSQL refusing a session for want
#: of a slot, a server it cannot reach, a pool that ran dry.
CONNECTION_ERRORS = (
    "too many clients",
    "remaining connection slots",
    "Cannot reach PostgreSQL",
    "No pooled connection",
)
READY_LINE = "Worker process is ready for action."


def sessions(conn: psycopg.Connection, application: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"{application}%",),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_pool_size_comes_from_the_argument_else_the_environment_else_the_default(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POOL_SIZE_ENV, raising=False)
    assert Database(database_url).pool_size == DEFAULT_POOL_SIZE
    monkeypatch.setenv(POOL_SIZE_ENV, "6")
    assert Database(database_url).pool_size == 6
    assert PostgresBroker(database_url).db.pool_size == 6
    assert Database(database_url, pool_size=2).pool_size == 2
    monkeypatch.setenv(POOL_SIZE_ENV, "six")
    with pytest.raises(ConfigurationError, match=f"{POOL_SIZE_ENV}='six' is not a number"):
        Database(database_url)
    with pytest.raises(ConfigurationError, match="pool_size=0 is not a number"):
        Database(database_url, pool_size=0)


def test_threads_beyond_the_pool_wait_for_a_connection_and_say_so_when_none_comes_free(
    database_url: str, db: psycopg.Connection
) -> None:
    application = "budget-wait"
    pool = Database(database_url, pool_size=1, connect_timeout=0.5, application_name=application)
    try:
        got: list[int] = []
        with pool.connection() as held:
            waiter = threading.Thread(target=lambda: got.append(_backend_pid(pool)))
            waiter.start()
            wait_until(
                lambda: pool.pool.get_stats().get("requests_waiting") == 1,
                message="the second thread to wait for the pool",
            )
            held_pid = held.info.backend_pid
        waiter.join(10)
        # It waited for the one connection, rather than failing or opening another.
        assert got == [held_pid]

        with pool.connection(), pytest.raises(DatabaseUnavailable) as exhausted:
            _backend_pid(pool)
        message = str(exhausted.value)
        assert "all 1 were in use" in message
        assert POOL_SIZE_ENV in message
        # Saying so opened no session beyond the budget.
        assert sessions(db, application) == 1
    finally:
        pool.close()


def _backend_pid(database: Database) -> int:
    with database.connection() as conn:
        return conn.info.backend_pid


@pytest.fixture(scope="module")
def small_postgres() -> Iterator[OwnPostgres]:
    """A server of its own with PostgreSQL's default connection limits."""
    server = new_own_postgres()
    try:
        server.init()
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(f"max_connections = {MAX_CONNECTIONS}\n")
            conf.write(f"superuser_reserved_connections = {SUPERUSER_RESERVED}\n")
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def app_url(small_postgres: OwnPostgres) -> str:
    """The server as an ordinary role: superusers may take the reserved slots too."""
    role = "zart_app"
    with psycopg.connect(small_postgres.url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(sql.Identifier(role))
            )
    return conninfo.make_conninfo(small_postgres.url, user=role)


class Peak:
    """Polls pg_stat_activity until stopped: the most client sessions seen, in all and by name."""

    def __init__(self, url: str, application: str) -> None:
        self.url = url
        self.application = application
        self.total = 0
        self.named = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.wait(0.02):
                    row = conn.execute(
                        "SELECT count(*), count(*) FILTER (WHERE application_name LIKE %s)"
                        " FROM pg_stat_activity WHERE backend_type = 'client backend'",
                        (f"{self.application}%",),
                    ).fetchone()
                    assert row is not None
                    self.total = max(self.total, int(row[0]))
                    self.named = max(self.named, int(row[1]))
        except BaseException as error:
            self.error = error

    def stop(self) -> None:
        """Stop polling; raise what ended it early, if anything did."""
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise AssertionError("watching pg_stat_activity failed") from self.error


def test_sixteen_workers_of_eight_threads_fit_in_a_hundred_connections(
    small_postgres: OwnPostgres, app_url: str, tmp_path: Path
) -> None:
    schema = new_schema_name()
    migrate(app_url, schema=schema)
    with psycopg.connect(app_url, autocommit=True) as conn:
        pool_app.create_tables(conn, schema)
    application = "budget-worker"
    processes = Processes(app_url, schema, tmp_path)
    producer = PostgresBroker(app_url, schema=schema, pool_size=2, application_name="producer")
    peak = Peak(small_postgres.url, application)
    try:
        worker = processes.start(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "tests.apps.pool_app",
                "--processes",
                str(PROCESSES),
                "--threads",
                str(THREADS),
            ],
            env={"POOL_APP_NAME": application},
        )
        with psycopg.connect(app_url, autocommit=True) as conn:
            # Every process is up and holds its worker row: all sixteen are connected at once.
            wait_until(
                lambda: (
                    processes.output().count(READY_LINE) == PROCESSES
                    and scalar(conn, schema, "SELECT count(*) FROM {s}.workers") == PROCESSES
                ),
                timeout=60,
                message=lambda: f"{PROCESSES} ready workers:\n{processes.output()[-3000:]}",
            )
            actors = pool_app.declare(producer)
            for n in range(EXECUTIONS):
                zart.start(actors.few_steps, n, execution_id=f"budget-{n}")
            wait_until(
                lambda: (
                    scalar(
                        conn,
                        schema,
                        "SELECT count(*) FROM {s}.executions WHERE status = 'completed'",
                    )
                    == EXECUTIONS
                ),
                timeout=60,
                message=lambda: f"{EXECUTIONS} completed executions:\n{processes.output()[-3000:]}",
            )
            results = scalar(
                conn, schema, "SELECT sum((result #>> '{{}}')::bigint) FROM {s}.executions"
            )
        assert worker.poll() is None, processes.output()[-3000:]
    finally:
        peak.stop()
        producer.close()
        processes.close()

    steps = range(pool_app.STEPS)
    assert results == sum(pool_app.square(n, i) for n in range(EXECUTIONS) for i in steps)
    output = processes.output()
    assert not [phrase for phrase in CONNECTION_ERRORS if phrase in output], output[-3000:]
    # The sizing rule: each process (seen with at least its LISTEN session and one pooled
    # connection) within its pool and one LISTEN session...
    assert PROCESSES * 2 <= peak.named <= PROCESSES * (DEFAULT_POOL_SIZE + 1)
    # ...and the whole server, producer and watcher included, short of the reserved slots.
    assert peak.total < MAX_CONNECTIONS - SUPERUSER_RESERVED
