"""Idempotent start, one body at a time, execution timeout and cancel."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import dramatiq
import psycopg
import pytest
from psycopg import sql

import zart_dramatiq as zart
from tests.support import Effects, wait_until


def count_rows(db, schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    return db.execute(query).fetchone()[0]


def test_same_id_same_input_returns_the_existing_execution(broker, worker, effects) -> None:
    @zart.durable
    def flow(n: int) -> int:
        return zart.step("once", lambda: effects("once") or n)

    first = zart.start(flow, 5, execution_id="job-5")
    assert first.result(timeout=15) == 5
    again = zart.start(flow, 5, execution_id="job-5")
    assert again.execution_id == "job-5"
    assert again.result(timeout=15) == 5
    assert effects["once"] == 1


def test_same_id_different_input_is_a_conflict_naming_the_id(broker, db, schema) -> None:
    @zart.durable
    def flow(n: int) -> int:
        return n

    zart.start(flow, 1, execution_id="job-x")
    with pytest.raises(zart.ExecutionConflict, match="'job-x'"):
        zart.start(flow, 2, execution_id="job-x")
    assert count_rows(db, schema, "messages") == 1


def test_concurrent_starts_of_one_id_create_one_execution(broker, db, schema) -> None:
    @zart.durable
    def flow(n: int) -> int:
        return n

    barrier = threading.Barrier(8)

    def start() -> str:
        barrier.wait()
        return zart.start(flow, 3, execution_id="job-c").execution_id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: start(), range(8)))
    assert set(ids) == {"job-c"}
    assert count_rows(db, schema, "executions") == 1
    assert count_rows(db, schema, "messages") == 1


def test_duplicate_deliveries_never_run_the_body_concurrently(broker, worker, effects) -> None:
    release = threading.Event()
    running = Effects()

    def slow() -> int:
        running("slow")
        assert running["slow"] - effects["slow-done"] == 1, "two bodies ran at once"
        release.wait(10)
        effects("slow-done")
        return 1

    @zart.durable
    def flow() -> int:
        return zart.step("slow", slow)

    handle = zart.start(flow, execution_id="dup")
    wait_until(lambda: running["slow"] == 1, timeout=15, message="the body to start")
    # A duplicate delivery of the same message while the body runs.
    message = flow.message_with_options(zart_execution_id="dup", zart_seq=0)
    broker.enqueue(message)
    wait_until(
        lambda: handle.status() == "running" and broker_has_deferred(broker),
        timeout=15,
        message="defer",
    )
    release.set()
    assert handle.result(timeout=15) == 1
    assert running["slow"] == 1


def broker_has_deferred(broker) -> bool:
    with broker.db.connection() as conn:
        query = sql.SQL("SELECT count(*) FROM {}.messages WHERE eta > now()").format(
            sql.Identifier(broker.db.schema)
        )
        return conn.execute(query).fetchone()[0] == 1


def test_timeout_marks_the_execution_timed_out_while_it_sleeps(broker, worker) -> None:
    @zart.durable(timeout=timedelta(milliseconds=500))
    def flow() -> str:
        zart.sleep("long", timedelta(hours=1))
        return "never"

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    assert failure.value.status == "timed_out"
    assert zart.get_execution(handle.execution_id).status == "timed_out"


def test_timeout_applies_while_waiting_for_an_event(broker, worker) -> None:
    @zart.durable(timeout=timedelta(milliseconds=500))
    def flow() -> dict:
        return zart.wait_for_event("never")

    with pytest.raises(zart.ExecutionFailed) as failure:
        zart.start(flow).result(timeout=15)
    assert failure.value.status == "timed_out"


def test_cancel_removes_the_pending_wake_up(broker, worker, db, schema) -> None:
    @zart.durable
    def flow() -> str:
        zart.sleep("long", timedelta(hours=1))
        return "never"

    handle = zart.start(flow)
    wait_until(lambda: handle.status() == "sleeping", timeout=15, message="the sleep")
    assert count_rows(db, schema, "messages") == 1
    assert zart.cancel(handle.execution_id) == "sleeping"
    assert count_rows(db, schema, "messages") == 0
    assert zart.get_execution(handle.execution_id).status == "cancelled"
    with pytest.raises(zart.ExecutionFailed, match="cancelled"):
        handle.result(timeout=5)


def test_cancel_stops_the_body_at_its_next_step_boundary(broker, worker, effects) -> None:
    entered = threading.Event()
    release = threading.Event()

    def blocking() -> None:
        entered.set()
        release.wait(10)

    @zart.durable
    def flow() -> str:
        zart.step("first", blocking)
        zart.step("second", lambda: effects("second"))
        return "finished"

    handle = zart.start(flow)
    assert entered.wait(10)
    zart.cancel(handle.execution_id)
    release.set()
    with pytest.raises(zart.ExecutionFailed, match="cancelled"):
        handle.result(timeout=15)
    broker.join(flow.queue_name)  # the body has stopped
    # The step it was running is recorded (it happened); nothing after it ran.
    steps = [s.key for s in zart.get_execution(handle.execution_id).steps]
    assert steps == ["step:first"]
    assert effects["second"] == 0


def test_retry_reruns_the_failed_step_and_keeps_the_others(broker, worker, effects) -> None:
    flaky = {"fail": True}

    def sometimes() -> str:
        effects("sometimes")
        if flaky["fail"]:
            raise RuntimeError("down")
        return "up"

    @zart.durable(max_retries=0)
    def flow() -> str:
        zart.step("before", lambda: effects("before"))
        return zart.step("sometimes", sometimes)

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed):
        handle.result(timeout=15)
    flaky["fail"] = False
    zart.retry(handle.execution_id)
    assert handle.result(timeout=15) == "up"
    assert (effects["before"], effects["sometimes"]) == (1, 2)
    with pytest.raises(zart.ExecutionFinished):
        zart.retry(handle.execution_id)


def test_a_start_inside_the_callers_transaction_commits_or_vanishes_with_it(
    broker, worker, database_url, db, schema
) -> None:
    @zart.durable
    def flow(n: int) -> int:
        return n * 2

    class Abort(Exception):
        pass

    with pytest.raises(Abort), psycopg.connect(database_url) as conn, conn.transaction():
        with broker.transaction(conn):
            zart.start(flow, 1, execution_id="rolled-back")
        raise Abort
    assert count_rows(db, schema, "executions") == 0
    assert count_rows(db, schema, "messages") == 0

    with psycopg.connect(database_url) as conn, conn.transaction(), broker.transaction(conn):
        handle = zart.start(flow, 2, execution_id="committed")
    assert handle.result(timeout=15) == 4


def test_purge_deletes_ended_executions_past_the_retention_only(
    broker, worker, db, schema, cli
) -> None:
    @zart.durable
    def flow(n: int) -> int:
        if n:
            zart.wait_for_event("never")
        return zart.step("work", lambda: n)

    done = zart.start(flow, 0, execution_id="done")
    assert done.result(timeout=15) == 0
    waiting = zart.start(flow, 1, execution_id="waiting")
    wait_until(lambda: waiting.status() == "waiting", timeout=15, message="the wait")

    assert zart.purge_executions(timedelta(hours=1)) == 0
    assert "purged 1 ended executions" in cli.ok("executions", "purge", "--older-than", "0")
    assert [e.id for e in zart.list_executions()] == ["waiting"]
    # The purged execution's steps went with it; the waiting one's stay.
    steps = sql.SQL("SELECT DISTINCT execution_id FROM {}.steps").format(sql.Identifier(schema))
    assert db.execute(steps).fetchall() == [("waiting",)]


def test_a_duplicate_delivery_of_a_completed_execution_triggers_nothing_more(
    broker, worker
) -> None:
    successes: list[int] = []

    @dramatiq.actor
    def on_done(message: dict, result: int) -> None:
        successes.append(result)

    @zart.durable
    def flow() -> int:
        return 3

    message = flow.send_with_options(on_success=on_done)
    wait_until(lambda: successes == [3], timeout=15, message="the on_success callback")
    broker.enqueue(message)  # the same message again, after the execution completed
    broker.join(flow.queue_name)
    broker.join(on_done.queue_name)
    assert successes == [3]
