"""Helpers shared by the tests: waiting on conditions, SQL on a test schema, subprocesses, the CLI.

A plain module, imported by the tests and by ``tests/conftest.py`` (whose fixtures build on it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import psycopg
import pytest
from psycopg import sql

from broker_pg.database import configure_session
from zart_dramatiq.cli import main

T = TypeVar("T")

#: The project's root: the working directory of the subprocesses tests start.
ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = 10.0,
    message: str | Callable[[], str] = "the condition",
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Fail after ``timeout`` seconds, naming ``message`` (or what it returns, when it is a
    callable: evaluated only then, so it can show, say, a worker's log at that moment).
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


# --- External servers -------------------------------------------------------------------------


def server_answers(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port`` within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as GitHub Actions and most CI services set)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_server(name: str, host: str, port: int, how_to_get_it: str) -> None:
    """Make sure ``name`` answers on ``host:port`` before a test uses it.

    Outside CI a missing server skips the test, with a reason that says how to get it;
    with ``CI=true`` it fails the test instead, so CI always runs what needs it. The check
    is one TCP connect with a short timeout: a missing server costs no time.
    """
    if server_answers(host, port):
        return
    unavailable(name, f"{name} is not running on {host}:{port}: {how_to_get_it}")


def unavailable(name: str, reason: str) -> NoReturn:
    """Skip the test for want of ``name`` outside CI, with ``reason``; fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: tests that need {name} must run)", pytrace=False)
    pytest.skip(reason)


#: How to get the servers some tests need, for ``require_server``.
REDIS_HOW_TO = "start it with `redis-server --daemonize yes` or `apt-get install redis-server`"
RABBITMQ_HOW_TO = (
    "start it with `rabbitmq-server -detached` or `apt-get install rabbitmq-server` "
    "(the tests log in as guest/guest)"
)


def require_redis(port: int = 6379) -> None:
    require_server("Redis", "127.0.0.1", port, REDIS_HOW_TO)


def require_rabbitmq(port: int = 5672) -> None:
    require_server("RabbitMQ", "127.0.0.1", port, RABBITMQ_HOW_TO)


# --- SQL on a test schema ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutedPlan:
    """The plan a statement ran with, as auto_explain logged it."""

    plan: dict[str, Any]

    def nodes(self) -> list[dict[str, Any]]:
        found, todo = [], [self.plan]
        while todo:
            node = todo.pop()
            found.append(node)
            todo.extend(node.get("Plans", []))
        return found

    def scans(self) -> set[tuple[str, str | None]]:
        """(node type, index name) of every scan of a table."""
        return {(n["Node Type"], n.get("Index Name")) for n in self.nodes() if "Relation Name" in n}

    @property
    def pages(self) -> int:
        """Shared buffers the statement touched."""
        return int(self.plan["Shared Hit Blocks"] + self.plan["Shared Read Blocks"])


def executed_plan(
    conn: psycopg.Connection, query: bytes, params: dict[str, Any], *, generic: bool
) -> ExecutedPlan:
    """Run ``query`` as a prepared statement in a session set up as ours, and
    return the plan it ran with.

    ``generic``: the plan our sessions make, without the parameters' values;
    else one made for the values. Data changes are rolled back.
    """
    logged: list[str] = []

    def log(notice: psycopg.errors.Diagnostic) -> None:
        logged.append(notice.message_primary or "")

    conn.add_notice_handler(log)
    configure_session(conn)
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_analyze = on",
        "auto_explain.log_buffers = on",
        "auto_explain.log_nested_statements = off",
        "auto_explain.log_format = json",
        "client_min_messages = log",
        *([] if generic else ["plan_cache_mode = force_custom_plan"]),
    ):
        conn.execute(f"SET {setting}")
    conn.execute("LOAD 'auto_explain'")
    with conn.transaction(force_rollback=True):
        conn.execute(query, params, prepare=True)
    conn.execute("RESET ALL")
    conn.remove_notice_handler(log)
    [text] = [entry for entry in logged if "plan:" in entry]
    return ExecutedPlan(json.loads(text.split("plan:", 1)[1])["Plan"])


def scalar(conn: psycopg.Connection, schema: str, query: str, *params: Any) -> Any:
    """Run ``query`` with ``{s}`` bound to the test schema; return the first column of its row."""
    row = conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params).fetchone()
    return None if row is None else row[0]


def rows(conn: psycopg.Connection, schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` with ``{s}`` bound to the test schema; return all its rows."""
    return conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params).fetchall()


def new_schema_name() -> str:
    """A schema name unique to the caller (nothing is created)."""
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_schema(database_url: str, name: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


# --- Subprocesses -----------------------------------------------------------------------------


class Processes:
    """Subprocesses started by a test, each in its own process group, logging to files.

    They run in the project's root with the test database and schema in their environment:
    ``DATABASE_URL``, and the schema as ``ZART_TEST_SCHEMA`` (read by the test apps) and
    ``ZART_SCHEMA`` (read by the examples). Those still running at the end are stopped.
    """

    def __init__(self, database_url: str, schema: str, logs: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "ZART_TEST_SCHEMA": schema,
            "ZART_SCHEMA": schema,
            "PYTHONPATH": str(ROOT),
        }
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def dramatiq_worker(
        self, module: str, *, threads: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``dramatiq <module>``: one worker process with ``threads`` worker threads.

        ``env`` is added to the environment of that process only.
        """
        return self.start(
            [
                sys.executable,
                "-m",
                "dramatiq",
                module,
                "--processes",
                "1",
                "--threads",
                str(threads),
            ],
            env=env,
        )

    def start(
        self, args: list[str], *, env: dict[str, str] | None = None, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` with ``env`` added to the environment.

        Its stderr, and its stdout unless ``popen`` says otherwise, go to a log of its own.
        """
        log = open(self.logs / f"process-{len(self.started)}.log", "wb")  # noqa: SIM115
        popen.setdefault("stdout", log)
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stderr=log,
            start_new_session=True,
            **popen,
        )
        log.close()
        self.started.append(process)
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> Path:
        """The log file of ``process`` (one this object started)."""
        return self.logs / f"process-{self.started.index(process)}.log"

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process and every process it started: a crash, no cleanup at all."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def output(self) -> str:
        """Everything the processes have logged so far."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def close(self) -> None:
        """SIGTERM the process groups still running; SIGKILL those that linger."""
        running = [process for process in self.started if process.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGTERM)
        for process in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# --- The zart-dramatiq command ----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


class Cli:
    """Runs ``main`` with the global ``options`` and captures what it prints."""

    def __init__(self, capsys: pytest.CaptureFixture[str], *options: str) -> None:
        self.capsys = capsys
        self.options = options

    def __call__(self, *argv: str) -> Outcome:
        self.capsys.readouterr()
        code = main([*self.options, *argv])
        out, err = self.capsys.readouterr()
        return Outcome(code, out, err)

    def ok(self, *argv: str) -> str:
        result = self(*argv)
        assert (result.code, result.err) == (0, ""), result
        return result.out

    def json(self, *argv: str) -> Any:
        return json.loads(self.ok(*argv, "--json"))

    def fails(self, *argv: str) -> str:
        """Run a command expected to fail; return its one-line error."""
        result = self(*argv)
        assert result.code == 1, result
        assert result.out == ""
        assert "Traceback" not in result.err
        assert result.err.count("\n") == 1 and result.err.startswith("zart-dramatiq: error: ")
        return result.err


# --- Durable executions -----------------------------------------------------------------------


class Effects:
    """Counts side effects by name, thread-safely."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self.counts[name]
