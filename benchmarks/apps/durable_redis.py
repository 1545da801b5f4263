"""Worker app: `dramatiq benchmarks.apps.durable_redis`, the non-durable ceiling.

The same ten no-op calls as the durable workflow, in one plain Dramatiq actor on
RedisBroker: no checkpoints at all. Completions are reported through the measurement
channel's per-process tally (``benchmarks/channel.py``), whose Redis database the
driver picks with ``ZBENCH_CHANNEL_URL``.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks import channel

QUEUE = "zdurable"
NAMESPACE = "zbench-durable"
STEPS = 10

broker = RedisBroker(
    url=os.environ.get("ZDURABLE_REDIS_URL", "redis://127.0.0.1:6379/0"), namespace=NAMESPACE
)
dramatiq.set_broker(broker)

# Connected on first use: after the fork in `dramatiq` worker processes.
_tally = channel.Tally(channel.connect())


def noop() -> None:
    """The same no-op as the durable steps."""


@dramatiq.actor(broker=broker, actor_name="zbench_ten_calls", queue_name=QUEUE)
def ten_calls(seq: int) -> None:
    started = time.time()
    for _ in range(STEPS):
        noop()
    _tally.hit(started, time.time())
