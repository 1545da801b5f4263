"""The Dramatiq broker contract, end to end through dramatiq's own Worker and middleware."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Message, Worker, group, pipeline
from dramatiq.common import current_millis
from dramatiq.errors import QueueJoinTimeout
from dramatiq.middleware import AsyncIO, TimeLimit, TimeLimitExceeded, default_middleware
from dramatiq.results import ResultFailure, ResultMissing, Results

from broker_pg import PostgresBackend, PostgresBroker
from tests.support import scalar, wait_until

WorkerFactory = Callable[..., Worker]


@pytest.fixture
def backend(database_url: str, schema: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(database_url, schema=schema)
    yield backend
    backend.close()


@pytest.fixture
def results_broker(broker: PostgresBroker, backend: PostgresBackend) -> PostgresBroker:
    broker.add_middleware(Results(backend=backend))
    return broker


def count_rows(db: psycopg.Connection, schema: str, queue: str, state: str | None = None) -> int:
    if state is None:
        return scalar(db, schema, "SELECT count(*) FROM {s}.messages WHERE queue_name = %s", queue)
    return scalar(
        db,
        schema,
        "SELECT count(*) FROM {s}.messages WHERE queue_name = %s AND state = %s",
        queue,
        state,
    )


def test_actors_run(broker: PostgresBroker, start_worker: WorkerFactory) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker)
    def record(n: int) -> None:
        with lock:
            seen.append(n)

    worker = start_worker(broker)
    for n in range(50):
        record.send(n)
    broker.join(record.queue_name, timeout=10_000)
    worker.join()

    assert sorted(seen) == list(range(50))


def test_delayed_messages_run_not_before_their_delay_and_in_due_order(
    broker: PostgresBroker, start_worker: WorkerFactory, db: psycopg.Connection, schema: str
) -> None:
    ran: list[tuple[int, float]] = []

    @dramatiq.actor(broker=broker)
    def delayed(delay: int) -> None:
        ran.append((delay, time.monotonic()))

    start_worker(broker)
    sent_at = time.monotonic()
    # The later one first: due order, not send order, decides.
    delayed.send_with_options(args=(1500,), delay=1500)
    delayed.send_with_options(args=(1000,), delay=1000)
    # Both wait in the queue itself, as delayed rows: outside the claim's index.
    assert count_rows(db, schema, delayed.queue_name, "delayed") == 2
    broker.join(delayed.queue_name, timeout=10_000)

    assert [delay for delay, _ in ran] == [1000, 1500]
    for delay, at in ran:
        assert at - sent_at >= delay / 1000


def test_retries_with_backoff_reach_success(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    attempts: list[int] = []
    succeeded = threading.Event()

    @dramatiq.actor(broker=broker, max_retries=5, min_backoff=10, max_backoff=50)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        succeeded.set()

    start_worker(broker)
    flaky.send()
    broker.join(flaky.queue_name, timeout=10_000)

    assert succeeded.is_set()
    assert len(attempts) == 3
    assert broker.list_dead_letters() == []


def test_time_limit_kills_a_long_actor(
    make_broker: Callable[..., PostgresBroker], start_worker: WorkerFactory
) -> None:
    middleware = [TimeLimit(interval=20) if m is TimeLimit else m() for m in default_middleware]
    broker = make_broker(middleware=middleware)
    release = threading.Event()
    interrupted: list[BaseException] = []

    @dramatiq.actor(broker=broker, time_limit=100, max_retries=0)
    def long_running() -> None:
        try:
            # Busy in Python code, so the time limit's async exception can land.
            while not release.wait(0.005):
                pass
        except BaseException as e:
            interrupted.append(e)
            raise

    start_worker(broker)
    long_running.send()
    try:
        broker.join(long_running.queue_name, timeout=10_000, fail_fast=False)
    finally:
        release.set()

    assert len(interrupted) == 1
    assert isinstance(interrupted[0], TimeLimitExceeded)
    [dead] = broker.list_dead_letters()
    assert "TimeLimitExceeded" in (dead.error or "")


def test_age_limit_dead_letters_old_messages(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    ran: list[str] = []

    @dramatiq.actor(broker=broker, max_age=60_000)
    def perishable(label: str) -> None:
        ran.append(label)

    stale = perishable.message("stale").copy(message_timestamp=current_millis() - 120_000)
    broker.enqueue(stale)
    perishable.send("fresh")
    start_worker(broker)
    broker.join(perishable.queue_name, timeout=10_000, fail_fast=False)

    assert ran == ["fresh"]
    [dead] = broker.list_dead_letters()
    assert dead.message_id == stale.message_id
    assert "age limit" in (dead.error or "")
    assert dead.message is not None and dead.message.args == ("stale",)


def test_callbacks_on_success_and_on_failure(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    calls: dict[str, Any] = {}

    @dramatiq.actor(broker=broker)
    def succeeded(message_data: dict[str, Any], result: Any) -> None:
        calls["success"] = (message_data["args"], result)

    @dramatiq.actor(broker=broker)
    def failed(message_data: dict[str, Any], exception_data: dict[str, Any]) -> None:
        calls["failure"] = (message_data["args"], exception_data["type"])

    @dramatiq.actor(broker=broker, max_retries=0)
    def divide(a: int, b: int) -> float:
        return a / b

    start_worker(broker)
    divide.send_with_options(args=(6, 3), on_success=succeeded, on_failure=failed)
    divide.send_with_options(args=(1, 0), on_success=succeeded, on_failure=failed)
    broker.join(divide.queue_name, timeout=10_000, fail_fast=False)

    assert calls == {"success": ([6, 3], 2.0), "failure": ([1, 0], "ZeroDivisionError")}


def test_pipeline_of_three_actors(
    results_broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    broker = results_broker

    @dramatiq.actor(broker=broker, store_results=True)
    def add(a: int, b: int) -> int:
        return a + b

    @dramatiq.actor(broker=broker, store_results=True)
    def times(factor: int, value: int) -> int:
        return factor * value

    @dramatiq.actor(broker=broker, store_results=True)
    def minus(amount: int, value: int) -> int:
        return value - amount

    start_worker(broker)
    pipe = pipeline([add.message(1, 2), times.message(10), minus.message(4)], broker=broker)
    pipe.run()

    assert pipe.get_result(block=True, timeout=10_000) == 26
    assert list(pipe.get_results()) == [3, 30, 26]


def test_group_run_and_wait(results_broker: PostgresBroker, start_worker: WorkerFactory) -> None:
    broker = results_broker

    @dramatiq.actor(broker=broker, store_results=True)
    def square(n: int) -> int:
        return n * n

    start_worker(broker)
    jobs = group([square.message(n) for n in range(6)], broker=broker).run()
    jobs.wait(timeout=10_000)

    assert jobs.completed
    assert list(jobs.get_results()) == [0, 1, 4, 9, 16, 25]


def test_results_backend_returns_values_and_raises_failures(
    results_broker: PostgresBroker, backend: PostgresBackend, start_worker: WorkerFactory
) -> None:
    broker = results_broker

    @dramatiq.actor(broker=broker, store_results=True)
    def echo(value: Any) -> Any:
        return value

    @dramatiq.actor(broker=broker, store_results=True, max_retries=0)
    def explode() -> None:
        raise ValueError("kaboom")

    ok = echo.send({"answer": 42, "items": [1, "two"]})
    with pytest.raises(ResultMissing):
        backend.get_result(ok)

    start_worker(broker)
    failing = explode.send()

    assert backend.get_result(ok, block=True, timeout=10_000) == {"answer": 42, "items": [1, "two"]}
    with pytest.raises(ResultFailure) as raised:
        backend.get_result(failing, block=True, timeout=10_000)
    assert raised.value.orig_exc_type == "ValueError"
    assert "kaboom" in raised.value.orig_exc_msg


def test_lower_priority_value_runs_first(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    order: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="prio", priority=100)
    def background(n: int) -> None:
        order.append("background")

    @dramatiq.actor(broker=broker, queue_name="prio", priority=0)
    def urgent(n: int) -> None:
        order.append("urgent")

    # Everything is waiting before the worker starts; the background work was sent first.
    for n in range(4):
        background.send(n)
    for n in range(4):
        urgent.send(n)
    start_worker(broker, threads=1)
    broker.join("prio", timeout=10_000)

    assert order == ["urgent"] * 4 + ["background"] * 4


def test_asyncio_actors(broker: PostgresBroker, start_worker: WorkerFactory) -> None:
    broker.add_middleware(AsyncIO())
    results: list[int] = []

    @dramatiq.actor(broker=broker)
    async def double(n: int) -> None:
        await asyncio.sleep(0)
        results.append(n * 2)

    start_worker(broker)
    for n in range(5):
        double.send(n)
    broker.join(double.queue_name, timeout=10_000)

    assert sorted(results) == [0, 2, 4, 6, 8]


def test_join_times_out_while_messages_wait(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    @dramatiq.actor(broker=broker)
    def idle() -> None:
        pass

    idle.send()
    with pytest.raises(QueueJoinTimeout):
        broker.join(idle.queue_name, timeout=200)

    start_worker(broker)
    broker.join(idle.queue_name, timeout=10_000)


def test_join_counts_delayed_messages(broker: PostgresBroker) -> None:
    @dramatiq.actor(broker=broker)
    def later() -> None:
        pass

    later.send_with_options(delay=60_000)
    with pytest.raises(QueueJoinTimeout):
        broker.join(later.queue_name, timeout=100)


def test_join_fail_fast_reraises_the_actor_error(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    @dramatiq.actor(broker=broker, max_retries=0)
    def broken() -> None:
        raise LookupError("the thing is missing")

    start_worker(broker)
    broken.send()
    with pytest.raises(LookupError, match="the thing is missing"):
        broker.join(broken.queue_name, timeout=10_000, fail_fast=True)
    # Without fail_fast the join just waits for the queue to drain.
    broker.join(broken.queue_name, timeout=10_000, fail_fast=False)


def test_flush_and_flush_all(broker: PostgresBroker, db: psycopg.Connection, schema: str) -> None:
    @dramatiq.actor(broker=broker, queue_name="first")
    def one() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="second")
    def two() -> None:
        pass

    for _ in range(3):
        one.send()
        one.send_with_options(delay=60_000)
        two.send()
    assert count_rows(db, schema, "first") == 6
    assert count_rows(db, schema, "second") == 3

    broker.flush("first")
    assert count_rows(db, schema, "first") == 0
    assert count_rows(db, schema, "second") == 3

    one.send()
    broker.flush_all()
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


def test_declared_queues_and_delay_queues(broker: PostgresBroker) -> None:
    declared: list[str] = []

    class Recorder(dramatiq.Middleware):
        def after_declare_queue(self, broker: dramatiq.Broker, queue_name: str) -> None:
            declared.append(queue_name)

    broker.add_middleware(Recorder())

    @dramatiq.actor(broker=broker, queue_name="alpha")
    def a() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="beta.v2")
    def b() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="alpha")
    def c() -> None:
        pass

    broker.declare_queue("alpha")

    assert broker.get_declared_queues() == {"alpha", "beta.v2"}
    assert broker.get_declared_delay_queues() == {"alpha.DQ", "beta.v2.DQ"}
    assert declared == ["alpha", "beta.v2"]


def test_a_consumer_never_holds_more_than_prefetch(
    broker: PostgresBroker, start_worker: WorkerFactory, db: psycopg.Connection, schema: str
) -> None:
    release = threading.Event()
    started: list[int] = []
    finished: list[int] = []

    @dramatiq.actor(broker=broker)
    def blocked(n: int) -> None:
        started.append(n)
        release.wait(30)
        finished.append(n)

    for n in range(12):
        blocked.send(n)
    start_worker(broker, threads=2, prefetch=3)
    try:
        wait_until(lambda: len(started) == 2, message="both worker threads to be busy")
        wait_until(
            lambda: count_rows(db, schema, blocked.queue_name, "claimed") == 3,
            message="the consumer to fill its prefetch",
        )
        # The consumer keeps running (it returns every worker_timeout) but claims no more.
        window = time.monotonic() + 0.3
        while time.monotonic() < window:
            assert count_rows(db, schema, blocked.queue_name, "claimed") == 3
            assert count_rows(db, schema, blocked.queue_name, "queued") == 9
    finally:
        release.set()
    while (done_so_far := len(finished)) < 12:
        assert count_rows(db, schema, blocked.queue_name, "claimed") <= 3
        wait_until(lambda n=done_so_far: len(finished) > n, message="progress")
    broker.join(blocked.queue_name, timeout=10_000)


def test_messages_keep_their_identity_and_options(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    received: list[Message[Any]] = []

    class Capture(dramatiq.Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
            received.append(message._message)

    broker.add_middleware(Capture())

    @dramatiq.actor(broker=broker)
    def noted(*args: Any, **kwargs: Any) -> None:
        pass

    sent = noted.send_with_options(args=(1, "x"), kwargs={"k": [1, 2]}, max_retries=7)
    start_worker(broker)
    broker.join(noted.queue_name, timeout=10_000)

    [got] = received
    assert got.message_id == sent.message_id
    assert got.message_timestamp == sent.message_timestamp
    assert got.args == (1, "x") and got.kwargs == {"k": [1, 2]}
    assert got.options["max_retries"] == 7
    assert "eta" not in got.options


def test_one_thread_runs_a_queue_in_send_order(
    broker: PostgresBroker, start_worker: WorkerFactory
) -> None:
    order: list[int] = []

    @dramatiq.actor(broker=broker)
    def step(n: int) -> None:
        order.append(n)

    # Sent in one batch, the rows share one due time: the send order must still decide.
    with broker.batch():
        for n in range(40):
            step.send(n)
    start_worker(broker, threads=1, prefetch=10)
    broker.join(step.queue_name, timeout=10_000)

    assert order == list(range(40))


def test_a_blocking_get_result_is_woken_when_the_result_is_stored(
    results_broker: PostgresBroker,
    backend: PostgresBackend,
    start_worker: WorkerFactory,
    db: psycopg.Connection,
) -> None:
    broker = results_broker

    @dramatiq.actor(broker=broker, store_results=True)
    def answer() -> int:
        return 42

    message = answer.send()
    got: list[tuple[float, Any]] = []

    def wait_for_result() -> None:
        value = backend.get_result(message, block=True, timeout=5000)
        got.append((time.monotonic(), value))

    waiter = threading.Thread(target=wait_for_result)
    waiter.start()
    # Start the worker only once the waiter listens for results.
    wait_until(
        lambda: db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%results%%'"
            " AND datname = current_database()"
        ).fetchone()[0],  # type: ignore[index]
        message="the waiter to listen",
    )
    started = time.monotonic()
    start_worker(broker)
    waiter.join(10)

    [(at, value)] = got
    assert value == 42
    # Woken by the notification, not by its 5 s timeout running out.
    assert at - started < 2.5
