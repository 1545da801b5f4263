"""A pause is neither success nor failure for Dramatiq's own middleware."""

from __future__ import annotations

from datetime import timedelta

import dramatiq
from dramatiq import Worker, pipeline
from dramatiq.middleware import AsyncIO
from dramatiq.results import Results

import zart_dramatiq as zart
from broker_pg import PostgresBackend
from tests.support import Effects, wait_until


def test_results_and_callbacks_see_only_the_real_completion(
    broker, database_url, schema, effects: Effects
) -> None:
    backend = PostgresBackend(database_url, schema=schema)
    broker.add_middleware(Results(backend=backend))
    finished: list[object] = []

    @dramatiq.actor
    def on_done(message: dict, result: object) -> None:
        finished.append(result)

    @zart.durable(store_results=True, max_retries=0)
    def flow() -> int:
        zart.sleep("one", timedelta(milliseconds=100))
        zart.sleep("two", timedelta(milliseconds=100))
        return zart.step("answer", lambda: 42)

    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        message = flow.send_with_options(on_success=on_done)
        # Blocks through both pauses: no early None is stored for them.
        assert message.get_result(backend=backend, block=True, timeout=15_000) == 42
        wait_until(lambda: finished == [42], timeout=15, message="the on_success callback")
        broker.join(flow.queue_name)
        assert finished == [42]
        # Retries never counted the pauses (max_retries=0 would have failed it).
        assert broker.list_dead_letters() == []
    finally:
        worker.stop()
        backend.close()


def test_pipelines_continue_once_with_the_final_result(broker, worker) -> None:
    received: list[int] = []

    @dramatiq.actor
    def collect(value: int) -> None:
        received.append(value)

    @zart.durable
    def flow() -> int:
        zart.sleep("pause", timedelta(milliseconds=100))
        return 7

    pipeline([flow.message(), collect.message()]).run()
    wait_until(lambda: received == [7], timeout=15, message="the next pipeline stage")
    broker.join(flow.queue_name)
    assert received == [7]


def test_age_limit_does_not_drop_a_message_resumed_after_a_long_sleep(broker, worker) -> None:
    # (An age limit a busy machine cannot miss on the first delivery: 2 s.)
    @zart.durable(max_age=2000)
    def flow() -> str:
        zart.sleep("longer-than-max-age", timedelta(milliseconds=2500))
        return "resumed"

    assert zart.start(flow).result(timeout=15) == "resumed"


def test_time_limit_applies_to_each_run_not_to_the_sleep(broker, worker) -> None:
    @zart.durable(time_limit=1000)
    def flow() -> str:
        zart.sleep("longer-than-time-limit", timedelta(milliseconds=1500))
        return "in time"

    assert zart.start(flow).result(timeout=15) == "in time"


def test_async_actors_are_durable_too(broker, effects: Effects) -> None:
    broker.add_middleware(AsyncIO())

    @zart.durable
    async def flow(n: int) -> int:
        doubled = await zart.aio.step("double", lambda: effects("double") or n * 2)
        await zart.aio.sleep("pause", timedelta(milliseconds=100))
        return doubled + 1

    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        assert zart.start(flow, 20).result(timeout=15) == 41
        assert effects["double"] == 1
    finally:
        worker.stop()


def test_group_completion_fires_once_all_executions_really_finish(broker) -> None:
    from dramatiq import group
    from dramatiq.middleware import GroupCallbacks
    from dramatiq.rate_limits.backends import StubBackend

    broker.add_middleware(GroupCallbacks(StubBackend()))
    completed: list[list[str]] = []

    @dramatiq.actor
    def all_done() -> None:
        # Fired early (on a pause), it would see executions still sleeping.
        completed.append([e.status for e in zart.list_executions()])

    @zart.durable
    def flow(n: int) -> int:
        zart.sleep("pause", timedelta(milliseconds=100 * n))
        return n

    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        jobs = group([flow.message(n) for n in (1, 2, 3)])
        jobs.add_completion_callback(all_done.message())
        jobs.run()
        wait_until(lambda: completed, timeout=15, message="the group completion callback")
        broker.join(flow.queue_name)
        broker.join(all_done.queue_name)
        assert completed == [["completed"] * 3]
    finally:
        worker.stop()


def test_no_discarded_result_warning_when_dramatiq_has_no_use_for_it(
    broker, worker, caplog
) -> None:
    @zart.durable
    def flow() -> int:
        return 5

    handle = zart.start(flow)
    assert handle.result(timeout=15) == 5
    broker.join(flow.queue_name)
    assert not [r for r in caplog.records if "has been discarded" in r.getMessage()]


def test_enqueue_hooks_see_starts_and_resumptions(broker, worker) -> None:
    """Tracing middleware (e.g. OpenTelemetry) stamps options in before_enqueue."""
    seen: list[tuple[str, int]] = []

    class Recorder(dramatiq.Middleware):
        def before_enqueue(self, broker, message, delay) -> None:
            seen.append((message.options.get("zart_execution_id"), message.options.get("zart_seq")))

    broker.add_middleware(Recorder())

    @zart.durable
    def flow() -> str:
        zart.sleep("pause", timedelta(milliseconds=50))
        return "done"

    handle = zart.start(flow)
    assert handle.result(timeout=15) == "done"
    assert seen == [(handle.execution_id, 0), (handle.execution_id, 1)]
