"""The durable middleware on other brokers, checkpoints in PostgreSQL.

Other brokers: Dramatiq's Redis and RabbitMQ brokers, and a PostgresBroker whose
tables live in another schema than the executions.

There, a checkpoint and the message that resumes it are two writes; a crash in
between is repaired by the middleware's sweeper, which re-sends overdue wake-ups.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

import zart_dramatiq as zart
from broker_pg import PostgresBroker, migrate
from tests.support import Effects, drop_schema, new_schema_name, wait_until


def make_broker(kind: str, *, port: int | None = None) -> dramatiq.Broker:
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


def test_a_start_whose_enqueue_was_lost_is_repaired(
    database_url: str, schema: str, effects: Effects
) -> None:
    """The execution commits, then the broker is unreachable: the gap a crash leaves."""
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
