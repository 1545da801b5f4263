"""Child executions: ``zart.start_child``, waiting for them, and how they end with their parent."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from pydantic import BaseModel

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from tests.support import Effects, require_redis, rows, scalar, wait_until


class Receipt(BaseModel):
    order: int
    day: date


def status_of(execution_id: str, broker: dramatiq.Broker | None = None) -> str | None:
    """The execution's status, or None while it does not exist."""
    try:
        return zart.get_execution(execution_id, broker=broker).status
    except zart.UnknownExecution:
        return None


def wait_for_status(
    execution_id: str, status: str, *, broker: dramatiq.Broker | None = None
) -> None:
    wait_until(
        lambda: status_of(execution_id, broker) == status,
        timeout=20,
        message=lambda: (
            f"{execution_id!r} to be {status} (it is {status_of(execution_id, broker)})"
        ),
    )


def children_of(db: psycopg.Connection, schema: str, parent_id: str) -> list[tuple[str, str]]:
    """(id, status) of every execution whose parent is ``parent_id``."""
    query = "SELECT id, status FROM {s}.executions WHERE parent_id = %s ORDER BY id"
    return [(row[0], row[1]) for row in rows(db, schema, query, parent_id)]


# --- Starting a child and waiting for its result ---------------------------------------------


def test_a_child_result_comes_back_typed_while_the_parent_holds_no_thread(
    broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    inside: list[zart.ExecutionContext] = []
    seen: list[Any] = []

    @zart.durable
    def make_receipt(order: int) -> Receipt:
        inside.append(zart.context())
        return Receipt(order=order, day=date(2026, 11, order))

    @zart.durable
    def due_date(order: int) -> date:
        return date(2026, 12, order)

    @zart.durable
    def checkout(order: int) -> str:
        receipt = zart.start_child(make_receipt, order)
        assert receipt.execution_id == f"{zart.context().execution_id}/child:make_receipt"
        value = receipt.result()
        due = zart.start_child(due_date, order).result()
        seen.append((value, due))
        return f"{value.order}:{value.day.isoformat()}:{due.isoformat()}"

    # One thread: a parent that held it while waiting would leave none for its children.
    start_worker(broker, threads=1)
    handle = zart.start(checkout, 7, execution_id="checkout-7")
    assert handle.result(timeout=20) == "7:2026-11-07:2026-12-07"
    value, due = seen[-1]
    assert isinstance(value, Receipt) and value == Receipt(order=7, day=date(2026, 11, 7))
    assert isinstance(due, date) and due == date(2026, 12, 7)

    child_id = "checkout-7/child:make_receipt"
    assert [c.parent_id for c in inside] == ["checkout-7"]
    assert inside[0].execution_id == child_id
    child = zart.get_execution(child_id)
    assert (child.parent_id, child.detached, child.status) == ("checkout-7", False, "completed")
    assert zart.get_handle(child_id).result(timeout=5) == Receipt(order=7, day=date(2026, 11, 7))

    parent = zart.get_execution("checkout-7")
    assert parent.parent_id is None
    assert [(c.id, c.actor_name, c.status, c.step_key, c.detached) for c in parent.children] == [
        (child_id, "make_receipt", "completed", "child:make_receipt", False),
        ("checkout-7/child:due_date", "due_date", "completed", "child:due_date", False),
    ]
    entries = {s.key: (s.kind, s.status) for s in parent.steps}
    assert entries == {
        "child:make_receipt": ("child", "completed"),
        "child:due_date": ("child", "completed"),
    }


def test_a_replay_does_not_start_the_child_again_and_replays_its_result(
    broker: PostgresBroker, worker: Worker, effects: Effects, db: psycopg.Connection, schema: str
) -> None:
    seen: list[date] = []

    @zart.durable
    def child(day: int) -> date:
        effects("child body")
        return date(2026, 11, day)

    @zart.durable
    def parent(day: int) -> str:
        value = zart.start_child(child, day).result()
        seen.append(value)
        zart.sleep("nap", timedelta(milliseconds=50))
        return value.isoformat()

    handle = zart.start(parent, 29, execution_id="replayed")
    assert handle.result(timeout=20) == "2026-11-29"
    # Run 1 starts the child and waits; run 2 reads its result and sleeps; run 3
    # replays both (the child's result from the journal, typed) and returns.
    assert zart.get_execution("replayed").runs == 3
    assert seen == [date(2026, 11, 29), date(2026, 11, 29)]
    assert effects["child body"] == 1
    assert children_of(db, schema, "replayed") == [("replayed/child:child", "completed")]
    assert zart.get_execution("replayed/child:child").runs == 1


def test_repeated_children_of_one_actor_get_their_own_ids(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable
    def square(n: int) -> int:
        return n * n

    @zart.durable
    def parent() -> list[int]:
        handles = [zart.start_child(square, n) for n in (2, 3)]
        named = zart.start_child(square, 4, execution_id="square-of-4")
        return [h.result() for h in [*handles, named]]

    assert zart.start(parent, execution_id="squares").result(timeout=20) == [4, 9, 16]
    children = zart.get_execution("squares").children
    assert sorted((c.id, c.step_key) for c in children) == [
        ("square-of-4", "child:square#3"),
        ("squares/child:square", "child:square"),
        ("squares/child:square#2", "child:square#2"),
    ]


def test_each_generation_of_a_parent_starts_and_waits_for_its_own_children(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable
    def waits(n: int) -> int:
        return n + int(zart.wait_for_event("go")["v"])

    @zart.durable
    def loop(n: int) -> int:
        child = zart.start_child(waits, n)  # the same journal key in each generation
        if n == 0:
            zart.continue_as_new(1)  # without waiting: that child lives on
        return child.result()  # type: ignore[no-any-return]

    handle = zart.start(loop, 0, execution_id="gens")
    first, second = "gens/child:waits", "gens/gen1/child:waits"
    for execution_id in (first, second, "gens"):
        wait_for_status(execution_id, "waiting")
    assert zart.get_execution(second).input == {"args": [1], "kwargs": {}}
    # The first generation's child ends first: its outcome is not the second's.
    zart.send_event(first, "go", {"v": 100})
    assert zart.get_handle(first).result(timeout=20) == 100
    assert status_of("gens") == "waiting"
    zart.send_event(second, "go", {"v": 10})
    assert handle.result(timeout=20) == 11
    children = {c.id: (c.step_key, c.status) for c in zart.get_execution("gens").children}
    assert children == {
        first: ("child:waits", "completed"),
        second: ("child:waits", "completed"),
    }


# --- A child that fails, is cancelled or times out ------------------------------------------------


def test_a_failed_child_raises_its_error_in_the_parent_which_can_fall_back(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable(max_retries=0)
    def fragile(n: int) -> int:
        raise ValueError(f"cannot take {n}")

    @zart.durable
    def parent() -> str:
        try:
            return str(zart.start_child(fragile, 3).result())
        except ValueError as error:
            return f"fallback after: {error}"

    handle = zart.start(parent, execution_id="falls-back")
    assert handle.result(timeout=20) == "fallback after: cannot take 3"
    child = zart.get_execution("falls-back/child:fragile")
    assert child.status == "failed" and child.error is not None
    assert child.error["type"].endswith("ValueError")
    [entry] = zart.get_execution("falls-back").steps
    assert (entry.key, entry.status) == ("child:fragile", "failed")


def test_a_failed_child_fails_a_parent_that_does_not_catch_it(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable(max_retries=0)
    def fragile() -> int:
        raise KeyError("missing")

    @zart.durable
    def parent() -> int:
        return int(zart.start_child(fragile).result())

    with pytest.raises(zart.ExecutionFailed) as failure:
        zart.start(parent, execution_id="fails-too").result(timeout=20)
    assert failure.value.status == "failed"
    assert failure.value.error is not None and failure.value.error["type"].endswith("KeyError")
    # Recorded: the parent failed at once, not after Dramatiq's retries.
    assert zart.get_execution("fails-too").runs == 2


def test_cancelling_a_child_wakes_its_parent_with_execution_failed(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable
    def waits() -> str:
        return str(zart.wait_for_event("never"))

    @zart.durable
    def parent() -> str:
        try:
            return zart.start_child(waits).result()  # type: ignore[no-any-return]
        except zart.ExecutionFailed as failure:
            return f"{failure.execution_id} {failure.status}"

    handle = zart.start(parent, execution_id="abandoned")
    wait_for_status("abandoned/child:waits", "waiting")
    wait_for_status("abandoned", "waiting")
    assert zart.cancel("abandoned/child:waits") == "waiting"
    assert handle.result(timeout=20) == "abandoned/child:waits cancelled"


def test_a_child_that_times_out_raises_execution_failed_in_its_parent(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable(timeout=timedelta(milliseconds=300))
    def slow() -> str:
        return str(zart.wait_for_event("never"))

    @zart.durable
    def parent() -> str:
        try:
            return zart.start_child(slow).result()  # type: ignore[no-any-return]
        except zart.ExecutionFailed as failure:
            assert failure.error is not None
            return f"{failure.status} {failure.error['type']}"

    assert zart.start(parent).result(timeout=20) == "timed_out ExecutionTimeout"


# --- Ending with the parent -------------------------------------------------------------------


def test_cancelling_the_parent_cancels_attached_descendants_not_detached_children(
    broker: PostgresBroker, worker: Worker, db: psycopg.Connection, schema: str
) -> None:
    @zart.durable
    def grandchild() -> str:
        return str(zart.wait_for_event("go"))

    @zart.durable
    def attached() -> str:
        return zart.start_child(grandchild).result()  # type: ignore[no-any-return]

    @zart.durable
    def independent() -> str:
        return str(zart.wait_for_event("go")["v"])

    @zart.durable
    def parent() -> str:
        first = zart.start_child(attached)
        second = zart.start_child(independent, detached=True)
        return f"{first.result()} {second.result()}"

    attached_id = "tree/child:attached"
    grandchild_id = f"{attached_id}/child:grandchild"
    detached_id = "tree/child:independent"
    zart.start(parent, execution_id="tree")
    for execution_id in ("tree", attached_id, grandchild_id, detached_id):
        wait_for_status(execution_id, "waiting")
    # Four waits with no deadline: four parked messages.
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 4

    assert zart.cancel("tree") == "waiting"
    # In the cancel's own transaction: the parent and its attached descendants,
    # with their pending wake-ups. The detached child lives on.
    assert [status_of(e) for e in ("tree", attached_id, grandchild_id, detached_id)] == [
        "cancelled",
        "cancelled",
        "cancelled",
        "waiting",
    ]
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 1
    with pytest.raises(zart.ExecutionFailed, match="cancelled"):
        zart.get_handle(grandchild_id).result(timeout=5)

    zart.send_event(detached_id, "go", {"v": "lives on"})
    assert zart.get_handle(detached_id).result(timeout=20) == "lives on"
    assert status_of("tree") == "cancelled"
    children = {c.id: (c.status, c.detached) for c in zart.get_execution("tree").children}
    assert children == {attached_id: ("cancelled", False), detached_id: ("completed", True)}
    assert zart.get_execution(detached_id).detached is True


def test_a_parent_that_ends_cancels_the_attached_children_it_did_not_wait_for(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable
    def waits() -> str:
        return str(zart.wait_for_event("go"))

    @zart.durable
    def parent() -> str:
        zart.start_child(waits)
        zart.start_child(waits, detached=True)
        zart.wait_for_event("done")
        return "done"

    handle = zart.start(parent, execution_id="quits")
    wait_for_status("quits/child:waits", "waiting")
    wait_for_status("quits/child:waits#2", "waiting")
    wait_for_status("quits", "waiting")
    zart.send_event("quits", "done", {})
    assert handle.result(timeout=20) == "done"
    assert status_of("quits/child:waits") == "cancelled"
    assert status_of("quits/child:waits#2") == "waiting"


def test_retrying_a_cancelled_parent_resumes_the_children_its_cancel_ended(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable
    def waits() -> str:
        return str(zart.wait_for_event("go")["v"])

    @zart.durable
    def parent() -> str:
        return zart.start_child(waits).result()  # type: ignore[no-any-return]

    handle = zart.start(parent, execution_id="again")
    wait_for_status("again/child:waits", "waiting")
    wait_for_status("again", "waiting")
    zart.cancel("again")
    assert status_of("again/child:waits") == "cancelled"

    zart.retry("again")
    # The child its cancel ended runs again, and the parent waits for it again.
    wait_for_status("again/child:waits", "waiting")
    zart.send_event("again/child:waits", "go", {"v": "resumed"})
    assert handle.result(timeout=20) == "resumed"


FLAKY_CHILD = threading.Event()


def test_retrying_a_parent_failed_by_its_child_retries_the_child(
    broker: PostgresBroker, worker: Worker, effects: Effects
) -> None:
    @zart.durable(max_retries=0)
    def flaky() -> str:
        effects("flaky")
        if not FLAKY_CHILD.is_set():
            raise ValueError("not yet")
        return "fixed"

    @zart.durable
    def parent() -> str:
        return zart.start_child(flaky).result()  # type: ignore[no-any-return]

    FLAKY_CHILD.clear()
    handle = zart.start(parent, execution_id="heal")
    with pytest.raises(zart.ExecutionFailed, match="not yet"):
        handle.result(timeout=20)
    FLAKY_CHILD.set()
    zart.retry("heal")
    assert handle.result(timeout=20) == "fixed"
    assert effects["flaky"] == 2
    assert status_of("heal/child:flaky") == "completed"


# --- Deadlines ----------------------------------------------------------------------------------


def test_a_child_inherits_its_parents_deadline_unless_it_has_a_timeout(
    broker: PostgresBroker, worker: Worker
) -> None:
    @zart.durable
    def inherits() -> str:
        return str(zart.wait_for_event("go"))

    @zart.durable(timeout=timedelta(hours=3))
    def own_timeout() -> str:
        return str(zart.wait_for_event("go"))

    @zart.durable(timeout=timedelta(hours=1))
    def parent() -> str:
        first, second = zart.start_child(inherits), zart.start_child(own_timeout)
        zart.start_child(inherits, detached=True)
        return f"{first.result()} {second.result()}"

    zart.start(parent, execution_id="bounded")
    wait_for_status("bounded/child:inherits", "waiting")
    wait_for_status("bounded/child:own_timeout", "waiting")
    wait_for_status("bounded/child:inherits#2", "waiting")
    deadline = zart.get_execution("bounded").deadline
    assert deadline is not None
    assert zart.get_execution("bounded/child:inherits").deadline == deadline
    own = zart.get_execution("bounded/child:own_timeout").deadline
    assert own is not None and own > deadline + timedelta(hours=1)
    # A detached child lives on: the parent's deadline is not its own.
    assert zart.get_execution("bounded/child:inherits#2").deadline is None
    zart.cancel("bounded")
    zart.cancel("bounded/child:inherits#2")


def test_a_parent_that_times_out_cancels_its_child(
    broker: PostgresBroker, worker: Worker, db: psycopg.Connection, schema: str
) -> None:
    @zart.durable(timeout=timedelta(hours=1))
    def long_child() -> str:
        return str(zart.wait_for_event("go"))

    @zart.durable
    def inheriting_child() -> str:
        return str(zart.wait_for_event("go"))

    @zart.durable(timeout=timedelta(seconds=2))
    def parent() -> str:
        first = zart.start_child(long_child)
        second = zart.start_child(inheriting_child)
        return f"{first.result()} {second.result()}"

    handle = zart.start(parent, execution_id="hurried")
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=20)
    assert failure.value.status == "timed_out"
    # Its own timeout is later: the parent's end cancelled it.
    assert status_of("hurried/child:long_child") == "cancelled"
    # It shares the parent's deadline: it timed out itself, or the parent's end cancelled it.
    assert status_of("hurried/child:inheriting_child") in ("cancelled", "timed_out")
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages WHERE state = 'parked'") == 0


# --- Bad input ----------------------------------------------------------------------------------


def test_a_non_durable_child_fails_the_parent_at_once_writing_nothing(
    broker: PostgresBroker, worker: Worker, db: psycopg.Connection, schema: str
) -> None:
    @dramatiq.actor
    def plain_actor(n: int) -> int:
        return n

    @zart.durable
    def parent() -> int:
        return int(zart.start_child(plain_actor, 1).result())  # type: ignore[arg-type]

    with pytest.raises(zart.ExecutionFailed) as failure:
        zart.start(parent, execution_id="misuse").result(timeout=20)
    error = failure.value.error
    assert failure.value.status == "failed" and error is not None
    assert error["type"].endswith("TypeError") and "plain_actor" in error["message"]
    assert zart.get_execution("misuse").runs == 1  # not retried by Dramatiq
    assert scalar(db, schema, "SELECT count(*) FROM {s}.executions") == 1
    assert zart.get_execution("misuse").steps == ()
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


def test_an_explicit_child_id_taken_with_another_input_is_a_conflict_writing_nothing(
    broker: PostgresBroker, worker: Worker, db: psycopg.Connection, schema: str
) -> None:
    @zart.durable
    def double(n: int) -> int:
        return 2 * n

    @zart.durable
    def parent() -> int:
        return int(zart.start_child(double, 2, execution_id="taken").result())

    assert zart.start(double, 1, execution_id="taken").result(timeout=20) == 2
    with pytest.raises(zart.ExecutionFailed) as failure:
        zart.start(parent, execution_id="conflicted").result(timeout=20)
    error = failure.value.error
    assert error is not None and error["type"].endswith("ExecutionConflict")
    assert "'taken'" in error["message"]
    assert zart.get_execution("conflicted").runs == 1
    assert zart.get_execution("conflicted").steps == ()
    taken = zart.get_execution("taken")
    assert (taken.parent_id, taken.input, taken.result) == (None, {"args": [1], "kwargs": {}}, 2)
    assert scalar(db, schema, "SELECT count(*) FROM {s}.executions") == 2
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


# --- Cancel racing a start ----------------------------------------------------------------------


@contextmanager
def row_locked(database_url: str, schema: str, execution_id: str) -> Iterator[int]:
    """Hold ``execution_id``'s row FOR UPDATE in a transaction of its own; yield its backend pid."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            psycopg.sql.SQL("SELECT id FROM {}.executions WHERE id = %s FOR UPDATE").format(
                psycopg.sql.Identifier(schema)
            ),
            (execution_id,),
        )
        yield conn.info.backend_pid
        conn.rollback()


def lock_waiters(db: psycopg.Connection) -> list[str]:
    """What each session waiting for a lock in this database does: 'start' or 'cancel'.

    A cancel waits in its own statement; a child's start, in the body's lock of its
    execution's row. Anything else is returned as its query, to fail loudly.
    """
    found = db.execute(
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    ).fetchall()
    kinds = []
    for (query,) in found:
        if "SET status = 'cancelled'" in query:
            kinds.append("cancel")
        elif "executions" in query and "FOR UPDATE" in query:
            kinds.append("start")
        else:
            kinds.append(query)
    return sorted(kinds)


def wait_for_waiters(db: psycopg.Connection, expected: list[str]) -> None:
    wait_until(
        lambda: lock_waiters(db) == sorted(expected),
        timeout=20,
        message=lambda: f"lock waiters {expected} (now {lock_waiters(db)})",
    )


@pytest.mark.parametrize("first", ["start", "cancel"])
def test_cancelling_a_parent_while_it_starts_a_child_leaves_no_active_child(
    first: str,
    broker: PostgresBroker,
    worker: Worker,
    db: psycopg.Connection,
    schema: str,
    database_url: str,
) -> None:
    """The parent's row serialises the two: whichever takes it second sees the other's work.

    The test holds the parent's row, lets the body's start and the cancel queue behind
    it in the order ``first`` says (PostgreSQL grants a row's waiters in turn), then
    lets go.
    """
    at_gate, proceed = threading.Event(), threading.Event()
    stopped: list[BaseException] = []

    @zart.durable
    def child() -> str:
        return str(zart.wait_for_event("go"))

    @zart.durable
    def parent() -> str:
        at_gate.set()
        assert proceed.wait(30)
        try:
            handle = zart.start_child(child)
        except BaseException as stop:
            stopped.append(stop)
            raise
        return handle.result()  # type: ignore[no-any-return]

    zart.start(parent, execution_id="racing")
    assert at_gate.wait(20)
    outcome: list[str | BaseException] = []

    def cancel() -> None:
        try:
            outcome.append(zart.cancel("racing"))
        except BaseException as error:
            outcome.append(error)

    canceller = threading.Thread(target=cancel)
    with row_locked(database_url, schema, "racing"):
        if first == "start":
            proceed.set()
            wait_for_waiters(db, ["start"])
            canceller.start()
            wait_for_waiters(db, ["start", "cancel"])
        else:
            canceller.start()
            wait_for_waiters(db, ["cancel"])
            proceed.set()
            wait_for_waiters(db, ["cancel", "start"])
    canceller.join(20)
    # A cancel first in line finds the body running. One second in line may still find
    # it waiting for the child: the row is free for an instant between the body's start
    # and its wait, and a new lock request that finds it free does not queue.
    assert outcome == ["running"] or (first == "start" and outcome == ["waiting"]), outcome
    assert status_of("racing") == "cancelled"
    if first == "start":
        # Created first, then cancelled with its parent: it never runs past its first write.
        assert children_of(db, schema, "racing") == [("racing/child:child", "cancelled")]
    else:
        # The cancel came first: the body's start was refused, and nothing was created.
        wait_until(lambda: stopped, timeout=20, message="the body to stop")
        assert type(stopped[0]).__name__ == "Refused"
        assert children_of(db, schema, "racing") == []
    broker.join(child.queue_name, timeout=20_000)
    assert [status for _, status in children_of(db, schema, "racing")] in ([], ["cancelled"])


# --- Another broker -----------------------------------------------------------------------------


@pytest.fixture
def redis_broker(database_url: str, schema: str) -> Iterator[dramatiq.Broker]:
    require_redis()
    broker = RedisBroker(host="127.0.0.1", namespace=f"zart-test-{uuid.uuid4().hex[:8]}")
    broker.add_middleware(
        zart.DurableMiddleware(database_url, schema=schema, repair_after=timedelta(seconds=0.5)),
        before=type(broker.middleware[0]),
    )
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def test_a_child_on_the_redis_broker(redis_broker: dramatiq.Broker, effects: Effects) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"

    @zart.durable(broker=redis_broker, queue_name=queue)
    def child(day: int) -> date:
        effects("child")
        zart.sleep("nap", timedelta(milliseconds=50))
        return date(2026, 11, day)

    @zart.durable(broker=redis_broker, queue_name=queue)
    def parent(day: int) -> str:
        return zart.start_child(child, day).result().isoformat()  # type: ignore[no-any-return]

    worker = Worker(redis_broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        handle = zart.start(parent, 28, execution_id="on-redis")
        assert handle.result(timeout=30) == "2026-11-28"
        child_info = zart.get_execution("on-redis/child:child", broker=redis_broker)
        assert (child_info.parent_id, child_info.status) == ("on-redis", "completed")
        assert effects["child"] == 2  # before and after its sleep
    finally:
        worker.stop()
