"""Transactional steps: the function's writes and the step's checkpoint commit together.

So a write happens exactly once: replays return the recorded result without
running the function, a failing function leaves no write behind, a crash or a
cancel inside the transaction leaves nothing committed, and the database's own
trouble (a serialization failure) runs the whole transaction again.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel

import zart_dramatiq as zart
from broker_pg.database import configure_session
from broker_pg.sqlfile import Queries
from tests.apps import transactional_app
from tests.support import Processes, require_redis, rows, scalar, wait_until

#: Inserts an order and returns its id; {s} is the test schema.
INSERT = "INSERT INTO {s}.test_orders (execution_id, item) VALUES (%s, %s) RETURNING id"


class Receipt(BaseModel):
    order_id: int
    item: str


class Declined(Exception):
    """A business error: importable, so its recorded form is rebuilt as itself."""


@pytest.fixture
def orders(db, schema: str) -> Callable[[], list[tuple[str, str]]]:
    """Create the orders table (and the apps' effects and gates); return its rows, by id."""
    transactional_app.create_tables(db, schema)
    return lambda: rows(db, schema, "SELECT execution_id, item FROM {s}.test_orders ORDER BY id")


def insert(conn: psycopg.Connection, schema: str, execution_id: str, item: str) -> int:
    row = conn.execute(sql.SQL(INSERT).format(s=sql.Identifier(schema)), (execution_id, item))
    return int(row.fetchone()[0])  # type: ignore[index]


def test_the_writes_commit_with_the_checkpoint_and_a_replay_runs_nothing_again(
    broker, worker, effects, orders, schema
) -> None:
    seen: list[Receipt] = []

    def place(conn: psycopg.Connection, execution_id: str, item: str) -> Receipt:
        effects("place")
        return Receipt(order_id=insert(conn, schema, execution_id, item), item=item)

    @zart.durable
    def flow(item: str) -> int:
        receipt = zart.transactional_step("place", place, zart.context().execution_id, item)
        seen.append(receipt)
        zart.sleep("pause", timedelta(milliseconds=50))  # the next run replays the step
        return receipt.order_id

    handle = zart.start(flow, "book", execution_id="order-1")
    order_id = handle.result(timeout=15)
    # Two runs; the function ran in the first only, and the second got its result, typed.
    first, replayed = seen
    assert replayed == first == Receipt(order_id=order_id, item="book")
    assert effects["place"] == 1
    assert orders() == [("order-1", "book")]
    [step, _] = zart.get_execution("order-1").steps
    assert (step.key, step.kind, step.status, step.attempts) == (
        "step:place",
        "step",
        "completed",
        1,
    )
    assert step.fn is not None and step.fn.endswith("place")


def test_a_failing_function_leaves_no_write_and_fails_the_execution(
    broker, worker, effects, orders, schema
) -> None:
    def place(conn: psycopg.Connection, execution_id: str) -> int:
        effects("place")
        insert(conn, schema, execution_id, "book")
        raise Declined(f"order {execution_id} declined")

    @zart.durable(max_retries=3)
    def flow() -> int:
        return zart.transactional_step("place", place, zart.context().execution_id)

    handle = zart.start(flow, execution_id="declined")
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    assert failure.value.status == "failed"
    assert failure.value.error is not None
    assert failure.value.error["type"] == f"{__name__}.Declined"
    # Recorded like an exhausted step: no retry by Dramatiq, and the insert rolled back.
    assert effects["place"] == 1
    assert orders() == []
    [step] = zart.get_execution("declined").steps
    assert (step.key, step.status, step.result) == ("step:place", "failed", None)
    assert step.error is not None and step.error["type"] == f"{__name__}.Declined"
    assert "order declined declined" in step.error["message"]


def test_an_except_around_a_failed_step_sees_the_same_error_on_every_replay(
    broker, worker, effects, orders, schema
) -> None:
    caught: list[str] = []

    def place(conn: psycopg.Connection) -> int:
        effects("place")
        insert(conn, schema, "compensated", "book")
        raise Declined("out of stock")

    @zart.durable
    def flow() -> str:
        try:
            zart.transactional_step("place", place)
        except Declined as error:
            caught.append(str(error))
        zart.sleep("pause", timedelta(milliseconds=50))  # the next run replays the failure
        return "compensated"

    assert zart.start(flow).result(timeout=15) == "compensated"
    assert caught == ["out of stock", "out of stock"]
    assert effects["place"] == 1
    assert orders() == []


def test_a_worker_killed_inside_the_transaction_committed_nothing_and_the_step_runs_again(
    processes: Processes, broker, orders, db, schema
) -> None:
    actors = transactional_app.declare(broker)
    worker = processes.dramatiq_worker("tests.apps.transactional_app", threads=2)
    handle = zart.start(actors["order_flow"], "crash", "book", execution_id="crash")
    # The function inserted its order and holds at its gate, its transaction open.
    wait_until(
        lambda: function_runs(db, schema, "crash") == 1,
        timeout=30,
        message=processes.output,
    )
    processes.kill(worker)
    assert orders() == []  # the open transaction died with the worker
    open_gate(db, schema, "place_order")
    processes.dramatiq_worker("tests.apps.transactional_app", threads=2)
    order_id = handle.result(timeout=30)
    # The function ran twice, but its write committed once, with the checkpoint.
    assert function_runs(db, schema, "crash") == 2
    assert orders() == [("crash", "book")]
    assert scalar(db, schema, "SELECT id FROM {s}.test_orders") == order_id
    assert [(s.key, s.status) for s in zart.get_execution("crash").steps] == [
        ("step:place", "completed"),
        ("step:after", "completed"),
    ]


def function_runs(db, schema: str, execution_id: str) -> int:
    query = "SELECT count(*) FROM {s}.test_effects WHERE execution_id = %s AND name = %s"
    return int(scalar(db, schema, query, execution_id, "place_order"))


def open_gate(db, schema: str, name: str) -> None:
    db.execute(
        sql.SQL("INSERT INTO {}.test_gates VALUES (%s)").format(sql.Identifier(schema)), (name,)
    )


def test_a_cancel_while_the_function_runs_rolls_its_writes_back(
    broker, worker, effects, orders, schema
) -> None:
    entered, release = threading.Event(), threading.Event()

    def place(conn: psycopg.Connection) -> int:
        order_id = insert(conn, schema, "cancelled", "book")
        entered.set()
        release.wait(15)
        return order_id

    @zart.durable
    def flow() -> int:
        order_id = zart.transactional_step("place", place)
        effects("after")
        return order_id

    handle = zart.start(flow, execution_id="cancelled")
    assert entered.wait(15)
    # The cancel does not wait for the function: its transaction holds no lock on the execution.
    assert zart.cancel("cancelled") == "running"
    release.set()
    with pytest.raises(zart.ExecutionFailed, match="cancelled"):
        handle.result(timeout=15)
    broker.join(flow.queue_name)  # the body has stopped
    # The commit was refused: no order, no step, and the body went no further.
    assert orders() == []
    assert zart.get_execution("cancelled").steps == ()
    assert effects["after"] == 0
    assert handle.status() == "cancelled"


def test_messages_sent_on_its_connection_commit_with_the_step(broker, worker, effects) -> None:
    @dramatiq.actor
    def notify(what: str) -> None:
        effects(what)

    def send(conn: psycopg.Connection, what: str) -> str:
        with broker.transaction(conn):
            notify.send(what)
        if what == "declined":
            raise Declined(what)
        return what

    @zart.durable
    def flow(what: str) -> str:
        try:
            return zart.transactional_step("send", send, what)
        except Declined:
            return "declined"

    assert zart.start(flow, "accepted").result(timeout=15) == "accepted"
    assert zart.start(flow, "declined").result(timeout=15) == "declined"
    broker.join(notify.queue_name)
    # The accepted step's message was sent, once; the declined one's rolled back with it.
    assert (effects["accepted"], effects["declined"]) == (1, 0)


def test_a_serialization_failure_runs_the_whole_transaction_again(
    broker, worker, effects, orders, schema
) -> None:
    def place(conn: psycopg.Connection) -> int:
        effects("place")
        order_id = insert(conn, schema, "conflict", "book")
        if effects["place"] == 1:
            # What a concurrent transaction would cause: the database's trouble, not fn's.
            conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access' "
                "USING ERRCODE = 'serialization_failure'; END $$"
            )
        return order_id

    @zart.durable
    def flow() -> int:
        return zart.transactional_step("place", place)

    order_id = zart.start(flow, execution_id="conflict").result(timeout=15)
    assert effects["place"] == 2
    assert orders() == [("conflict", "book")]
    [step] = zart.get_execution("conflict").steps
    assert (step.status, step.attempts, step.result) == ("completed", 2, order_id)


def test_a_connection_lost_inside_the_function_runs_the_whole_transaction_again(
    broker, worker, effects, orders, schema
) -> None:
    def place(conn: psycopg.Connection) -> int:
        effects("place")
        order_id = insert(conn, schema, "lost", "book")
        if effects["place"] == 1:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # a cut session
        return order_id

    @zart.durable
    def flow() -> int:
        return zart.transactional_step("place", place)

    order_id = zart.start(flow, execution_id="lost").result(timeout=15)
    assert effects["place"] == 2
    assert orders() == [("lost", "book")]
    [step] = zart.get_execution("lost").steps
    assert (step.status, step.attempts, step.result) == ("completed", 2, order_id)


def test_the_function_plans_its_statements_as_any_session_would(broker, worker) -> None:
    def settings(conn: psycopg.Connection) -> list[str]:
        row = conn.execute(
            "SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan'),"
            " reset_val FROM pg_settings WHERE name = 'plan_cache_mode'"
        ).fetchone()
        assert row is not None
        return list(row)

    @zart.durable
    def flow() -> list[str]:
        return zart.transactional_step("settings", settings)

    plan_cache_mode, enable_seqscan, default = zart.start(flow).result(timeout=15)
    # Not our sessions' settings (one generic plan, sequential scans off): the server's.
    assert (plan_cache_mode, enable_seqscan) == (default, "on") != ("force_generic_plan", "off")


def test_statements_after_the_function_are_planned_as_ours_again(database_url, schema) -> None:
    queries = Queries("zart_dramatiq", "queries.sql", schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        configure_session(conn)
        ours = ("force_generic_plan", "off")
        with conn.transaction():
            saved = {n: s for n, s, _ in conn.execute(queries["plan_normally"])}
            assert current_plan_settings(conn) != ours
            conn.execute(queries["plan_as_before"], saved)
            assert current_plan_settings(conn) == ours
        assert current_plan_settings(conn) == ours


def current_plan_settings(conn: psycopg.Connection) -> tuple[str, str]:
    row = conn.execute(
        "SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan')"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_function_may_read_rows_of_another_shape_without_changing_ours(
    broker, worker, orders, schema
) -> None:
    def place(conn: psycopg.Connection, item: str) -> dict[str, Any]:
        insert(conn, schema, "dicts", item)
        conn.row_factory = dict_row  # type: ignore[assignment]  # the checkpoint's connection
        query = sql.SQL("SELECT execution_id, item FROM {}.test_orders WHERE item = %s")
        return conn.execute(query.format(sql.Identifier(schema)), (item,)).fetchone()  # type: ignore[return-value]

    @zart.durable
    def flow() -> list[dict[str, Any]]:
        return [zart.transactional_step(f"place-{item}", place, item) for item in ("book", "pen")]

    assert zart.start(flow, execution_id="dicts").result(timeout=15) == [
        {"execution_id": "dicts", "item": "book"},
        {"execution_id": "dicts", "item": "pen"},
    ]
    assert orders() == [("dicts", "book"), ("dicts", "pen")]


def test_a_function_that_goes_on_after_a_failed_statement_fails_writing_nothing(
    broker, worker, orders, schema
) -> None:
    def place(conn: psycopg.Connection) -> int:
        order_id = insert(conn, schema, "swallowed", "book")
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")  # without a savepoint, the transaction stays failed
        return order_id

    @zart.durable
    def flow() -> int:
        return zart.transactional_step("place", place)

    with pytest.raises(zart.ExecutionFailed, match="caught the error"):
        zart.start(flow, execution_id="swallowed").result(timeout=15)
    assert orders() == []
    [step] = zart.get_execution("swallowed").steps
    assert step.status == "failed"


def test_a_function_that_is_not_callable_fails_the_execution_writing_nothing(
    broker, worker
) -> None:
    @zart.durable(max_retries=3)
    def flow() -> None:
        zart.transactional_step("place", "INSERT INTO orders DEFAULT VALUES")  # type: ignore[arg-type]

    handle = zart.start(flow, execution_id="not-callable")
    with pytest.raises(zart.ExecutionFailed, match="takes a function of the connection"):
        handle.result(timeout=15)
    assert zart.get_execution("not-callable").steps == ()


def test_outside_a_durable_body_it_is_an_error() -> None:
    with pytest.raises(zart.NotInExecution):
        zart.transactional_step("place", lambda conn: 1)


def test_inside_another_steps_function_it_is_refused_and_that_step_fails(
    broker, worker, effects, orders, schema
) -> None:
    def place(conn: psycopg.Connection) -> int:
        effects("place")
        return insert(conn, schema, "nested", "book")

    def outer() -> int:
        return zart.transactional_step("place", place)

    @zart.durable
    def flow() -> int:
        return zart.step("outer", outer, retry=zart.Retry.fixed(3, timedelta(0)))

    with pytest.raises(zart.ExecutionFailed) as failure:
        zart.start(flow, execution_id="nested").result(timeout=15)
    assert failure.value.error is not None
    assert failure.value.error["type"].endswith("NotAllowedInStep")
    assert "inside step 'outer'" in failure.value.error["message"]
    # No retry policy gets past it, and the inner function never ran.
    [step] = zart.get_execution("nested").steps
    assert (step.key, step.status, step.attempts) == ("step:outer", "failed", 1)
    assert effects["place"] == 0
    assert orders() == []


def test_a_deadline_passed_while_the_function_ran_commits_nothing(
    broker, worker, orders, db, schema
) -> None:
    entered, release = threading.Event(), threading.Event()

    def place(conn: psycopg.Connection) -> int:
        order_id = insert(conn, schema, "late", "book")
        entered.set()
        release.wait(15)
        return order_id

    @zart.durable(timeout=timedelta(seconds=1))
    def flow() -> int:
        return zart.transactional_step("place", place)

    handle = zart.start(flow, execution_id="late")
    assert entered.wait(15)
    wait_until(
        lambda: scalar(db, schema, "SELECT deadline < now() FROM {s}.executions WHERE id = 'late'"),
        timeout=15,
        message="the deadline to pass",
    )
    release.set()
    with pytest.raises(zart.ExecutionFailed, match="timed_out"):
        handle.result(timeout=15)
    assert orders() == []
    assert zart.get_execution("late").steps == ()


@pytest.fixture
def redis_broker(database_url: str, schema: str) -> Iterator[dramatiq.Broker]:
    """A Redis broker whose executions live in the test schema."""
    require_redis()
    broker = RedisBroker(host="127.0.0.1", namespace=f"zart-test-{uuid.uuid4().hex[:8]}")
    broker.add_middleware(
        zart.DurableMiddleware(database_url, schema=schema), before=type(broker.middleware[0])
    )
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def test_on_redis_the_writes_commit_with_the_checkpoint_in_postgresql(
    redis_broker, effects, orders, schema
) -> None:
    def place(conn: psycopg.Connection, item: str) -> int:
        effects("place")
        return insert(conn, schema, "on-redis", item)

    @zart.durable(broker=redis_broker, queue_name=f"q{uuid.uuid4().hex[:8]}")
    def flow(item: str) -> int:
        order_id = zart.transactional_step("place", place, item)
        zart.sleep("pause", timedelta(milliseconds=50))  # the next run replays the step
        return order_id

    worker = Worker(redis_broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        order_id = zart.start(flow, "book", execution_id="on-redis").result(timeout=20)
    finally:
        worker.stop()
    assert effects["place"] == 1
    assert orders() == [("on-redis", "book")]
    [step, _] = zart.get_execution("on-redis", broker=redis_broker).steps
    assert (step.status, step.result) == ("completed", order_id)
