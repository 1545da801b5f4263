"""Enqueueing: inside the caller's transaction, in batches, and refusing bad input clearly."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import dramatiq
import psycopg
import pytest
from dramatiq import Message, Worker

import broker_pg
from broker_pg import PostgresBroker
from tests.support import rows, scalar, wait_until


class Boom(Exception):
    pass


def message_count(db: psycopg.Connection, schema: str) -> int:
    return scalar(db, schema, "SELECT count(*) FROM {s}.messages")


def orders_and_ship(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> tuple[dramatiq.Actor, list[int]]:
    """Create an ``orders`` table and a ``ship`` actor; return it and the orders it shipped."""
    db.execute(f"CREATE TABLE {schema}.orders (id integer PRIMARY KEY)")
    delivered: list[int] = []

    @dramatiq.actor(broker=broker)
    def ship(order_id: int) -> None:
        delivered.append(order_id)

    return ship, delivered


def test_transactional_enqueue_commits_with_the_callers_writes(
    broker: PostgresBroker,
    start_worker: Callable[..., Worker],
    database_url: str,
    db: psycopg.Connection,
    schema: str,
) -> None:
    ship, delivered = orders_and_ship(broker, db, schema)
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute(f"INSERT INTO {schema}.orders VALUES (1)")
        with broker.transaction(conn):
            ship.send(1)
        # Not visible to anyone else before the commit.
        assert message_count(db, schema) == 0
    assert message_count(db, schema) == 1

    start_worker(broker)
    broker.join(ship.queue_name, timeout=10_000)
    assert delivered == [1]


def test_transactional_enqueue_rolls_back_with_the_callers_writes(
    broker: PostgresBroker,
    start_worker: Callable[..., Worker],
    database_url: str,
    db: psycopg.Connection,
    schema: str,
) -> None:
    ship, delivered = orders_and_ship(broker, db, schema)
    start_worker(broker)
    with pytest.raises(Boom), psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute(f"INSERT INTO {schema}.orders VALUES (2)")
        with broker.transaction(conn):
            ship.send(2)
            ship.send_with_options(args=(3,), delay=10)
        raise Boom

    assert message_count(db, schema) == 0
    assert scalar(db, schema, "SELECT count(*) FROM {s}.orders") == 0
    # Sends outside the block go through the broker's own connections again.
    ship.send(4)
    broker.join(ship.queue_name, timeout=10_000)
    assert delivered == [4]


def test_batch_writes_at_block_exit(
    broker: PostgresBroker,
    start_worker: Callable[..., Worker],
    db: psycopg.Connection,
    schema: str,
) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="bulk")
    def item(n: int) -> None:
        with lock:
            seen.append(n)

    @dramatiq.actor(broker=broker, queue_name="bulk_urgent", priority=-5)
    def urgent(n: int) -> None:
        with lock:
            seen.append(n)

    with broker.batch():
        for n in range(100):
            item.send(n)
        urgent.send(100)
        item.send_with_options(args=(101,), delay=50)
        assert message_count(db, schema) == 0
    stored = dict(
        rows(db, schema, "SELECT queue_name, count(*) FROM {s}.messages GROUP BY queue_name")
    )
    assert stored == {"bulk": 101, "bulk_urgent": 1}
    urgent_priority = "SELECT priority FROM {s}.messages WHERE queue_name = 'bulk_urgent'"
    assert scalar(db, schema, urgent_priority) == -5

    start_worker(broker)
    broker.join("bulk", timeout=10_000)
    broker.join("bulk_urgent", timeout=10_000)
    assert sorted(seen) == list(range(102))


def test_batch_that_raises_enqueues_nothing(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    @dramatiq.actor(broker=broker)
    def item(n: int) -> None:
        pass

    with pytest.raises(Boom), broker.batch():
        for n in range(10):
            item.send(n)
        raise Boom
    assert message_count(db, schema) == 0

    item.send(1)
    assert message_count(db, schema) == 1


def test_batch_inside_a_transaction_follows_the_transaction(
    broker: PostgresBroker, database_url: str, db: psycopg.Connection, schema: str
) -> None:
    @dramatiq.actor(broker=broker)
    def item(n: int) -> None:
        pass

    with pytest.raises(Boom), psycopg.connect(database_url) as conn, conn.transaction():
        with broker.transaction(conn), broker.batch():
            item.send(1)
            item.send(2)
        raise Boom
    assert message_count(db, schema) == 0

    with psycopg.connect(database_url) as conn, conn.transaction():
        with broker.transaction(conn), broker.batch():
            item.send(1)
            item.send(2)
        assert message_count(db, schema) == 0
    assert message_count(db, schema) == 2


def test_enqueue_routes_are_per_thread(
    broker: PostgresBroker, database_url: str, db: psycopg.Connection, schema: str
) -> None:
    @dramatiq.actor(broker=broker)
    def item(n: int) -> None:
        pass

    with pytest.raises(Boom), psycopg.connect(database_url) as conn, conn.transaction():
        with broker.transaction(conn):
            item.send(1)
            # Another thread sending meanwhile is not part of this transaction.
            other = threading.Thread(target=item.send, args=(2,))
            other.start()
            other.join()
        raise Boom
    [(payload,)] = rows(db, schema, "SELECT payload FROM {s}.messages")
    assert Message.decode(payload).args == (2,)


def test_an_unencodable_argument_is_refused_by_name(
    broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    @dramatiq.actor(broker=broker)
    def take(a: object, b: object = None) -> None:
        pass

    with pytest.raises(broker_pg.MessageEncodeError, match="argument 0"):
        take.send(object())
    with pytest.raises(broker_pg.MessageEncodeError, match="'b'"):
        take.send(1, b={1, 2})
    with pytest.raises(broker_pg.MessageEncodeError), broker.batch():
        take.send(1)
        take.send(object())
    assert message_count(db, schema) == 0


def test_an_unreachable_database_names_the_server() -> None:
    broker = PostgresBroker("postgresql://nobody@127.0.0.1:1/x")
    try:

        @dramatiq.actor(broker=broker)
        def nowhere() -> None:
            pass

        with pytest.raises(broker_pg.DatabaseUnavailable, match=re.escape("127.0.0.1:1")):
            nowhere.send()
    finally:
        broker.close()


@pytest.mark.parametrize("bad", ["a;drop", "", "1abc", 'x"y', "a b", "a" * 64])
def test_an_invalid_schema_name_is_a_configuration_error(database_url: str, bad: str) -> None:
    with pytest.raises(broker_pg.ConfigurationError, match="schema"):
        PostgresBroker(database_url, schema=bad)
    with pytest.raises(broker_pg.ConfigurationError):
        broker_pg.PostgresBackend(database_url, schema=bad)
    with pytest.raises(broker_pg.ConfigurationError):
        broker_pg.migrate(database_url, schema=bad)


def test_odd_queue_names_are_stored_as_data(
    broker: PostgresBroker,
    start_worker: Callable[..., Worker],
    db: psycopg.Connection,
    schema: str,
) -> None:
    # Dramatiq validates actor queue names; the broker itself takes any string as data.
    odd = 'it\'s a "queue"; DROP TABLE messages; --'
    with pytest.raises(ValueError):
        dramatiq.actor(lambda: None, broker=broker, queue_name=odd)

    broker.declare_queue(odd)
    message = Message(queue_name=odd, actor_name="nobody", args=(), kwargs={}, options={})
    broker.enqueue(message)
    assert rows(db, schema, "SELECT queue_name, message_id FROM {s}.messages") == [
        (odd, message.message_id)
    ]
    consumer = broker.consume(odd, prefetch=1, timeout=1000)
    received = next(consumer)
    assert received is not None and received.message_id == message.message_id
    consumer.ack(received)
    consumer.close()
    broker.join(odd, timeout=5000)
    broker.flush(odd)
    assert message_count(db, schema) == 0


def test_concurrent_sends_share_a_commit_and_each_returns_once_committed(
    broker: PostgresBroker, database_url: str, db: psycopg.Connection, schema: str
) -> None:
    @dramatiq.actor(broker=broker)
    def job(n: int) -> None:
        pass

    seen_at_return: dict[int, bool] = {}

    def send(n: int) -> None:
        message = job.send(n)
        with psycopg.connect(database_url, autocommit=True) as other:
            seen_at_return[n] = (
                scalar(
                    other,
                    schema,
                    "SELECT count(*) FROM {s}.messages WHERE message_id = %s",
                    message.message_id,
                )
                == 1
            )

    # A lock makes the first send wait inside its INSERT; the others queue behind it.
    with db.transaction():
        db.execute(f"LOCK TABLE {schema}.messages IN SHARE MODE")
        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(broker._sends._line) == 7, message="seven sends in line")
    for thread in threads:
        thread.join(10)

    assert seen_at_return == {n: True for n in range(8)}
    # Rows written by one transaction share its id: the seven queued sends took one.
    transactions = scalar(db, schema, "SELECT count(DISTINCT xmin::text) FROM {s}.messages")
    assert transactions == 2
