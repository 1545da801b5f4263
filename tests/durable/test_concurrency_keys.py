"""Concurrency keys: at most N executions per key, admitted by priority then in order."""

from __future__ import annotations

import threading

import pytest

import zart_dramatiq as zart
from tests.support import Effects, rows, scalar, wait_until


def waits_for_slot(db, schema: str, execution_id: str) -> bool:
    return bool(
        scalar(
            db,
            schema,
            "SELECT slot_waiting_since IS NOT NULL FROM {s}.executions WHERE id = %s",
            execution_id,
        )
    )


def declare_gated(scope: str, effects: Effects):
    """An actor limited to one execution per customer that waits for an event midway."""

    @zart.durable(
        actor_name=f"gated_{scope}",
        concurrency=zart.Limit(key=lambda customer, order: customer, max=1, scope=scope),
    )
    def gated(customer: str, order: int) -> int:
        zart.step("reserve", lambda: effects(f"reserve-{order}"))
        zart.wait_for_event("go")
        zart.step("ship", lambda: effects(f"ship-{order}"))
        return order

    return gated


def test_an_open_slot_is_held_through_waits_and_passed_on_at_the_end(
    broker, worker, db, schema, effects
) -> None:
    gated = declare_gated("open", effects)
    first = zart.start(gated, "acme", 1, execution_id="o-1")
    wait_until(lambda: first.status() == "waiting", message="the first to wait")
    second = zart.start(gated, "acme", 2, execution_id="o-2")
    other = zart.start(gated, "globex", 3, execution_id="o-3")
    wait_until(lambda: waits_for_slot(db, schema, "o-2"), message="the second to queue")
    # Another key is not held up.
    wait_until(lambda: other.status() == "waiting", message="another key's execution")
    assert second.status() == "pending" and effects["reserve-2"] == 0

    zart.send_event("o-1", "go", None)
    assert first.result(timeout=15) == 1
    wait_until(lambda: second.status() == "waiting", message="the second's admission")
    zart.send_event("o-2", "go", None)
    zart.send_event("o-3", "go", None)
    assert (second.result(timeout=15), other.result(timeout=15)) == (2, 3)


def test_a_running_slot_is_given_back_while_the_execution_waits(broker, worker, effects) -> None:
    gated = declare_gated("running", effects)
    handles = [zart.start(gated, "acme", n, execution_id=f"r-{n}") for n in range(3)]
    wait_until(lambda: all(h.status() == "waiting" for h in handles), message="all three to wait")
    for n in range(3):
        zart.send_event(f"r-{n}", "go", None)
    assert [h.result(timeout=15) for h in handles] == [0, 1, 2]


def test_waiters_are_admitted_by_priority_then_in_order(broker, worker, db, schema) -> None:
    started: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> None:
        with lock:
            started.append(name)

    @zart.durable(concurrency=zart.Limit(key=lambda name: "one", max=1))
    def job(name: str) -> str:
        zart.step("start", record, name)
        zart.wait_for_event("go")
        return name

    zart.start(job, "holder", execution_id="holder")
    wait_until(lambda: started == ["holder"], message="the holder to start")
    for name, priority in [("late", 5), ("urgent", 1), ("normal", 3), ("normal-2", 3)]:
        zart.start_with_options(job, args=(name,), execution_id=name, priority=priority)
        wait_until(lambda n=name: waits_for_slot(db, schema, n), message=f"{name} to queue")

    order = ["urgent", "normal", "normal-2", "late"]
    for name in ["holder", *order]:
        wait_until(lambda n=name: zart.get_execution(n).status == "waiting", message=name)
        zart.send_event(name, "go", None)
        assert zart.get_handle(name).result(timeout=15) == name
    assert started == ["holder", *order]


def test_cancelling_a_holder_admits_the_next(broker, worker, db, schema, effects) -> None:
    gated = declare_gated("open", effects)
    zart.start(gated, "acme", 1, execution_id="c-1")
    wait_until(lambda: zart.get_execution("c-1").status == "waiting", message="the holder")
    zart.start(gated, "acme", 2, execution_id="c-2")
    wait_until(lambda: waits_for_slot(db, schema, "c-2"), message="the waiter to queue")
    zart.cancel("c-1")
    wait_until(lambda: zart.get_execution("c-2").status == "waiting", message="its admission")
    assert rows(db, schema, "SELECT key, max FROM {s}.concurrency_keys") == [("acme", 1)]


def test_a_retried_execution_asks_for_a_slot_again(broker, worker, db, schema, effects) -> None:
    gated = declare_gated("open", effects)
    zart.start(gated, "acme", 1, execution_id="t-1")
    wait_until(lambda: zart.get_execution("t-1").status == "waiting", message="the holder")
    zart.cancel("t-1")
    zart.start(gated, "acme", 2, execution_id="t-2")
    wait_until(lambda: zart.get_execution("t-2").status == "waiting", message="the next")
    zart.retry("t-1")
    wait_until(lambda: waits_for_slot(db, schema, "t-1"), message="the retried one to queue")
    zart.send_event("t-2", "go", None)
    wait_until(lambda: zart.get_execution("t-1").status == "waiting", message="its admission")


def test_bad_limits_and_keys_are_refused_with_what_to_do(broker) -> None:
    with pytest.raises(ValueError, match=r"max=.*>= 1"):
        zart.Limit(key=lambda x: x, max=0)
    with pytest.raises(ValueError, match="'open' or 'running'"):
        zart.Limit(key=lambda x: x, scope="always")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="function of the actor's input"):
        zart.Limit(key="customer")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"zart.Limit"):
        zart.durable(concurrency=3)  # type: ignore[call-overload]

    @zart.durable(concurrency=zart.Limit(key=lambda order: order["customer"]))
    def picky(order: dict) -> None:
        pass

    with pytest.raises(zart.ConcurrencyKeyError, match=r"concurrency key of picky.*KeyError"):
        zart.start(picky, {"id": 1}, execution_id="p-1")
    with pytest.raises(zart.UnknownExecution):
        zart.get_execution("p-1")  # nothing was written
    with pytest.raises(TypeError, match="priority must be a whole number"):
        zart.start_with_options(picky, args=({"customer": "a"},), priority="high")  # type: ignore[arg-type]


def test_two_worker_processes_never_exceed_the_limit_and_serve_every_key(
    processes, broker, db, schema
) -> None:
    """500 executions over 10 keys, 2 processes x 8 threads: at most 2 open per key."""
    from tests.apps import limits_app

    limits_app.create_tables(db, schema)
    limited = limits_app.declare(broker)
    for _ in range(2):
        processes.dramatiq_worker("tests.apps.limits_app", threads=8)
    for n in range(500):
        zart.start(limited, f"customer-{n % 10}", n, execution_id=f"l-{n}")

    wait_until(
        lambda: (
            scalar(db, schema, "SELECT count(*) FROM {s}.executions WHERE status = 'completed'")
            == 500
        ),
        timeout=120,
        message=lambda: f"every execution to complete; {processes.output()[-3000:]}",
    )
    most = rows(
        db,
        schema,
        "SELECT customer, max(open_then), count(*) FROM {s}.test_entered GROUP BY customer",
    )
    assert len(most) == 10
    assert all(entered == 50 for _, _, entered in most)
    assert max(m for _, m, _ in most) <= limits_app.MAX_PER_CUSTOMER, most
    assert scalar(db, schema, "SELECT sum(n) FROM {s}.test_open") == 0
