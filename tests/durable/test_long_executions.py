"""Long executions: long loops complete, continue_as_new keeps each run's replay bounded,
and what an execution would store past its limits is refused with an error that says so."""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter
from datetime import timedelta

import dramatiq
import pytest
from dramatiq import Worker
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import PostgresBroker, migrate
from tests.apps import durable_app
from tests.durable.runs import take_run
from tests.support import (
    Effects,
    Processes,
    drop_schema,
    new_schema_name,
    rows,
    scalar,
    wait_until,
)
from zart_dramatiq.middleware import middleware_for
from zart_dramatiq.run import current_run
from zart_dramatiq.signals import Refused


def with_limits(broker: dramatiq.Broker, **limits: int) -> None:
    """Install a DurableMiddleware with these limits (before any durable actor is declared)."""
    middleware = zart.DurableMiddleware(limits=zart.Limits(**limits))
    broker.add_middleware(middleware, before=type(broker.middleware[0]))


def count_rows(db, schema: str, table: str, execution_id: str) -> int:
    """Rows of ``table`` (steps or events) that belong to the execution."""
    query = "SELECT count(*) FROM {s}." + table + " WHERE execution_id = %s"
    return int(scalar(db, schema, query, execution_id))


def add(i: int) -> int:
    return i


# -- Long loops ----------------------------------------------------------------------------


def test_a_loop_of_ten_thousand_steps_completes_in_one_run(broker, worker, db, schema) -> None:
    @zart.durable(max_retries=0)
    def tally(n: int) -> int:
        return sum(zart.step("add", add, i) for i in range(n))

    handle = zart.start(tally, 10_000, execution_id="tally")
    assert handle.result(timeout=120) == sum(range(10_000))
    info = zart.get_execution("tally")
    # One run, no replay; the journal holds exactly the default limit's worth of entries.
    assert (info.runs, info.generation) == (1, 0)
    assert count_rows(db, schema, "steps", "tally") == 10_000 == zart.Limits().journal_entries


#: Iterations per generation of the sleeping loop.
EVERY = 50


def test_a_loop_of_a_thousand_sleeps_loads_a_bounded_journal_at_every_run(
    broker, worker, db, schema
) -> None:
    loaded: list[tuple[int, int]] = []

    @zart.durable(max_retries=0)
    def ticker(done: int, total: int) -> int:
        # What this run loaded at its start: the journal of its generation only.
        loaded.append((len(current_run().journal), count_rows(db, schema, "steps", "ticks")))
        for _ in range(min(EVERY, total - done)):
            zart.sleep("tick", timedelta(milliseconds=1))
            done += 1
        if done < total:
            zart.continue_as_new(done, total)
        return done

    handle = zart.start(ticker, 0, 1000, execution_id="ticks")
    assert handle.result(timeout=300) == 1000
    info = zart.get_execution("ticks")
    assert info.generation == 1000 // EVERY - 1
    assert info.input == {"args": [1000 - EVERY, 1000], "kwargs": {}}
    # Each sleep is a run of its own: without continue_as_new the last ones would load 999.
    assert len(loaded) == info.runs >= 1000
    assert max(journal for journal, _ in loaded) == EVERY
    assert max(steps for _, steps in loaded) == EVERY
    assert count_rows(db, schema, "steps", "ticks") == EVERY


# -- continue_as_new -------------------------------------------------------------------------


def test_continue_as_new_keeps_the_id_and_the_inbox_and_replaces_the_input(
    broker, worker, cli, db, schema
) -> None:
    @zart.durable(max_retries=0)
    def relay(generation: int, seen: list[int]) -> list[int]:
        seen = [*seen, zart.wait_for_event("item")]
        if generation < 2:
            zart.continue_as_new(generation + 1, seen)
        return seen

    handle = zart.start(relay, 0, [], execution_id="relay")
    # Two events sent at once: the second waits in the inbox through a continue_as_new.
    zart.send_event("relay", "item", 1, key="item-1")
    zart.send_event("relay", "item", 2, key="item-2")

    def last_generation_waits() -> bool:
        info = zart.get_execution("relay")
        return (info.generation, info.status) == (2, "waiting")

    wait_until(last_generation_waits, timeout=15, message="generation 2 to wait")
    zart.send_event("relay", "item", 3, key="item-3")
    assert not zart.send_event("relay", "item", 1, key="item-1")  # a key consumed long ago
    assert handle.result(timeout=15) == [1, 2, 3]

    info = zart.get_execution("relay")
    assert (info.status, info.generation) == ("completed", 2)
    assert info.input == {"args": [2, [1, 2]], "kwargs": {}}
    # The journal is the last generation's; consumed events stay consumed, keys still dedupe.
    assert [step.key for step in info.steps] == ["event:item"]
    assert count_rows(db, schema, "events", "relay") == 3
    query = "SELECT count(*) FROM {s}.events WHERE execution_id = %s AND consumed_by IS NULL"
    assert scalar(db, schema, query, "relay") == 0
    # The start is still recognised by its original input.
    assert zart.start(relay, 0, [], execution_id="relay").result(timeout=5) == [1, 2, 3]

    assert cli.json("executions", "show", "relay")["generation"] == 2
    assert "generation   2" in cli.ok("executions", "show", "relay")


def test_continue_as_new_inside_a_step_fails_naming_the_step(broker, worker) -> None:
    @zart.durable(max_retries=0)
    def nested(generation: int) -> int:
        again = zart.Retry.fixed(5, timedelta(0))
        zart.step("inner", lambda: zart.continue_as_new(generation + 1), retry=again)
        return generation

    handle = zart.start(nested, 0, execution_id="nested")
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    assert failure.value.error is not None
    assert failure.value.error["type"].endswith("NotAllowedInStep")
    assert "inside step 'inner'" in failure.value.error["message"]
    info = zart.get_execution("nested")
    # No retry policy can get past it: the step failed at its first attempt.
    assert [(step.key, step.status, step.attempts) for step in info.steps] == [
        ("step:inner", "failed", 1)
    ]
    assert info.generation == 0


def test_continue_as_new_is_fenced_and_happens_once(broker, db, schema) -> None:
    @zart.durable
    def loop(generation: int) -> int:
        return generation

    zart.start(loop, 0, execution_id="once")
    store = middleware_for(broker).store
    # A run by a worker presumed lost (no worker row), then a takeover by another run.
    stale = take_run(broker, "once", uuid.uuid4(), actor=loop)
    current = take_run(broker, "once", broker.worker_id, actor=loop)
    current.record("step:kept", kind="step", name="kept", fn="f", status="completed", result=1)

    with pytest.raises(Refused, match="taken over"):
        store.atomically(lambda tx: stale.continue_as_new(tx, (7,), {}))
    store.atomically(lambda tx: current.continue_as_new(tx, (1,), {}))
    # The same run again (a replay of a commit that happened): refused, not doubled.
    with pytest.raises(Refused):
        store.atomically(lambda tx: current.continue_as_new(tx, (2,), {}))

    info = zart.get_execution("once")
    assert (info.status, info.generation, info.input["args"]) == ("pending", 1, [1])
    assert info.steps == ()
    # The next generation's first message: the new input, and the new wake sequence.
    [(payload,)] = rows(db, schema, "SELECT payload FROM {s}.messages ORDER BY id DESC LIMIT 1")
    first = dramatiq.Message.decode(payload)
    assert (list(first.args), first.options["zart_seq"]) == ([1], 1)


def test_continue_as_new_where_messages_commit_apart_from_checkpoints(
    database_url: str, schema: str, broker
) -> None:
    # A PostgresBroker in another schema: the next generation's message is sent after the commit.
    elsewhere = new_schema_name()
    migrate(database_url, schema=elsewhere)
    other = PostgresBroker(database_url, schema=elsewhere)
    other.add_middleware(
        zart.DurableMiddleware(database_url, schema=schema), before=type(other.middleware[0])
    )
    other.emit_after("process_boot")
    worker = Worker(other, worker_timeout=100, worker_threads=2)
    worker.start()
    try:

        @zart.durable(broker=other, max_retries=0)
        def countdown(n: int) -> str:
            zart.step("tick", add, n)
            if n > 0:
                zart.continue_as_new(n - 1)
            return "liftoff"

        assert not middleware_for(other).transport.atomic
        handle = zart.start(countdown, 3, execution_id="countdown")
        assert handle.result(timeout=15) == "liftoff"
        assert zart.get_execution("countdown", broker=other).generation == 3
    finally:
        worker.stop()
        other.close()
        drop_schema(database_url, elsewhere)


# -- Limits ----------------------------------------------------------------------------------


def test_a_journal_past_its_limit_fails_the_execution_naming_the_way_out(
    broker, start_worker, db, schema, effects: Effects
) -> None:
    with_limits(broker, journal_entries=5)

    @zart.durable
    def endless() -> None:
        for i in range(8):
            zart.step("s", effects, f"s{i}")

    start_worker(broker)
    handle = zart.start(endless, execution_id="endless")
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    error = failure.value.error
    assert error is not None and error["type"].endswith("JournalTooLarge")
    assert "cannot record step:s#6" in error["message"]
    assert "holds 5 entries" in error["message"]
    assert "Limits.journal_entries = 5" in error["message"]
    assert "zart.continue_as_new" in error["message"]
    # Refused before the sixth step ran or was written; deterministic, so not retried.
    assert [effects[f"s{i}"] for i in range(8)] == [1] * 5 + [0] * 3
    assert count_rows(db, schema, "steps", "endless") == 5
    assert zart.get_execution("endless").runs == 1


def test_the_journal_limit_counts_per_generation(broker, start_worker) -> None:
    with_limits(broker, journal_entries=5)

    @zart.durable(max_retries=0)
    def chunked(done: int) -> int:
        for _ in range(min(4, 12 - done)):
            done = zart.step("s", add, done + 1)
        if done < 12:
            zart.continue_as_new(done)
        return done

    start_worker(broker)
    assert zart.start(chunked, 0, execution_id="chunked").result(timeout=15) == 12
    assert zart.get_execution("chunked").generation == 2


def test_a_step_result_past_the_limit_fails_the_step_once_naming_the_way_out(
    broker, start_worker, effects: Effects
) -> None:
    with_limits(broker, payload_bytes=1000)

    def export() -> str:
        effects("export")
        return "x" * 2000

    def export_elsewhere() -> str:
        effects("export-elsewhere")
        return "s3://reports/2026.csv"  # the data stored elsewhere, and a reference to it

    exports = {"report": export}

    @zart.durable(retry_when=lambda retries, error: retries < 3)
    def report() -> str:
        return zart.step("export", exports["report"], retry=zart.Retry.fixed(3, timedelta(0)))

    start_worker(broker)
    handle = zart.start(report, execution_id="report")
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    error = failure.value.error
    assert error is not None and error["type"].endswith("StepResultTooLarge")
    message = error["message"]
    assert "step 'export' returned 2002 bytes of JSON, over the limit of 1000" in message
    assert "return a reference" in message and "Limits(payload_bytes=" in message
    # The function ran once: neither the step's policy nor Dramatiq's retries repeat it.
    assert effects["export"] == 1
    [step] = zart.get_execution("report").steps
    assert (step.status, step.result) == ("failed", None)
    assert step.error is not None and step.error["type"] == error["type"]

    # The way out: return a reference instead, then retry; the failed step runs again.
    exports["report"] = export_elsewhere
    zart.retry("report")
    assert handle.result(timeout=15) == "s3://reports/2026.csv"
    assert (effects["export"], effects["export-elsewhere"]) == (1, 1)


def test_an_input_or_event_past_the_limit_is_refused_before_anything_is_written(
    broker, start_worker, db, schema
) -> None:
    with_limits(broker, payload_bytes=100)

    @zart.durable
    def inbox(note: str) -> str:
        return str(zart.wait_for_event("go"))

    def count(table: str) -> int:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        return int(db.execute(query).fetchone()[0])

    with pytest.raises(zart.PayloadTooLarge, match="the input of inbox is 109 bytes of JSON"):
        zart.start(inbox, "x" * 100, execution_id="big")
    with pytest.raises(zart.PayloadTooLarge, match="over the limit of 100"):
        inbox.send("x" * 100)
    assert (count("executions"), count("messages")) == (0, 0)

    start_worker(broker)
    handle = zart.start(inbox, "small", execution_id="small")
    with pytest.raises(zart.PayloadTooLarge, match="the payload of event 'go' is 202 bytes"):
        zart.send_event("small", "go", "y" * 200)
    assert count("events") == 0
    zart.send_event("small", "go", "y")
    assert handle.result(timeout=15) == "y"


# -- Crashes -----------------------------------------------------------------------------------

#: The worker app these tests crash and restart.
DURABLE_APP = "tests.apps.durable_app"


@pytest.fixture
def generations(broker, db, schema: str) -> zart.DurableActor:
    durable_app.create_tables(db, schema)
    return durable_app.declare(broker)["generations"]


def app_effects(db, schema: str, execution_id: str) -> Counter[str]:
    query = "SELECT name FROM {s}.test_effects WHERE execution_id = %s"
    return Counter(name for (name,) in rows(db, schema, query, execution_id))


def start_app_worker(processes: Processes) -> subprocess.Popen[bytes]:
    return processes.dramatiq_worker(DURABLE_APP, threads=4)


def test_a_worker_killed_right_after_continue_as_new_commits(
    processes, generations, db, schema
) -> None:
    worker = start_app_worker(processes)
    # Generation 1's worker SIGKILLs itself the instant its continue_as_new has committed.
    handle = zart.start(generations, "cut", 0, 3, -1, 1, execution_id="cut")
    wait_until(lambda: worker.poll() is not None, timeout=30, message="the worker to die")
    info = zart.get_execution("cut")
    assert (info.generation, info.input["args"]) == (2, ["cut", 2, 3, -1, 1])

    start_app_worker(processes)
    assert handle.result(timeout=30) == "g3"
    assert zart.get_execution("cut").generation == 3
    # Nothing was in flight at the kill: every generation's step ran once.
    assert app_effects(db, schema, "cut") == Counter({"g0": 1, "g1": 1, "g2": 1, "g3": 1})


def test_a_worker_killed_in_the_next_generation(processes, generations, db, schema) -> None:
    worker = start_app_worker(processes)
    handle = zart.start(generations, "next", 0, 3, 2, -1, execution_id="next")
    wait_until(
        lambda: app_effects(db, schema, "next")["g2"] == 1, timeout=30, message="generation 2"
    )
    processes.kill(worker)
    assert zart.get_execution("next").generation == 2

    start_app_worker(processes)
    db.execute(sql.SQL("INSERT INTO {}.test_gates VALUES ('g2')").format(sql.Identifier(schema)))
    assert handle.result(timeout=30) == "g3"
    # Generations that committed never ran again; only the step in flight at the kill did.
    assert zart.get_execution("next").generation == 3
    assert app_effects(db, schema, "next") == Counter({"g0": 1, "g1": 1, "g2": 2, "g3": 1})
