"""Bad input gets a clear error naming what is wrong, and nothing half-written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg import sql

import zart_dramatiq as zart


class Opaque:
    pass


def test_a_step_result_that_cannot_be_serialized_names_the_step(broker, worker) -> None:
    @zart.durable(max_retries=0)
    def flow() -> None:
        zart.step("opaque", Opaque)

    with pytest.raises(zart.ExecutionFailed) as failure:
        zart.start(flow).result(timeout=15)
    assert failure.value.error["type"].endswith("SerializationError")
    assert "step 'opaque'" in failure.value.error["message"]


def test_an_argument_that_cannot_be_serialized_is_refused_before_anything_is_written(
    broker, db, schema
) -> None:
    @zart.durable
    def flow(thing: object) -> None:
        pass

    with pytest.raises(zart.SerializationError, match="argument 'thing'"):
        zart.start(flow, Opaque(), execution_id="bad")
    for table in ("executions", "messages"):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        assert db.execute(query).fetchone()[0] == 0


def test_starting_a_plain_actor_is_an_error(broker) -> None:
    import dramatiq

    @dramatiq.actor
    def plain() -> None:
        pass

    with pytest.raises(TypeError, match="not durable"):
        zart.start(plain)


def test_sleep_until_needs_an_aware_datetime(broker, worker) -> None:
    from datetime import datetime

    @zart.durable(max_retries=0)
    def flow() -> None:
        zart.sleep_until("naive", datetime(2030, 1, 1))

    with pytest.raises(zart.ExecutionFailed, match="timezone-aware"):
        zart.start(flow).result(timeout=15)


def test_cancel_and_retry_of_unknown_executions_name_the_id(broker) -> None:
    with pytest.raises(zart.UnknownExecution, match="'ghost'"):
        zart.cancel("ghost")
    with pytest.raises(zart.UnknownExecution, match="'ghost'"):
        zart.retry("ghost")
    with pytest.raises(zart.UnknownExecution, match="'ghost'"):
        zart.get_execution("ghost")


def test_sleep_durations_are_recorded_once(broker, worker) -> None:
    @zart.durable
    def flow() -> str:
        zart.sleep("nap", timedelta(milliseconds=100))
        return "ok"

    handle = zart.start(flow)
    assert handle.result(timeout=15) == "ok"
    (nap,) = zart.get_execution(handle.execution_id).steps
    assert nap.kind == "sleep" and nap.status == "completed"
    assert nap.wake_at is not None and nap.wake_at >= nap.started_at
