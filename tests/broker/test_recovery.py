"""Leases: crashed, hung and stopping workers never lose a message.

Worker processes here are real ``dramatiq`` CLI processes (or small consumer
processes) killed with real signals.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator

import dramatiq
import psycopg
import pytest
from dramatiq import Message

from broker_pg import PostgresBroker, PostgresMessageProxy
from tests.broker.apps.actors import QUEUE, create_tables, declare_actors, gate_key
from tests.support import Processes, rows, scalar, wait_until

#: The worker app whose actors block on the gate.
GATED_WORKER = "tests.broker.apps.gated_worker"


@pytest.fixture
def gate(database_url: str, schema: str) -> Iterator[Callable[[], None]]:
    """Hold the gate the ``gated`` actors wait on; call the returned function to open it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (gate_key(schema),))
        opened = False

        def open_gate() -> None:
            nonlocal opened
            if not opened:
                conn.execute("SELECT pg_advisory_unlock(%s)", (gate_key(schema),))
                opened = True

        yield open_gate
        open_gate()


@pytest.fixture
def gated(
    broker: PostgresBroker, db: psycopg.Connection, schema: str, database_url: str
) -> dramatiq.Actor:
    create_tables(db, schema)
    return declare_actors(broker, database_url, schema)


def read_line(process: subprocess.Popen[bytes], processes: Processes, timeout: float = 30) -> str:
    """The next line the process prints, or fail after ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output from {process.args}:\n{processes.output()}"
    return process.stdout.readline().decode()


def started(db: psycopg.Connection, schema: str) -> Counter[int]:
    return Counter(n for (n,) in rows(db, schema, "SELECT n FROM {s}.test_starts"))


def done(db: psycopg.Connection, schema: str) -> Counter[int]:
    return Counter(n for (n,) in rows(db, schema, "SELECT n FROM {s}.test_done"))


def count(db: psycopg.Connection, schema: str, state: str) -> int:
    return scalar(db, schema, "SELECT count(*) FROM {s}.messages WHERE state = %s", state)


def start_busy_worker(
    processes: Processes, db: psycopg.Connection, schema: str, *, threads: int
) -> subprocess.Popen[bytes]:
    """Start a ``gated_worker`` process; return once ``threads`` actors run and as many wait.

    Dramatiq prefetches twice as many messages as a worker has threads: the ones running
    and as many more.
    """
    worker = processes.dramatiq_worker(GATED_WORKER, threads=threads)
    wait_until(
        lambda: len(started(db, schema)) == threads,
        timeout=30,
        message=lambda: f"{threads} actors in flight; worker output:\n{processes.output()}",
    )
    wait_until(lambda: count(db, schema, "claimed") == 2 * threads, message="the prefetch to fill")
    return worker


def claim_one(processes: Processes, *, max_deliveries: int) -> subprocess.Popen[bytes]:
    """Start a ``claim_one`` process: it prints the message it holds on stdout, then hangs."""
    return processes.start(
        [sys.executable, "-m", "tests.broker.apps.claim_one"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"ZART_TEST_MAX_DELIVERIES": str(max_deliveries)},
    )


def test_a_sigkilled_worker_loses_no_message(
    broker: PostgresBroker,
    gated: dramatiq.Actor,
    gate: Callable[[], None],
    processes: Processes,
    db: psycopg.Connection,
    schema: str,
) -> None:
    total = 12
    for n in range(total):
        gated.send(n)
    # Four running, four more prefetched: eight leases held by the process about to die.
    first = start_busy_worker(processes, db, schema, threads=4)
    in_flight = set(started(db, schema))
    processes.kill(first)

    assert count(db, schema, "claimed") == 8
    assert done(db, schema) == Counter()

    gate()
    second = processes.dramatiq_worker(GATED_WORKER, threads=4)
    broker.join(QUEUE, timeout=30_000)

    assert set(done(db, schema)) == set(range(total)), processes.output()
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0
    assert scalar(db, schema, "SELECT count(*) FROM {s}.dead_letters") == 0
    # The messages cut off mid-run were run again, to completion.
    starts = started(db, schema)
    assert {n for n, times in starts.items() if times == 2} == in_flight
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0


def test_sigterm_hands_prefetched_messages_back_at_once(
    broker: PostgresBroker,
    gated: dramatiq.Actor,
    gate: Callable[[], None],
    processes: Processes,
    db: psycopg.Connection,
    schema: str,
) -> None:
    total = 10
    for n in range(total):
        gated.send(n)
    worker = start_busy_worker(processes, db, schema, threads=2)
    running = set(started(db, schema))
    claimed = rows(
        db, schema, "SELECT id, deliveries, payload FROM {s}.messages WHERE state = 'claimed'"
    )
    prefetched = {
        row_id: deliveries
        for row_id, deliveries, payload in claimed
        if Message.decode(payload).args[0] not in running
    }
    assert len(prefetched) == 2

    worker.send_signal(signal.SIGTERM)
    wait_until(
        lambda: scalar(db, schema, "SELECT count(*) FROM {s}.test_events") == 1,
        timeout=30,
        message="the worker to begin its shutdown",
    )
    gate()  # the running actors may finish now; nothing new may start
    assert worker.wait(30) == 0, processes.output()

    # Nobody else consumes this queue: only the stopping worker can have handed them back.
    returned = rows(
        db,
        schema,
        "SELECT id, state, lease_owner, deliveries FROM {s}.messages WHERE id = ANY(%s)",
        list(prefetched),
    )
    assert sorted(returned) == sorted(
        (row_id, "queued", None, deliveries - 1) for row_id, deliveries in prefetched.items()
    )
    assert done(db, schema) == Counter(running)
    assert count(db, schema, "queued") == total - len(running)
    assert count(db, schema, "claimed") == 0
    assert scalar(db, schema, "SELECT count(*) FROM {s}.workers") == 0


def test_a_message_that_kills_every_worker_ends_in_dead_letters(
    broker: PostgresBroker,
    gated: dramatiq.Actor,
    processes: Processes,
    make_broker: Callable[..., PostgresBroker],
    db: psycopg.Connection,
    schema: str,
) -> None:
    max_deliveries = 2
    # A live worker that recovers the leases of dead ones, quickly.
    recoverer = make_broker(max_deliveries=max_deliveries, heartbeat_interval=0.05)
    recoverer.declare_queue("elsewhere")
    recoverer.consume("elsewhere").close()

    message = gated.send(0)
    for delivery in range(1, max_deliveries + 1):
        victim = claim_one(processes, max_deliveries=max_deliveries)
        row_id, got_delivery = map(int, read_line(victim, processes).split())
        assert got_delivery == delivery, processes.output()
        processes.kill(victim)

    dead = wait_until(
        lambda: recoverer.list_dead_letters(QUEUE), message="the message to be dead-lettered"
    )
    assert [(d.id, d.message_id, d.deliveries) for d in dead] == [
        (row_id, message.message_id, max_deliveries)
    ]
    assert dead[0].error
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


def test_a_worker_with_a_stale_heartbeat_loses_its_leases(
    make_broker: Callable[..., PostgresBroker], db: psycopg.Connection, schema: str
) -> None:
    # A hung worker: its session lives on, but it never heartbeats again. Its own
    # lease (stored with its worker row) is what the others judge it by.
    hung = make_broker(heartbeat_interval=3600, lease_timeout=0.5)
    hung.declare_queue(QUEUE)
    healthy = make_broker(heartbeat_interval=0.05)
    healthy.declare_queue(QUEUE)

    message = Message(queue_name=QUEUE, actor_name="gated", args=(1,), kwargs={}, options={})
    hung.enqueue(message)
    hung_consumer = hung.consume(QUEUE, prefetch=1, timeout=1000)
    first = wait_until(lambda: next(hung_consumer), message="the first delivery")
    assert isinstance(first, PostgresMessageProxy)
    hung_session = scalar(
        db, schema, "SELECT backend_pid FROM {s}.workers WHERE id = %s", hung.worker_id
    )

    healthy_consumer = healthy.consume(QUEUE, prefetch=1, timeout=1000)
    second = wait_until(lambda: next(healthy_consumer), message="the redelivery")
    assert isinstance(second, PostgresMessageProxy)
    assert (second.row_id, second.delivery) == (first.row_id, first.delivery + 1)
    assert second.message_id == message.message_id
    # The hung worker's session is alive: the stale heartbeat alone condemned it.
    assert scalar(db, schema, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", hung_session)
    assert scalar(db, schema, "SELECT count(*) FROM {s}.workers WHERE id = %s", hung.worker_id) == 0

    # The hung worker waking up and acking its old lease must not delete the new one.
    hung_consumer.ack(first)
    hung_consumer.close()
    owner = scalar(db, schema, "SELECT lease_owner FROM {s}.messages WHERE id = %s", first.row_id)
    assert owner == healthy.worker_id
    healthy_consumer.ack(second)
    healthy_consumer.close()
    assert scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0


def test_a_worker_of_this_host_whose_process_is_gone_is_recovered_at_once(
    broker: PostgresBroker,
    gated: dramatiq.Actor,
    processes: Processes,
    make_broker: Callable[..., PostgresBroker],
    db: psycopg.Connection,
    schema: str,
) -> None:
    gated.send(0)
    victim = claim_one(processes, max_deliveries=5)
    row_id, _ = map(int, read_line(victim, processes).split())
    processes.kill(victim)
    # A worker starting on the same host: its grace for a vanished session is 11 s,
    # but the operating system says the process is gone.
    recoverer = make_broker(heartbeat_interval=10)
    recoverer.declare_queue(QUEUE)
    consumer = recoverer.consume(QUEUE, prefetch=1, timeout=100)
    again = wait_until(lambda: next(consumer), timeout=5, message="the message, recovered")
    assert isinstance(again, PostgresMessageProxy)
    assert (again.row_id, again.delivery) == (row_id, 2)
    consumer.ack(again)
    consumer.close()
