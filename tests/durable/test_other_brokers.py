"""The durable middleware on other brokers, checkpoints in PostgreSQL.

Other brokers: Dramatiq's Redis and RabbitMQ brokers, and a PostgresBroker whose
tables live in another schema than the executions.

There, a checkpoint and the message that resumes it are two writes; a crash in
between is repaired by the middleware's sweeper, which re-sends overdue wake-ups.

Redis and RabbitMQ are external servers: outside CI a test that needs one that is not
running is skipped, saying how to get it; with ``CI=true`` it fails instead.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import SkipMessage

import zart_dramatiq as zart
from broker_pg import PostgresBroker, migrate
from tests.support import (
    Effects,
    drop_schema,
    new_schema_name,
    require_rabbitmq,
    require_redis,
    require_server,
    wait_until,
)


def make_broker(kind: str, *, port: int | None = None) -> dramatiq.Broker:
    """A Redis or RabbitMQ broker on 127.0.0.1 (callers check the server first)."""
    if kind == "redis":
        return RedisBroker(
            host="127.0.0.1", port=port or 6379, namespace=f"zart-test-{uuid.uuid4().hex[:8]}"
        )
    return RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{port or 5672}")


@pytest.fixture(params=["redis", "rabbitmq", "postgres-elsewhere"])
def other_broker(request, database_url: str, schema: str) -> Iterator[dramatiq.Broker]:
    if request.param == "postgres-elsewhere":
        elsewhere = new_schema_name()
        migrate(database_url, schema=elsewhere)
        request.addfinalizer(lambda: drop_schema(database_url, elsewhere))
        broker: dramatiq.Broker = PostgresBroker(database_url, schema=elsewhere)
    else:
        # Before anything connects: a missing server skips (or fails in CI) at once.
        {"redis": require_redis, "rabbitmq": require_rabbitmq}[request.param]()
        broker = make_broker(request.param)
    broker.add_middleware(
        zart.DurableMiddleware(database_url, schema=schema, repair_after=timedelta(seconds=0.5)),
        before=type(broker.middleware[0]),
    )
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def test_sleep_and_event_on_another_broker(other_broker, effects: Effects) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"

    @zart.durable(broker=other_broker, queue_name=queue)
    def flow(n: int) -> int:
        first = zart.step("first", lambda: effects("first") or n)
        zart.sleep("nap", timedelta(milliseconds=200))
        bonus = zart.wait_for_event("bonus")["n"]
        return first + bonus

    worker = Worker(other_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        handle = zart.start(flow, 1)
        wait_until(lambda: handle.status() == "waiting", timeout=15, message="the event wait")
        zart.send_event(handle.execution_id, "bonus", {"n": 41}, broker=other_broker)
        assert handle.result(timeout=20) == 42
        assert effects["first"] == 1
    finally:
        worker.stop()


def test_a_paused_actor_is_held_on_another_broker(other_broker, effects: Effects) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"

    @zart.durable(broker=other_broker, queue_name=queue)
    def held(n: int) -> int:
        return zart.step("work", lambda: effects("work") or n)

    worker = Worker(other_broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        zart.pause_actor(held.actor_name, broker=other_broker)
        handle = zart.start(held, 7)
        other_broker.join(queue, timeout=15_000)
        worker.join()
        assert handle.status() == "pending"
        assert effects["work"] == 0
        zart.resume_actor(held.actor_name, broker=other_broker)
        assert handle.result(timeout=20) == 7
        assert effects["work"] == 1
    finally:
        worker.stop()


def test_a_stale_message_after_completion_fires_no_callback_again(other_broker) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    successes: list[int] = []

    @dramatiq.actor(broker=other_broker, queue_name=queue)
    def on_done(message: dict, result: int) -> None:
        successes.append(result)

    @zart.durable(broker=other_broker, queue_name=queue)
    def flow() -> int:
        zart.sleep("nap", 0.05)  # so the first delivery is stale once the flow resumed
        return 7

    worker = Worker(other_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        first = flow.send_with_options(on_success=on_done)
        wait_until(lambda: successes == [7], timeout=15, message="the on_success callback")
        other_broker.enqueue(first)  # the first delivery again, after the completion
        other_broker.join(queue)
        assert successes == [7]
    finally:
        worker.stop()


def test_a_start_whose_enqueue_was_lost_is_repaired(
    database_url: str, schema: str, effects: Effects
) -> None:
    """The execution commits, then the broker is unreachable: the gap a crash leaves."""
    require_redis()
    queue = f"q{uuid.uuid4().hex[:8]}"
    unreachable = make_broker("redis", port=1)
    unreachable.add_middleware(zart.DurableMiddleware(database_url, schema=schema))
    reachable = make_broker("redis")
    reachable.add_middleware(
        zart.DurableMiddleware(database_url, schema=schema, repair_after=timedelta(seconds=0.3)),
        before=type(reachable.middleware[0]),
    )
    reachable.emit_after("process_boot")

    def declare(broker: dramatiq.Broker) -> zart.DurableActor:
        @zart.durable(broker=broker, queue_name=queue, actor_name="repaired")
        def repaired() -> str:
            return zart.step("work", lambda: effects("work") or "done")

        return repaired

    with pytest.raises(Exception, match=r"(?i)connect"):
        zart.start(declare(unreachable), execution_id="lost-start")
    assert zart.get_execution("lost-start", broker=reachable).status == "pending"

    declare(reachable)
    worker = Worker(reachable, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        wait_until(
            lambda: zart.get_execution("lost-start", broker=reachable).status == "completed",
            timeout=20,
            message="the sweeper to re-send the lost start",
        )
        assert effects["work"] == 1
    finally:
        worker.stop()
        reachable.flush_all()
        reachable.close()


# --- The skip policy itself --------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_missing_server_skips_outside_ci_saying_how_to_get_it(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_server("Redis", "127.0.0.1", closed_port, "start it with `redis-server`")
    assert str(skipped.value) == (
        f"Redis is not running on 127.0.0.1:{closed_port}: start it with `redis-server`"
    )


def test_a_missing_server_fails_in_ci(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"RabbitMQ is not running on .*apt-get"):
        require_server("RabbitMQ", "127.0.0.1", closed_port, "apt-get install rabbitmq-server")


def test_a_running_server_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        require_server("Test", "127.0.0.1", listening.getsockname()[1], "n/a")


def square(x: int) -> int:
    return x * x


def test_parallel_and_map_on_another_broker(other_broker) -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"

    @zart.durable(broker=other_broker, queue_name=queue)
    def flow() -> list[int]:
        pair = zart.parallel(zart.call("a", square, 2), zart.call("b", square, 3))
        return pair + zart.map("squares", square, range(6), max_concurrency=2)

    worker = Worker(other_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        assert zart.start(flow).result(timeout=30) == [4, 9, 0, 1, 4, 9, 16, 25]
    finally:
        worker.stop()


class LoseFirstBranchDeliveries(dramatiq.Middleware):
    """Skips (and so acks) the first delivery of each branch: a message lost in transit."""

    def __init__(self) -> None:
        self.lost: set[str] = set()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        branch = message.options.get("zart_branch")
        if branch is not None and f"{branch['group']}/{branch['index']}" not in self.lost:
            self.lost.add(f"{branch['group']}/{branch['index']}")
            raise SkipMessage("lost in transit")


def test_lost_branch_messages_are_sent_again(other_broker) -> None:
    """Elsewhere than broker_pg a branch's message is sent after the commit: a crash
    in between loses it, and the sweeper sends it again once it is overdue."""
    queue = f"q{uuid.uuid4().hex[:8]}"
    losing = LoseFirstBranchDeliveries()
    other_broker.add_middleware(losing)

    @zart.durable(broker=other_broker, queue_name=queue)
    def flow() -> list[int]:
        return zart.parallel(zart.call("a", square, 2), zart.call("b", square, 3))  # type: ignore[no-any-return]

    worker = Worker(other_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        assert zart.start(flow).result(timeout=30) == [4, 9]
        assert losing.lost == {"group:parallel/0", "group:parallel/1"}
    finally:
        worker.stop()
