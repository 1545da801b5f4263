"""Worker app for the fault suite: ``dramatiq tests.apps.fault_app --processes 1 --threads 4``.

Environment:

* ``DATABASE_URL``, ``ZART_TEST_SCHEMA``: the executions and messages, on the test's own
  PostgreSQL (the one the faults restart, stop and cut).
* ``EFFECTS_URL``, ``EFFECTS_SCHEMA``: where each step run records its side effect, on the
  shared test database, so effects are recorded even while the own server is down.
* ``FAULT_WORKER``: this worker's name; its sessions are named ``fault-<name>`` (pool)
  and ``fault-<name>-listener`` (LISTEN), so a test can cut one worker's sessions.
* ``LEASE_TIMEOUT`` (3 s), ``STEP_MS`` (``20-100``: each step's duration range, in ms),
  ``TIME_LIMIT_MS`` (400: the time limit of ``ten_steps_limited``).

Every step run inserts one row (execution, step, a fresh uuid token, worker, pid, thread,
time) into ``fault_effects`` *before* it does its work, and returns the token: the row
exists for every run that started, even one killed mid-step. A body returns the tokens
``zart.step`` gave it, so the suite can compare them with the recorded steps.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid

import dramatiq
import psycopg
from dramatiq.middleware import TimeLimit
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import PostgresBroker

URL = os.environ.get("DATABASE_URL", "")
SCHEMA = os.environ.get("ZART_TEST_SCHEMA", "zart")
EFFECTS_URL = os.environ.get("EFFECTS_URL", "")
EFFECTS_SCHEMA = os.environ.get("EFFECTS_SCHEMA", "public")
WORKER = os.environ.get("FAULT_WORKER", "w")
LEASE_TIMEOUT = float(os.environ.get("LEASE_TIMEOUT", "3"))
STEP_MS = tuple(float(ms) for ms in os.environ.get("STEP_MS", "20-100").split("-"))
TIME_LIMIT_MS = int(os.environ.get("TIME_LIMIT_MS", "400"))

STEPS = 10
#: How the sessions of a worker named ``name`` appear in pg_stat_activity.
APPLICATION_NAME = "fault-{}"

#: Short Retries backoffs: a body that fails on a fault is retried within the test's wait.
RETRY_OPTIONS = {"max_retries": 50, "min_backoff": 100, "max_backoff": 1000}

EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS {s}.fault_effects (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id text        NOT NULL,
    step         text        NOT NULL,
    token        text        NOT NULL,
    worker       text        NOT NULL,
    pid          integer     NOT NULL,
    thread       bigint      NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS fault_effects_step ON {s}.fault_effects (execution_id, step);
"""


def create_effects_table(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=sql.Identifier(schema)))
    conn.execute(sql.SQL(EFFECTS_TABLE).format(s=sql.Identifier(schema)))


def step_ms(execution_id: str, step: str, low: float, high: float) -> float:
    """A step's duration: spread over [low, high], the same on every run and every worker."""
    digest = hashlib.blake2b(f"{execution_id}/{step}".encode(), digest_size=4).digest()
    return low + (high - low) * int.from_bytes(digest, "big") / 0xFFFFFFFF


_local = threading.local()


def _effects_connection() -> psycopg.Connection:
    conn: psycopg.Connection | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(
            EFFECTS_URL, autocommit=True, application_name=f"fault-effects-{WORKER}"
        )
        _local.conn = conn
    return conn


def _record_effect(execution_id: str, step: str, token: str) -> None:
    query = sql.SQL(
        "INSERT INTO {}.fault_effects (execution_id, step, token, worker, pid, thread) "
        "VALUES (%s, %s, %s, %s, %s, %s)"
    ).format(sql.Identifier(EFFECTS_SCHEMA))
    params = (execution_id, step, token, WORKER, os.getpid(), threading.get_ident())
    for attempt in range(20):
        try:
            _effects_connection().execute(query, params)
            return
        except BaseException as error:
            # Interrupted (TimeLimit) or broken: this thread's connection may be mid-protocol.
            conn = getattr(_local, "conn", None)
            _local.conn = None
            if conn is not None:
                conn.close()
            if not isinstance(error, psycopg.OperationalError) or attempt == 19:
                raise
            time.sleep(0.05)


def effect(execution_id: str, step: str) -> str:
    """One step run: record the effect with a fresh token, then work for a little while."""
    token = uuid.uuid4().hex
    _record_effect(execution_id, step, token)
    # Small slices: an asynchronous exception (TimeLimit) lands mid-step, not only after it.
    deadline = time.monotonic() + step_ms(execution_id, step, *STEP_MS) / 1000
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.005))
    return token


class PlannedFailure(Exception):
    """What ``ten_steps_failing`` raises after its last step."""


def declare(broker: dramatiq.Broker) -> dict[str, zart.DurableActor]:
    @zart.durable(broker=broker, actor_name="ten_steps", **RETRY_OPTIONS)
    def ten_steps(execution_id: str) -> list[str]:
        return [zart.step(f"s{i}", effect, execution_id, f"s{i}") for i in range(STEPS)]

    @zart.durable(broker=broker, actor_name="ten_steps_failing", max_retries=0)
    def ten_steps_failing(execution_id: str) -> list[str]:
        for i in range(STEPS):
            zart.step(f"s{i}", effect, execution_id, f"s{i}")
        raise PlannedFailure(f"{execution_id} fails after its last step, as planned")

    # Each run is cut by TimeLimit after a few steps; Retries runs the body again at once.
    @zart.durable(
        broker=broker,
        actor_name="ten_steps_limited",
        time_limit=TIME_LIMIT_MS,
        max_retries=200,
        min_backoff=10,
        max_backoff=50,
    )
    def ten_steps_limited(execution_id: str) -> list[str]:
        return [zart.step(f"s{i}", effect, execution_id, f"s{i}") for i in range(STEPS)]

    return {
        "ten_steps": ten_steps,
        "ten_steps_failing": ten_steps_failing,
        "ten_steps_limited": ten_steps_limited,
    }


def make_broker(url: str, schema: str, name: str) -> PostgresBroker:
    broker = PostgresBroker(
        url,
        schema=schema,
        heartbeat_interval=0.2,
        lease_timeout=LEASE_TIMEOUT,
        application_name=APPLICATION_NAME.format(name),
    )
    for middleware in broker.middleware:
        if isinstance(middleware, TimeLimit):
            # Dramatiq checks time limits once a second by default: check every 10 ms, so
            # an interruption lands where the limit falls (mid-step, mid-checkpoint).
            middleware.manager.interval = 0.01  # type: ignore[union-attr]
    return broker


if EFFECTS_URL:
    broker = make_broker(URL, SCHEMA, WORKER)
    dramatiq.set_broker(broker)
    actors = declare(broker)
