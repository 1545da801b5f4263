"""Async durable bodies: ``async def`` actors with ``await zart.aio.*`` calls.

Dramatiq runs them on one event loop per process (its AsyncIO middleware); zart's
calls run in helper threads, so the loop never waits for PostgreSQL, and a step
function that is ``async def`` runs on the loop.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import psycopg
import pytest
from dramatiq import Worker
from dramatiq.middleware import AsyncIO
from psycopg import sql
from pydantic import BaseModel

import zart_dramatiq as zart
from tests.apps import transactional_app
from tests.support import rows, wait_until
from zart_dramatiq import aio


class Order(BaseModel):
    id: int
    item: str


@pytest.fixture
def start_async_worker(broker, start_worker) -> Callable[..., Worker]:
    """Start a worker that runs async actors: the AsyncIO middleware starts its loop at boot."""

    def start(threads: int = 4) -> Worker:
        broker.add_middleware(AsyncIO())
        return start_worker(broker, threads=threads)

    return start


@pytest.fixture
def async_worker(start_async_worker) -> Worker:
    return start_async_worker()


def test_an_async_body_replays_its_steps_sleep_and_event_wait(
    broker, async_worker, effects
) -> None:
    replayed: list[tuple[int, str]] = []

    async def fetch(order: Order) -> int:  # runs on the loop
        effects("fetch")
        await asyncio.sleep(0)
        return order.id * 2

    def charge(amount: int) -> str:  # runs in a helper thread
        effects("charge")
        return f"txn-{amount}"

    @zart.durable
    async def fulfil(order: Order) -> Order:
        amount = await aio.step("fetch", fetch, order)
        txn = await aio.step("charge", charge, amount)
        replayed.append((amount, txn))
        await aio.sleep("settle", timedelta(milliseconds=50))
        shipment = await aio.wait_for_event("shipped")
        return Order(id=amount, item=f"{order.item}:{txn}:{shipment['tracking']}")

    handle = zart.start(fulfil, Order(id=3, item="book"), execution_id="async-1")
    wait_until(lambda: handle.status() == "waiting", timeout=15, message="the event wait")
    zart.send_event("async-1", "shipped", {"tracking": "T-1"})
    assert handle.result(timeout=15) == Order(id=6, item="book:txn-6:T-1")
    # Three runs (first, after the sleep, after the event); the steps ran once, and the
    # replays got their results typed by the functions' return annotations.
    assert replayed == [(6, "txn-6")] * 3
    assert all(type(amount) is int for amount, _ in replayed)
    assert (effects["fetch"], effects["charge"]) == (1, 1)
    info = zart.get_execution("async-1")
    assert [(s.key, s.status) for s in info.steps] == [
        ("step:fetch", "completed"),
        ("step:charge", "completed"),
        ("sleep:settle", "completed"),
        ("event:shipped", "completed"),
    ]
    assert info.steps[0].fn == f"{__name__}.{fetch.__qualname__}"


def test_the_loop_runs_other_bodies_while_a_step_function_blocks(broker, async_worker) -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking() -> str:
        entered.set()
        assert release.wait(30)
        return "slow"

    async def on_the_loop() -> str:
        await asyncio.sleep(0)
        return "quick"

    @zart.durable
    async def slow_flow() -> str:
        return await aio.step("blocking", blocking)

    @zart.durable
    async def quick_flow() -> str:
        return await aio.step("on-the-loop", on_the_loop)

    slow = zart.start(slow_flow)
    assert entered.wait(15)
    # The blocking function holds its helper thread only: the loop runs another body,
    # and that body's step function, until it completes.
    assert zart.start(quick_flow).result(timeout=15) == "quick"
    assert slow.status() == "running"
    release.set()
    assert slow.result(timeout=15) == "slow"


def test_a_pause_frees_the_worker_thread_and_the_execution_resumes(
    broker, start_async_worker
) -> None:
    start_async_worker(threads=1)

    @zart.durable
    async def waiter() -> str:
        payload = await aio.wait_for_event("go")
        return str(payload["n"])

    @zart.durable
    async def other() -> str:
        return "ran"

    waiting = zart.start(waiter)
    wait_until(lambda: waiting.status() == "waiting", timeout=15, message="the event wait")
    # The worker's only thread runs another execution: the waiting one's delivery ended.
    assert zart.start(other).result(timeout=15) == "ran"
    zart.send_event(waiting.execution_id, "go", {"n": 7})
    assert waiting.result(timeout=15) == "7"


def one() -> int:
    return 1


def test_a_blocking_zart_call_in_an_async_body_names_its_awaitable_form(
    broker, async_worker
) -> None:
    @zart.durable(max_retries=3)
    async def flow() -> int:
        return zart.step("blocking", one)

    handle = zart.start(flow, execution_id="blocking")
    with pytest.raises(zart.ExecutionFailed) as failure:
        handle.result(timeout=15)
    error = failure.value.error
    assert error is not None
    assert error["type"].endswith("NotAllowedOnEventLoop")
    assert "await zart.aio.step(...)" in error["message"]
    assert zart.get_execution("blocking").steps == ()


def test_the_context_is_the_bodys_on_the_loop_and_in_step_functions(broker, async_worker) -> None:
    async def on_the_loop() -> str:
        return zart.context().execution_id

    def in_a_thread() -> str:
        return zart.context().execution_id

    @zart.durable
    async def flow() -> list[str]:
        context = zart.context()  # reads no database: fine on the loop
        return [
            context.execution_id,
            context.actor,
            await aio.step("on-the-loop", on_the_loop),
            await aio.step("in-a-thread", in_a_thread),
        ]

    handle = zart.start(flow, execution_id="ctx-async")
    assert handle.result(timeout=15) == ["ctx-async", "flow", "ctx-async", "ctx-async"]


def test_gathered_calls_run_one_at_a_time_and_replay_in_the_same_order(
    broker, async_worker
) -> None:
    finished: list[int] = []
    gathered: list[list[int]] = []

    async def slow(x: int) -> int:
        # Long enough for the next call to start meanwhile, were it let through.
        await asyncio.sleep(0.2)
        finished.append(x)
        return x

    def fast(x: int) -> int:
        return x if finished == [1] else -x  # negative: it ran before slow(1) ended

    @zart.durable
    async def flow() -> list[int]:
        results = await asyncio.gather(aio.step("x", slow, 1), aio.step("x", fast, 2))
        gathered.append(list(results))
        await aio.sleep("nap", timedelta(milliseconds=50))  # the next run replays both
        return list(results)

    handle = zart.start(flow, execution_id="gathered")
    assert handle.result(timeout=15) == [1, 2]
    assert gathered == [[1, 2], [1, 2]]
    assert finished == [1]
    steps = {s.key: s.result for s in zart.get_execution("gathered").steps}
    assert (steps["step:x"], steps["step:x#2"]) == (1, 2)


def test_a_step_functions_own_zart_calls_do_not_wait_for_it(broker, async_worker) -> None:
    async def outer(x: int) -> int:
        inner = await aio.step("inner", double, x)  # a step of its own, as in a plain body
        return inner + await asyncio.to_thread(double, x)

    @zart.durable
    async def flow() -> int:
        return await aio.step("outer", outer, 5)

    assert zart.start(flow, execution_id="nested").result(timeout=15) == 20
    steps = [(s.key, s.result) for s in zart.get_execution("nested").steps]
    assert sorted(steps) == [("step:inner", 10), ("step:outer", 20)]


def test_durable_values_and_a_transactional_step_are_awaitable(
    broker, async_worker, effects, db, schema
) -> None:
    transactional_app.create_tables(db, schema)
    seen: list[tuple[datetime, UUID, float, int]] = []

    async def draw() -> float:
        effects("draw")
        return random.random()

    def place(conn: psycopg.Connection, item: str) -> int:
        effects("place")
        query = "INSERT INTO {}.test_orders (execution_id, item) VALUES ('values', %s) RETURNING id"
        row = conn.execute(sql.SQL(query).format(sql.Identifier(schema)), (item,)).fetchone()
        assert row is not None
        return int(row[0])

    @zart.durable
    async def flow() -> int:
        values = (
            await aio.now("at"),
            await aio.uuid("id"),
            await aio.capture("draw", draw),
            await aio.transactional_step("place", place, "book"),
        )
        seen.append(values)
        await aio.sleep("nap", timedelta(milliseconds=50))
        return values[3]

    order_id = zart.start(flow, execution_id="values").result(timeout=15)
    first, replayed = seen
    assert replayed == first
    stamp, drawn_id, drawn, placed = first
    assert isinstance(stamp, datetime) and isinstance(drawn_id, UUID)
    assert isinstance(drawn, float) and placed == order_id
    assert (effects["draw"], effects["place"]) == (1, 1)
    orders = rows(db, schema, "SELECT id, execution_id, item FROM {s}.test_orders")
    assert orders == [(order_id, "values", "book")]


def test_an_async_transactional_function_is_refused(broker, async_worker) -> None:
    async def place(conn: psycopg.Connection) -> int:
        return 1

    @zart.durable(max_retries=3)
    async def flow() -> int:
        return await aio.transactional_step("place", place)  # type: ignore[arg-type]

    handle = zart.start(flow, execution_id="async-tx")
    with pytest.raises(zart.ExecutionFailed, match="make it a plain def"):
        handle.result(timeout=15)
    assert zart.get_execution("async-tx").steps == ()


def test_an_async_body_continues_as_new(broker, async_worker) -> None:
    @zart.durable
    async def loop(generation: int) -> int:
        await aio.step("tick", one)
        if generation < 3:
            await aio.continue_as_new(generation + 1)
        return generation

    handle = zart.start(loop, 0, execution_id="async-loop")
    assert handle.result(timeout=15) == 3
    info = zart.get_execution("async-loop")
    assert info.generation == 3
    assert [s.key for s in info.steps] == ["step:tick"]


# -- Composition: parallel, map, children ------------------------------------------
# Branch functions live at module level: a worker imports them by name.


def double(x: int) -> int:
    return 2 * x


async def triple(x: int) -> int:
    await asyncio.sleep(0)
    return 3 * x


def test_an_async_body_fans_out_and_starts_children(broker, async_worker) -> None:
    @zart.durable
    async def child(x: int) -> int:
        return await aio.step("double", double, x)

    @zart.durable
    async def parent() -> list[int]:
        pair = await aio.parallel(aio.call("a", double, 1), aio.call("b", double, 2))
        mapped = await aio.map("m", double, [1, 2, 3])
        handle = await aio.start_child(child, 5)
        assert handle.execution_id == f"{zart.context().execution_id}/child:child"
        return [*pair, *mapped, await handle.result()]

    assert zart.start(parent, execution_id="fan").result(timeout=30) == [2, 4, 2, 4, 6, 10]


def test_async_branch_functions_run_on_the_loop(broker, async_worker) -> None:
    @zart.durable
    async def parent() -> list[int]:
        return await aio.map("m", triple, [1, 2])

    assert zart.start(parent).result(timeout=30) == [3, 6]


def test_zart_calls_outside_a_body_are_errors() -> None:
    with pytest.raises(zart.NotInExecution):
        asyncio.run(aio.step("outside", one))
    with pytest.raises(zart.NotInExecution):
        asyncio.run(aio.sleep("outside", 1))
