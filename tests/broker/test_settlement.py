"""Settling leases: nacks and hand-backs survive lost connections and rolled-back transactions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import psycopg
import pytest
from dramatiq import Message

from broker_pg import DatabaseUnavailable, PostgresBroker, PostgresMessageProxy
from tests.support import wait_until

QUEUE = "settle"
#: Names this module's broker sessions, so the tests cut only those.
APPLICATION = f"settle-{uuid.uuid4().hex[:8]}"


class Boom(Exception):
    pass


def send(broker: PostgresBroker, n: int) -> Message:
    return broker.enqueue(
        Message(queue_name=QUEUE, actor_name="nobody", args=(n,), kwargs={}, options={})
    )


def state_counts(db: psycopg.Connection, schema: str) -> dict[str, int]:
    return dict(
        db.execute(f"SELECT state, count(*) FROM {schema}.messages GROUP BY state").fetchall()
    )


def cut_pooled_connections(db: psycopg.Connection) -> None:
    """Terminate the test broker's pooled sessions; the next statement on each fails."""
    pids = [
        pid
        for (pid,) in db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APPLICATION,)
        ).fetchall()
    ]
    assert pids
    db.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    wait_until(
        lambda: db.execute(
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()[0],  # type: ignore[index]
        message="the sessions to end",
    )


def retry(operation: Callable[[], None]) -> None:
    """What Dramatiq's worker does when post-processing fails on a connection error."""
    for _ in range(20):
        try:
            operation()
            return
        except DatabaseUnavailable:
            continue
    operation()


@pytest.fixture
def broker(make_broker: Callable[..., PostgresBroker]) -> PostgresBroker:
    broker = make_broker(application_name=APPLICATION)
    broker.declare_queue(QUEUE)
    return broker


def test_a_nack_that_failed_on_a_lost_connection_can_be_retried(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    sent = send(broker, 1)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    message = wait_until(lambda: next(consumer), message="a delivery")
    message.fail()
    message.stuff_exception(ValueError("bad input"))

    cut_pooled_connections(db)
    with pytest.raises(DatabaseUnavailable):
        consumer.nack(message)
    retry(lambda: consumer.nack(message))

    assert [d.message_id for d in broker.list_dead_letters()] == [sent.message_id]
    assert state_counts(db, schema) == {}
    consumer.close()


def test_a_hand_back_that_failed_on_a_lost_connection_can_be_retried(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    send(broker, 1)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    message = wait_until(lambda: next(consumer), message="a delivery")

    cut_pooled_connections(db)
    with pytest.raises(DatabaseUnavailable):
        consumer.requeue([message])
    retry(lambda: consumer.requeue([message]))

    assert state_counts(db, schema) == {"queued": 1}
    # And the consumer's prefetch is whole again: it takes the message back.
    again = wait_until(lambda: next(consumer), message="the redelivery")
    assert again.message_id == message.message_id
    consumer.ack(again)
    consumer.close()
    assert state_counts(db, schema) == {}


def test_ack_within_a_rolled_back_transaction_leaves_the_lease_to_the_worker(
    broker: PostgresBroker, database_url: str, db: psycopg.Connection, schema: str
) -> None:
    send(broker, 1)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    message = wait_until(lambda: next(consumer), message="a delivery")
    assert isinstance(message, PostgresMessageProxy)

    with pytest.raises(Boom), psycopg.connect(database_url) as conn, conn.transaction():
        broker.ack_within(conn, message)
        raise Boom
    assert state_counts(db, schema) == {"claimed": 1}

    # The actor failed; the Worker then settles the delivery as usual.
    consumer.ack(message)
    consumer.close()
    assert state_counts(db, schema) == {}


def test_ack_within_a_committed_transaction_settles_the_lease_once(
    broker: PostgresBroker, database_url: str, db: psycopg.Connection, schema: str
) -> None:
    for n in range(3):
        send(broker, n)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    first = wait_until(lambda: next(consumer), message="a delivery")

    with psycopg.connect(database_url) as conn, conn.transaction():
        broker.ack_within(conn, first)
    assert state_counts(db, schema) == {"queued": 2}

    # The Worker's own ack afterwards changes nothing, and frees one prefetch slot only.
    consumer.ack(first)
    second = wait_until(lambda: next(consumer), message="the next delivery")
    assert second.message_id != first.message_id
    assert state_counts(db, schema) == {"queued": 1, "claimed": 1}
    consumer.ack(second)
    consumer.close()
    assert state_counts(db, schema) == {"queued": 1}


def test_after_the_server_drops_every_session_only_one_operation_fails(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    # Fill the pool with several idle connections.
    holding = threading.Barrier(4)

    def hold() -> None:
        with broker.db.connection():
            holding.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    cut_pooled_connections(db)
    with pytest.raises(DatabaseUnavailable):
        send(broker, 1)
    send(broker, 2)
    send(broker, 3)
    assert state_counts(db, schema) == {"queued": 2}
