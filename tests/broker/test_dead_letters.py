"""Dead letters: failed messages are kept with their error, listable, re-queueable and purgeable."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import dramatiq
import psycopg
from dramatiq import Message, Worker

from broker_pg import PostgresBroker
from tests.support import scalar, wait_until


def test_exhausted_retries_dead_letter_then_list_requeue_process_purge(
    broker: PostgresBroker,
    start_worker: Callable[..., Worker],
    db: psycopg.Connection,
    schema: str,
) -> None:
    healed = threading.Event()
    processed: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="fragile", max_retries=0)
    def fragile(n: int) -> None:
        if not healed.is_set():
            raise ValueError(f"cannot handle {n} yet")
        processed.append(n)

    @dramatiq.actor(broker=broker, queue_name="other", max_retries=0)
    def other() -> None:
        raise KeyError("other")

    sent = [fragile.send(n) for n in range(3)]
    other.send()
    start_worker(broker)
    broker.join("fragile", timeout=10_000, fail_fast=False)
    broker.join("other", timeout=10_000, fail_fast=False)

    letters = broker.list_dead_letters("fragile")
    assert sorted(d.message_id for d in letters) == sorted(m.message_id for m in sent)
    for letter in letters:
        assert letter.queue_name == "fragile"
        assert letter.actor_name == "fragile"
        assert letter.deliveries == 1
        assert letter.message is not None
        assert f"cannot handle {letter.message.args[0]} yet" in (letter.error or "")
        assert "ValueError" in (letter.error or "")
    assert len(broker.list_dead_letters()) == 4
    assert len(broker.list_dead_letters(limit=2)) == 2
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0

    # Fix the cause, re-queue one by id, then the rest of the queue.
    healed.set()
    assert broker.requeue_dead_letters([letters[0].id]) == 1
    broker.join("fragile", timeout=10_000)
    assert letters[0].message is not None
    assert processed == [letters[0].message.args[0]]
    assert broker.requeue_dead_letters(queue_name="fragile") == 2
    broker.join("fragile", timeout=10_000)
    assert sorted(processed) == [0, 1, 2]
    assert broker.list_dead_letters("fragile") == []

    # The other queue's letter is untouched until purged.
    [remaining] = broker.list_dead_letters()
    assert remaining.queue_name == "other"
    assert broker.purge_dead_letters(queue_name="other", older_than=timedelta(hours=1)) == 0
    assert broker.purge_dead_letters(queue_name="fragile") == 0
    assert broker.purge_dead_letters(queue_name="other") == 1
    assert broker.list_dead_letters() == []


def test_requeued_dead_letters_keep_their_message(
    broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    received: list[Message] = []
    fail = threading.Event()
    fail.set()

    @dramatiq.actor(broker=broker, max_retries=0)
    def picky(*args: object, **kwargs: object) -> None:
        if fail.is_set():
            raise RuntimeError("no")

    class Capture(dramatiq.Middleware):
        def after_process_message(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
            if exception is None:
                received.append(message._message)

    broker.add_middleware(Capture())
    sent = picky.send_with_options(args=(1, "a"), kwargs={"b": [2]}, on_success="picky")
    start_worker(broker)
    broker.join(picky.queue_name, timeout=10_000, fail_fast=False)
    fail.clear()
    assert broker.requeue_dead_letters() == 1
    wait_until(lambda: received, message="the re-queued message to run")
    broker.join(picky.queue_name, timeout=10_000)

    got = received[0]
    assert (got.message_id, got.args, got.kwargs) == (sent.message_id, (1, "a"), {"b": [2]})
    assert got.options["on_success"] == "picky"


def test_a_message_for_an_unknown_actor_is_dead_lettered(
    broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    @dramatiq.actor(broker=broker)
    def known() -> None:
        pass

    ghost = Message(queue_name=known.queue_name, actor_name="ghost", args=(), kwargs={}, options={})
    broker.enqueue(ghost)
    start_worker(broker)
    broker.join(known.queue_name, timeout=10_000, fail_fast=False)

    [letter] = broker.list_dead_letters()
    assert (letter.message_id, letter.actor_name) == (ghost.message_id, "ghost")
    assert "ghost" in (letter.error or "")


def test_an_undecodable_row_is_dead_lettered_not_looped(
    broker: PostgresBroker,
    start_worker: Callable[..., Worker],
    db: psycopg.Connection,
    schema: str,
) -> None:
    ran = threading.Event()

    @dramatiq.actor(broker=broker)
    def fine() -> None:
        ran.set()

    # Written by something other than this broker, and not a Dramatiq message.
    scalar(
        db,
        schema,
        "INSERT INTO {s}.messages (queue_name, message_id, actor_name, payload)"
        " VALUES (%s, 'garbage', 'fine', %s) RETURNING id",
        fine.queue_name,
        b"\x00not json",
    )
    fine.send()
    start_worker(broker)
    broker.join(fine.queue_name, timeout=10_000, fail_fast=False)

    assert ran.is_set()
    [letter] = broker.list_dead_letters()
    assert letter.message_id == "garbage"
    assert letter.message is None
    assert letter.error


def test_workers_purge_dead_letters_older_than_their_ttl(
    broker: PostgresBroker,
    make_broker: Callable[..., PostgresBroker],
    start_worker: Callable[..., Worker],
    db: psycopg.Connection,
    schema: str,
) -> None:
    @dramatiq.actor(broker=broker, max_retries=0)
    def doomed(n: int) -> None:
        raise RuntimeError(f"doomed {n}")

    old, recent = doomed.send(1), doomed.send(2)
    start_worker(broker)
    broker.join(doomed.queue_name, timeout=10_000, fail_fast=False)
    assert len(broker.list_dead_letters()) == 2
    db.execute(
        f"UPDATE {schema}.dead_letters SET dead_at = now() - interval '2 hours'"
        " WHERE message_id = %s",
        (old.message_id,),
    )

    # Any consuming process does the maintenance.
    janitor = make_broker(dead_letter_ttl=timedelta(hours=1), heartbeat_interval=0.05)
    janitor.declare_queue("janitor")
    janitor.consume("janitor").close()
    wait_until(
        lambda: len(broker.list_dead_letters()) == 1, message="the expired dead letter to go"
    )
    assert [d.message_id for d in broker.list_dead_letters()] == [recent.message_id]
