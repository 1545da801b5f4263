"""Runs are fenced: a stale run's writes are refused, a recorded step is never
overwritten, one process never runs two bodies of one execution, cancel beats a
late end, and a run that ended without recording it is resumed by the sweeper."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import psycopg
import pytest
import tenacity
from psycopg import sql

import zart_dramatiq as zart
from tests.durable.runs import take_run
from tests.support import Effects, rows, scalar, wait_until
from zart_dramatiq import lifecycle
from zart_dramatiq.middleware import middleware_for
from zart_dramatiq.run import Run
from zart_dramatiq.signals import Refused


def record_charge(run: Run, txn: str):
    return run.record(
        "step:charge", kind="step", name="charge", fn="charge", status="completed", result=txn
    )


def test_a_run_that_lost_its_execution_is_refused_and_overwrites_nothing(broker, db, schema):
    @zart.durable
    def flow() -> str:
        return "never run here"

    handle = zart.start(flow, execution_id="fenced")
    # A run by a worker presumed lost (no worker row), then a takeover by another run.
    stale = take_run(broker, "fenced", uuid.uuid4())
    current = take_run(broker, "fenced", broker.worker_id)
    assert current.token == stale.token + 1

    assert record_charge(current, "txn-2").result == "txn-2"
    with pytest.raises(Refused):
        record_charge(stale, "txn-1")
    with pytest.raises(Refused):
        middleware_for(broker).store.atomically(
            lambda tx: lifecycle.finish(
                current.store, tx, stale.ref, lifecycle.COMPLETED, delivery="x", result="stale"
            )
        )
    # The current run writing the same step again gets the recorded outcome back.
    assert record_charge(current, "txn-3").result == "txn-2"
    recorded = rows(db, schema, "SELECT step_key, result FROM {s}.steps")
    assert recorded == [("step:charge", "txn-2")]
    assert handle.status() == "running"


def test_a_process_presumed_lost_never_runs_a_second_body_of_its_execution(
    broker, worker, effects, db, schema
) -> None:
    release = threading.Event()
    running = Effects()

    def slow() -> str:
        running("slow")
        assert running["slow"] - effects["slow-done"] == 1, "two bodies ran at once"
        release.wait(15)
        effects("slow-done")
        return "txn-1"

    @zart.durable
    def flow() -> str:
        return zart.step("charge", slow)

    handle = zart.start(flow, execution_id="lost")
    wait_until(lambda: running["slow"] == 1, timeout=15, message="the body to start")
    old_identity = broker.worker_id
    # The other workers presume this one lost: its row goes, its message is redelivered.
    db.execute(
        sql.SQL("DELETE FROM {}.workers WHERE id = %s").format(sql.Identifier(schema)),
        (old_identity,),
    )
    wait_until(lambda: broker.worker_id != old_identity, message="a new identity")
    wait_until(
        lambda: scalar(db, schema, "SELECT count(*) FROM {s}.messages WHERE eta > now()") == 1,
        timeout=15,
        message="the redelivery to be deferred behind the running body",
    )
    release.set()
    assert handle.result(timeout=15) == "txn-1"
    assert running["slow"] == 1


def test_a_body_that_returns_after_a_cancel_stays_cancelled(broker, worker) -> None:
    entered, release = threading.Event(), threading.Event()

    def not_a_step() -> None:
        entered.set()
        release.wait(15)

    @zart.durable
    def flow() -> str:
        not_a_step()
        return "finished"

    handle = zart.start(flow)
    assert entered.wait(15)
    assert zart.cancel(handle.execution_id) == "running"
    release.set()
    with pytest.raises(zart.ExecutionFailed, match="cancelled"):
        handle.result(timeout=15)
    broker.join(flow.queue_name)
    assert handle.status() == "cancelled"


def test_a_body_that_raises_after_a_cancel_stays_cancelled(broker, worker) -> None:
    entered, release = threading.Event(), threading.Event()

    def not_a_step() -> None:
        entered.set()
        release.wait(15)
        raise RuntimeError("late failure")

    @zart.durable(min_backoff=10, max_backoff=10)
    def flow() -> str:
        not_a_step()
        return "finished"

    handle = zart.start(flow)
    assert entered.wait(15)
    zart.cancel(handle.execution_id)
    release.set()
    broker.join(flow.queue_name)
    assert handle.status() == "cancelled"


def test_retry_of_a_cancelled_execution_waits_for_its_running_body(
    broker, worker, effects, db, schema
) -> None:
    entered, release = threading.Event(), threading.Event()
    running = Effects()

    def blocking() -> str:
        running("body")
        assert running["body"] - effects["body-done"] == 1, "two bodies ran at once"
        if effects["body-done"] == 0:
            entered.set()
            release.wait(15)
        effects("body-done")
        return "ok"

    @zart.durable
    def flow() -> str:
        return zart.step("work", blocking)

    handle = zart.start(flow)
    assert entered.wait(15)
    zart.cancel(handle.execution_id)
    zart.retry(handle.execution_id)  # the cancelled body still runs
    wait_until(
        lambda: (
            running["body"] == 2
            or scalar(db, schema, "SELECT count(*) FROM {s}.messages WHERE eta > now()") == 1
        ),
        timeout=15,
        message="the retry's delivery to be deferred behind the running body",
    )
    release.set()
    assert handle.result(timeout=30) == "ok"
    assert running["body"] == 2  # the cancelled run's step, then the new run's: never at once


class Declined(Exception):
    pass


def test_an_exhausted_step_fails_at_once_and_retry_resumes_it(broker, worker, effects) -> None:
    fixed = threading.Event()

    def charge() -> str:
        effects("charge")
        if not fixed.is_set():
            raise Declined("card declined")
        return "txn"

    @zart.durable  # Dramatiq's default Retries: 20 retries, 15 s backoff
    def flow() -> str:
        reserved = zart.step("reserve", lambda: effects("reserve") or "stock")
        return f"{reserved}:{zart.step('charge', charge)}"

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed, match="card declined"):
        handle.result(timeout=15)
    assert handle.status() == "failed"
    assert effects["charge"] == 1
    fixed.set()
    zart.retry(handle.execution_id)
    assert handle.result(timeout=15) == "stock:txn"
    assert (effects["reserve"], effects["charge"]) == (1, 2)


def test_non_determinism_blocks_at_once(broker, worker, effects) -> None:
    flip = {"fn": lambda: "a"}

    @zart.durable
    def flow() -> str:
        first = zart.step("one", flip["fn"])
        zart.sleep("pause", 0.2)
        return first

    handle = zart.start(flow)
    wait_until(lambda: handle.status() == "sleeping", timeout=15, message="the sleep")

    def other() -> str:
        return "b"

    flip["fn"] = other
    # Not retried by Dramatiq, nor failed: parked until code that replays it (test_versioning).
    wait_until(lambda: handle.status() == "blocked", timeout=15, message="the replay to block")
    info = zart.get_execution(handle.execution_id)
    assert info.blocked is not None
    assert (info.blocked.step, info.blocked.kind, info.blocked.blocks) == ("step:one", "changed", 1)
    assert info.runs == 2


def test_an_event_that_fails_its_model_fails_the_execution_until_a_corrected_one(
    broker, worker
) -> None:
    from pydantic import BaseModel

    class Approval(BaseModel):
        approved: bool

    @zart.durable
    def flow() -> bool:
        return zart.wait_for_event("approval", model=Approval).approved

    handle = zart.start(flow)
    wait_until(lambda: handle.status() == "waiting", timeout=15, message="the wait")
    zart.send_event(handle.execution_id, "approval", {"approved": "maybe"})
    with pytest.raises(zart.ExecutionFailed, match="approval"):
        handle.result(timeout=15)
    # The failed wait is visible; a corrected event and a retry resume it.
    zart.send_event(handle.execution_id, "approval", {"approved": True})
    zart.retry(handle.execution_id)
    assert handle.result(timeout=15) is True


def test_stop_after_delay_counts_from_the_first_attempt_across_suspensions(broker, worker):
    attempts = Effects()

    def flaky() -> None:
        attempts("try")
        raise Declined("still down")

    policy = zart.Retry(
        stop=tenacity.stop_after_delay(1.0),
        wait=tenacity.wait_fixed(0.4),
        max_inline_wait=timedelta(0),
    )

    @zart.durable
    def flow() -> None:
        zart.step("call", flaky, retry=policy)

    handle = zart.start(flow)
    with pytest.raises(zart.ExecutionFailed, match="still down"):
        handle.result(timeout=15)
    assert 2 <= attempts["try"] <= 4


def test_a_run_that_ended_unrecorded_is_resumed_by_the_sweeper(broker, worker, effects):
    @zart.durable
    def flow() -> str:
        return zart.step("once", lambda: effects("once") or "done")

    handle = zart.start(flow, execution_id="stranded")
    assert handle.result(timeout=15) == "done"
    # Two stranded runs, and no message to resume either: one held by this very
    # worker (its run gone without a trace), one by a worker that no longer exists.
    for execution_id, owner in (("mine", broker.worker_id), ("orphan", uuid.uuid4())):
        stuck = zart.start(flow, execution_id=execution_id)
        broker.flush(flow.queue_name)  # the start message: lost with its run
        with broker.db.connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {}.executions SET status = 'running', run_owner = %s, runs = 1 "
                    "WHERE id = %s"
                ).format(sql.Identifier(broker.db.schema)),
                (owner, execution_id),
            )
        assert stuck.result(timeout=15) == "done"


def test_sleep_takes_seconds_and_refuses_other_types(broker, worker) -> None:
    @zart.durable
    def flow(duration: object) -> str:
        zart.sleep("nap", duration)  # type: ignore[arg-type]
        return "rested"

    assert zart.start(flow, 0.05).result(timeout=15) == "rested"
    with pytest.raises(zart.ExecutionFailed, match="timedelta or a number of seconds"):
        zart.start(flow, "1").result(timeout=15)


def test_an_event_without_payload_is_json_null(broker, worker) -> None:
    @zart.durable
    def flow() -> object:
        return {"payload": zart.wait_for_event("ping")}

    handle = zart.start(flow)
    assert zart.send_event(handle.execution_id, "ping", None)
    assert handle.result(timeout=15) == {"payload": None}


def test_a_takeover_that_waited_for_a_commit_reads_the_step_it_committed(
    broker, database_url, db, schema
) -> None:
    @zart.durable
    def flow() -> str:
        return "never run here"

    zart.start(flow, execution_id="raced")
    stale = take_run(broker, "raced", uuid.uuid4())  # its worker is presumed lost
    store = middleware_for(broker).store
    taken: dict[str, lifecycle.Acquired | None] = {}
    with psycopg.connect(database_url) as conn:
        # The stale run commits a step while holding its execution (as an event wait,
        # a group or a transactional step does)...
        with conn.transaction():
            conn.execute(
                sql.SQL("SELECT 1 FROM {}.executions WHERE id = 'raced' FOR UPDATE").format(
                    sql.Identifier(schema)
                )
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.steps (execution_id, step_key, kind, name, status, result) "
                    "VALUES ('raced', 'step:x', 'step', 'x', 'completed', '1')"
                ).format(sql.Identifier(schema))
            )
            # ... while a takeover waits for that lock.
            takeover = threading.Thread(
                target=lambda: taken.update(
                    run=lifecycle.acquire(store, "raced", 0, broker.worker_id)
                )
            )
            takeover.start()
            wait_until(
                lambda: scalar(
                    db,
                    schema,
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()",
                ),
                message="the takeover to wait for the execution's lock",
            )
        takeover.join(timeout=30)
    acquired = taken["run"]
    assert acquired is not None and acquired.token == stale.token + 1
    assert [entry["key"] for entry in acquired.journal] == ["step:x"]
