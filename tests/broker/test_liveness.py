"""Liveness is proven by heartbeats; a wrong guess is made harmless by fencing.

A worker whose session is cut but which reconnects in time keeps its identity
and its leases. One that was presumed lost continues under a new identity:
it claims nothing under the old one and its late settlements are refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import pytest
from dramatiq import Message

from broker_pg import DatabaseUnavailable, PostgresBroker, PostgresMessageProxy
from broker_pg.consumer import Settlements
from tests.support import scalar, wait_until

QUEUE = "liveness"


def a_message() -> Message:
    return Message(queue_name=QUEUE, actor_name="noop", args=(), kwargs={}, options={})


def lease(db: psycopg.Connection, schema: str, row_id: int) -> tuple:
    return (
        scalar(db, schema, "SELECT state FROM {s}.messages WHERE id = %s", row_id),
        scalar(db, schema, "SELECT lease_owner FROM {s}.messages WHERE id = %s", row_id),
        scalar(db, schema, "SELECT deliveries FROM {s}.messages WHERE id = %s", row_id),
    )


def claim(broker: PostgresBroker, *, prefetch: int = 1) -> PostgresMessageProxy:
    consumer = broker.consume(QUEUE, prefetch=prefetch, timeout=100)
    message = wait_until(lambda: next(consumer), message="a delivery")
    assert isinstance(message, PostgresMessageProxy)
    return message


def test_a_worker_whose_sessions_are_cut_keeps_its_identity_and_leases(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    victim = make_broker(heartbeat_interval=0.1, application_name=f"victim-{uuid.uuid4().hex}")
    victim.declare_queue(QUEUE)
    watcher = make_broker(heartbeat_interval=0.05)  # reaps lost workers every 50 ms
    watcher.declare_queue(QUEUE)
    watcher.consume(QUEUE, timeout=100).close()
    victim.enqueue(a_message())
    held = claim(victim)
    identity = victim.worker_id
    session = scalar(db, schema, "SELECT backend_pid FROM {s}.workers WHERE id = %s", identity)

    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"{victim.db.application_name}%",),
    )
    wait_until(
        lambda: (
            scalar(db, schema, "SELECT backend_pid FROM {s}.workers WHERE id = %s", identity)
            not in (None, session)
        ),
        message="the victim to reconnect under its identity",
    )
    # Let the watcher reap for longer than the grace a dead session gets.
    since = db.execute("SELECT now()").fetchone()[0]
    wait_until(
        lambda: db.execute(
            "SELECT now() > %s + %s * interval '1 second'",
            (since, victim.presence.session_grace + 0.5),
        ).fetchone()[0],
        message="the grace to pass",
    )
    assert victim.worker_id == identity
    assert lease(db, schema, held.row_id) == ("claimed", identity, 1)


def test_a_worker_presumed_lost_continues_as_another_and_its_late_ack_is_refused(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    lost = make_broker(heartbeat_interval=0.1)
    lost.declare_queue(QUEUE)
    other = make_broker(heartbeat_interval=0.1)
    other.declare_queue(QUEUE)
    lost.enqueue(a_message())
    held = claim(lost)
    old = lost.worker_id
    # Presumed lost (say it stalled past its lease): its row is reaped.
    db.execute(f'DELETE FROM "{schema}".workers WHERE id = %s', (old,))

    again = claim(other)
    assert (again.row_id, again.delivery) == (held.row_id, 2)
    wait_until(lambda: lost.worker_id != old, message="a new identity")
    assert scalar(db, schema, "SELECT count(*) FROM {s}.workers WHERE id = %s", old) == 0
    consumer = lost.consume(QUEUE, prefetch=1, timeout=100)
    consumer.ack(held)  # late: the message is someone else's now
    consumer.close()
    assert lease(db, schema, held.row_id) == ("claimed", other.worker_id, 2)


def test_no_claim_is_made_under_an_identity_that_was_reaped(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    stalled = make_broker(heartbeat_interval=3600)  # never notices by itself
    stalled.declare_queue(QUEUE)
    stalled.consume(QUEUE, timeout=100).close()  # registers it
    stalled.enqueue(a_message())
    db.execute(f'DELETE FROM "{schema}".workers WHERE id = %s', (stalled.worker_id,))
    claimed = stalled.settle_and_claim(QUEUE, Settlements([], []), 1, uuid.uuid4())
    assert claimed.rows == []
    assert scalar(db, schema, "SELECT state FROM {s}.messages") == "queued"


def test_a_claim_whose_reply_was_lost_is_handed_back(
    make_broker: Callable[..., PostgresBroker],
    db: psycopg.Connection,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = make_broker()
    broker.declare_queue(QUEUE)
    broker.enqueue(a_message())
    consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
    claim_for_real = broker.settle_and_claim

    def reply_lost(*args, **kwargs):
        claim_for_real(*args, **kwargs)  # committed
        raise DatabaseUnavailable("the connection broke before the reply")

    monkeypatch.setattr(broker, "settle_and_claim", reply_lost)
    assert next(consumer) is None
    assert scalar(db, schema, "SELECT state FROM {s}.messages") == "claimed"
    monkeypatch.setattr(broker, "settle_and_claim", claim_for_real)
    message = wait_until(lambda: next(consumer), message="the message handed back and claimed")
    assert isinstance(message, PostgresMessageProxy)
    assert message.delivery == 1  # the lost claim did not count as a delivery


def test_a_requeue_names_the_delivery_it_hands_back(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    broker = make_broker()
    broker.declare_queue(QUEUE)
    broker.enqueue(a_message())
    first = claim(broker)
    # Its lease lapsed and it was delivered again, to this same worker.
    db.execute(
        f"UPDATE \"{schema}\".messages SET state = 'queued', lease_owner = NULL WHERE id = %s",
        (first.row_id,),
    )
    second = claim(broker, prefetch=2)  # the first delivery is still counted in flight
    assert (second.row_id, second.delivery) == (first.row_id, 2)
    broker.consume(QUEUE, timeout=100).requeue([first])  # the old delivery's hand-back
    assert lease(db, schema, first.row_id) == ("claimed", broker.worker_id, 2)


def test_due_times_use_the_statement_clock_inside_a_long_transaction(
    make_broker: Callable[..., PostgresBroker], database_url: str, db, schema: str
) -> None:
    broker = make_broker()
    broker.declare_queue(QUEUE)
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SELECT pg_sleep(0.5)")  # the transaction has been open a while
        with broker.transaction(conn):
            broker.enqueue(a_message(), delay=1000)
    due_after = scalar(db, schema, "SELECT extract(epoch FROM eta - enqueued_at) FROM {s}.messages")
    assert due_after >= 1.5  # 0.5 s into the transaction, plus the 1 s delay
