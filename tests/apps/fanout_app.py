"""Worker app for fan-out crash tests: ``dramatiq tests.apps.fanout_app``.

Each branch records its side effect in ``test_effects`` (see durable_app); a
branch listed in ``hold`` then waits until the test opens its gate, so the
test knows which branches are in flight when it kills the worker.
"""

from __future__ import annotations

import dramatiq

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from tests.apps.durable_app import SCHEMA, URL, effect


def branch(execution_id: str, i: int, hold: list[int]) -> int:
    effect(execution_id, f"b{i}", i in hold)
    return i * i


def declare(broker: dramatiq.Broker) -> dict[str, zart.DurableActor]:
    @zart.durable(broker=broker, actor_name="fan_out")
    def fan_out(execution_id: str, size: int, hold: list[int]) -> int:
        calls = [zart.call(f"b{i}", branch, execution_id, i, hold) for i in range(size)]
        return sum(zart.parallel(*calls))

    @zart.durable(broker=broker, actor_name="mapper")
    def mapper(execution_id: str, size: int, window: int, hold: list[int]) -> int:
        items = zart.map(
            "squares",
            square_item,
            [(execution_id, i, hold) for i in range(size)],
            max_concurrency=window,
        )
        return sum(items)

    return {"fan_out": fan_out, "mapper": mapper}


def square_item(item: tuple[str, int, list[int]]) -> int:
    execution_id, i, hold = item
    return branch(execution_id, i, hold)


if URL:
    broker = PostgresBroker(URL, schema=SCHEMA, heartbeat_interval=0.2)
    dramatiq.set_broker(broker)
    actors = declare(broker)
