"""Claims: concurrent consumers never share a delivery; idle consumers wake up at once."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dramatiq
import psycopg

from broker_pg import PostgresBroker, PostgresMessageProxy
from tests.support import scalar, wait_until

QUEUE = "claims"


def declare(broker: PostgresBroker) -> dramatiq.Actor:
    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="claimed_job")
    def claimed_job(n: int) -> None:
        pass

    return claimed_job


def send_to_idle_consumer(consumer: Any, job: dramatiq.Actor, n: int) -> PostgresMessageProxy:
    """Send ``job(n)`` once ``consumer`` sits in ``next()`` with its queue found empty.

    The message must reach it within a second; return it.
    """
    got: list[tuple[float, PostgresMessageProxy | None]] = []

    def receive() -> None:
        message = next(consumer)
        got.append((time.monotonic(), message))

    thread = threading.Thread(target=receive)
    thread.start()
    wait_until(lambda: len(consumer.state._cond._waiters) > 0, message="the consumer to go idle")
    sent_at = time.monotonic()
    sent = job.send(n)
    thread.join(10)

    [(received_at, message)] = got
    assert message is not None and message.message_id == sent.message_id
    assert received_at - sent_at < 1.0
    return message


def test_concurrent_consumers_deliver_each_message_exactly_once(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    total = 600
    producer = make_broker()
    job = declare(producer)
    with producer.batch():
        for n in range(total):
            job.send(n)

    # Four processes' worth of brokers (each its own worker row), two consumers each.
    brokers = [make_broker(poll_interval=0.05) for _ in range(4)]
    for broker in brokers:
        declare(broker)
    lock = threading.Lock()
    held: dict[int, str] = {}  # row id -> consumer holding its lease right now
    delivered: Counter[int] = Counter()
    per_consumer: Counter[str] = Counter()
    double_deliveries: list[tuple[int, str, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def consume(broker: PostgresBroker, name: str, prefetch: int) -> None:
        consumer = broker.consume(QUEUE, prefetch=prefetch, timeout=100)
        try:
            while not done.is_set():
                message = next(consumer)
                if message is None:
                    continue
                assert isinstance(message, PostgresMessageProxy)
                with lock:
                    if message.row_id in held:
                        double_deliveries.append((message.row_id, held[message.row_id], name))
                    held[message.row_id] = name
                    delivered[message.args[0]] += 1
                    per_consumer[name] += 1
                    if sum(delivered.values()) >= total:
                        done.set()
                with lock:
                    del held[message.row_id]
                consumer.ack(message)
        except BaseException as e:
            errors.append(e)
            done.set()
        finally:
            consumer.close()

    threads = [
        threading.Thread(target=consume, args=(broker, f"b{i}c{j}", prefetch))
        for i, broker in enumerate(brokers)
        for j, prefetch in enumerate((1, 7))
    ]
    for thread in threads:
        thread.start()
    done.wait(60)
    done.set()
    for thread in threads:
        thread.join(10)

    assert errors == []
    assert double_deliveries == []
    assert sorted(delivered) == list(range(total))
    assert set(delivered.values()) == {1}
    # The consumers really competed for the same rows.
    assert len(per_consumer) >= 4, per_consumer
    # Every ack was settled: nothing is left, nothing was redelivered.
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


def test_ack_keys_on_the_lease_so_a_stale_ack_deletes_nothing(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    broker = make_broker()
    job = declare(broker)
    job.send(1)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    first = next(consumer)
    assert isinstance(first, PostgresMessageProxy)
    consumer.requeue([first])
    second = wait_until(lambda: next(consumer), message="the redelivery")
    assert second.row_id == first.row_id

    # The first delivery was settled by the requeue; acking it again changes nothing.
    consumer.ack(first)
    consumer.close()
    assert scalar(db, schema, "SELECT state FROM {s}.messages WHERE id = %s", first.row_id) == (
        "claimed"
    )

    consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
    consumer.ack(second)
    consumer.close()
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


def test_an_idle_consumer_wakes_up_when_a_message_is_sent(
    make_broker: Callable[..., PostgresBroker],
) -> None:
    # A poll interval far beyond the assertion: only the notification can wake it in time.
    consumer_broker = make_broker(poll_interval=30)
    producer_broker = make_broker()
    declare(consumer_broker)
    job = declare(producer_broker)
    consumer = consumer_broker.consume(QUEUE, prefetch=1, timeout=5000)
    message = send_to_idle_consumer(consumer, job, 7)
    consumer.ack(message)
    consumer.close()


def test_next_returns_none_within_its_timeout_on_an_empty_queue(
    make_broker: Callable[..., PostgresBroker],
) -> None:
    broker = make_broker(poll_interval=30)
    declare(broker)
    consumer = broker.consume(QUEUE, prefetch=4, timeout=200)
    started = time.monotonic()
    assert next(consumer) is None
    assert time.monotonic() - started < 2.0
    consumer.close()


def test_parked_messages_wait_for_a_wake_up(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    broker = make_broker(poll_interval=30)
    job = declare(broker)
    parked = broker.enqueue_parked(job.message(1))
    discarded = broker.enqueue_parked(job.message(2))
    consumer = broker.consume(QUEUE, prefetch=4, timeout=100)

    # Nobody claims a parked message, and join does not wait for it.
    assert next(consumer) is None
    broker.join(QUEUE, timeout=1000)

    broker.discard(discarded)
    assert broker.wake(discarded) is False
    assert broker.wake(parked) is True
    woken = wait_until(lambda: next(consumer), timeout=5, message="the woken message")
    assert isinstance(woken, PostgresMessageProxy)
    assert (woken.row_id, woken.args) == (parked, (1,))
    # A running message cannot be woken (or discarded) under its consumer.
    assert broker.wake(parked) is False
    broker.discard(parked)
    consumer.ack(woken)
    consumer.close()
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


def _consume_one_in_child(broker: PostgresBroker, report: Any, done: Any) -> None:
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    message = None
    while message is None:
        message = next(consumer)
    assert isinstance(message, PostgresMessageProxy)
    report.put((str(broker.worker_id), message.row_id))
    done.wait(30)
    consumer.ack(message)
    consumer.close()
    broker.close()


def test_forked_processes_are_separate_workers(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    job = declare(broker)
    job.send(1)
    job.send(2)  # the parent has used its connections before forking
    context = multiprocessing.get_context("fork")
    report, done = context.Queue(), context.Event()
    children = [
        context.Process(target=_consume_one_in_child, args=(broker, report, done)) for _ in range(2)
    ]
    for child in children:
        child.start()
    try:
        got = [report.get(timeout=30) for _ in children]
        # Each holds its lease under its own worker row.
        assert len({worker for worker, _ in got}) == 2
        assert sorted(row for _, row in got) == sorted(
            r for (r,) in db.execute(f"SELECT id FROM {schema}.messages").fetchall()
        )
        assert scalar(db, schema, "SELECT count(*) FROM {s}.workers") == 2
        assert scalar(db, schema, "SELECT count(DISTINCT lease_owner) FROM {s}.messages") == 2
    finally:
        done.set()
        for child in children:
            child.join(30)
    assert [child.exitcode for child in children] == [0, 0]
    broker.join(QUEUE, timeout=5000)


def test_a_consumer_keeps_waking_up_after_its_listener_session_is_cut(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    consumer_broker = make_broker(poll_interval=30)
    producer = make_broker()
    declare(consumer_broker)
    job = declare(producer)
    consumer = consumer_broker.consume(QUEUE, prefetch=1, timeout=5000)
    worker_id = consumer_broker.worker_id
    old_pid = scalar(db, schema, "SELECT backend_pid FROM {s}.workers WHERE id = %s", worker_id)
    db.execute("SELECT pg_terminate_backend(%s)", (old_pid,))

    # It reconnects and registers its new session under the same worker row.
    wait_until(
        lambda: (
            scalar(db, schema, "SELECT backend_pid FROM {s}.workers WHERE id = %s", worker_id)
            not in (None, old_pid)
        ),
        message="the listener to reconnect",
    )
    send_to_idle_consumer(consumer, job, 1)
