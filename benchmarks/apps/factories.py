"""Broker constructors shared by the driver and the worker app modules.

Connection settings come from environment variables so that the driver can hand them to
`dramatiq` worker subprocesses unchanged. Every broker keeps Dramatiq's default
middleware, so the worker does the same per-message work whatever the broker.
"""

from __future__ import annotations

import os

from dramatiq import Broker

DEFAULTS = {
    "ZBENCH_PG_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "ZBENCH_PG_SCHEMA": "zart_bench",
    "ZBENCH_DPG_SCHEMA": "dramatiq_pg_bench",
    "ZBENCH_REDIS_URL": "redis://127.0.0.1:6379/0",
    "ZBENCH_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
}


def setting(name: str) -> str:
    return os.environ.get(name, DEFAULTS[name])


def make_postgres() -> Broker:
    from broker_pg import PostgresBroker

    return PostgresBroker(setting("ZBENCH_PG_URL"), schema=setting("ZBENCH_PG_SCHEMA"))


def make_redis() -> Broker:
    from dramatiq.brokers.redis import RedisBroker

    # Own namespace: never touch keys of anything else using this Redis.
    return RedisBroker(url=setting("ZBENCH_REDIS_URL"), namespace="zbench-dramatiq")


def make_rabbitmq() -> Broker:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=setting("ZBENCH_AMQP_URL"))


def make_dramatiq_pg() -> Broker:
    from dramatiq_pg import PostgresBroker as DramatiqPgBroker

    # results=False: the other brokers run without a result backend either.
    return DramatiqPgBroker(
        url=setting("ZBENCH_PG_URL"),
        schema=setting("ZBENCH_DPG_SCHEMA"),
        prefix="",
        results=False,
    )


def make_stub() -> Broker:
    from dramatiq.brokers.stub import StubBroker

    return StubBroker()


FACTORIES = {
    "postgres": make_postgres,
    "redis": make_redis,
    "rabbitmq": make_rabbitmq,
    "dramatiq-pg": make_dramatiq_pg,
    "stub": make_stub,
}


def make_broker(name: str) -> Broker:
    return FACTORIES[name]()
