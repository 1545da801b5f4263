"""Worker app: `dramatiq benchmarks.apps.durable_zart_rabbitmq`, zart with RabbitMQ as transport.

The same durable workflow as ``durable_zart``, on Dramatiq's RabbitmqBroker: RabbitMQ
carries the messages, the executions and their steps stay in PostgreSQL
(``ZDURABLE_PG_URL``, ``ZDURABLE_SCHEMA``, as for ``durable_zart``). The AMQP URL comes
from ``ZDURABLE_AMQP_URL``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

import zart_dramatiq as zart

# The workflow body is durable_zart's own, so both transports run the very same code.
# That module's PostgresBroker is never used here (its pool opens on first use only).
from benchmarks.apps import durable_zart as on_postgres

broker = RabbitmqBroker(
    url=os.environ.get("ZDURABLE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
)
# First in the list, as zart installs itself: its before_* hooks run before AgeLimit's.
broker.add_middleware(
    zart.DurableMiddleware(on_postgres.pg_url(), schema=on_postgres.pg_schema()),
    before=type(broker.middleware[0]),
)
dramatiq.set_broker(broker)

ten_steps = zart.durable(
    broker=broker, actor_name="zbench_ten_steps", queue_name=on_postgres.QUEUE
)(on_postgres.ten_steps.fn)
