"""Driver-side adapters: what differs between brokers, and nothing else.

Every broker gets the same measurements; a `Target` only knows how to set its broker up,
bulk-enqueue (the API differs), give a producer thread its client, flush, wait for an empty
queue, and run a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

from dramatiq import Actor, Broker, Worker, group

from benchmarks import workers
from benchmarks.apps.actors import QUEUE, BenchActors
from benchmarks.apps.factories import make_broker, setting

Progress = Callable[[str], None]


class Unavailable(Exception):
    """The broker cannot be benchmarked here: not installed, not reachable, not migrated."""


@dataclass(frozen=True)
class Settings:
    count: int
    processes: int
    threads: int
    latency_count: int
    latency_gap_ms: float
    delay_count: int
    delay_ms: int
    delay_spread_s: float
    drain_timeout: float
    dramatiq_pg_backlog: int
    send_threads: int
    burst: int


def sql(query: str, params: dict[str, Any] | tuple[Any, ...] | None = None) -> list[tuple]:
    """One autocommitted statement on the benchmark database; its rows, if any."""
    import psycopg

    with psycopg.connect(setting("ZBENCH_PG_URL"), autocommit=True) as conn:
        cursor = conn.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def wait_until_zero(query: str, params: tuple[Any, ...], timeout_ms: int, what: str) -> None:
    """Poll a count(*) until it is zero, as `broker.join` does; TimeoutError past the timeout."""
    deadline = time.monotonic() + timeout_ms / 1000
    while sql(query, params)[0][0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not empty after {timeout_ms} ms")
        time.sleep(0.01)


def delay_until(due_at: float) -> int:
    """The delay, in ms, that makes a message sent now due at `due_at` (epoch seconds)."""
    return max(0, round((due_at - time.time()) * 1000))


def short(exc: BaseException, limit: int = 120) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:limit]


class Target:
    name = ""
    label = ""
    app_module = ""
    # Whether the bulk-enqueued messages stay in the broker to become the drain backlog.
    keeps_backlog = True
    # The burst is sent in chunks of this many messages, each chunk inside `bulk()`.
    burst_chunk = 1
    # Another target whose broker this one measures again, differently (a second pass).
    baseline: str | None = None

    def note(self, settings: Settings) -> str:
        """What the output must say about how this broker was measured differently."""
        return ""

    def connect(self) -> Broker:
        try:
            self.prepare()
            broker = make_broker(self.baseline or self.name)
            self.probe(broker)
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(short(exc)) from exc
        return broker

    def prepare(self) -> None:
        """Create whatever the broker needs on the server (schemas, tables)."""

    def probe(self, broker: Broker) -> None:
        """Fail fast, inside `connect`, when the server is unreachable."""

    def setup(self, broker: Broker, actors: BenchActors, progress: Progress) -> None:
        """Put the broker in the state this pass measures (before the first measurement)."""

    def teardown(self, broker: Broker) -> None:
        """Undo `setup` (after the final flush, whatever happened)."""

    def bulk_enqueue(self, broker: Broker, actor: Actor, count: int) -> None:
        # Dramatiq's own bulk API; on the peers it is one enqueue per message underneath.
        group([actor.message(seq) for seq in range(count)], broker=broker).run()

    def bulk(self, broker: Broker) -> AbstractContextManager[Any]:
        """Where sends are written together, if the broker can (the peers cannot)."""
        return nullcontext()

    def producer(self, broker: Broker) -> AbstractContextManager[Any]:
        """Entered by each producer thread before its timed sends, left after all are done."""
        return nullcontext()

    def send_burst(self, broker: Broker, actor: Actor, due_at: float, count: int) -> float:
        """Send `count` messages due at `due_at`; returns the longest chunk's send time.

        A message's delay is computed when it is sent and its due time fixed when it is
        written, so that time bounds how much later than `due_at` any message is due.
        """
        skew = 0.0
        for first in range(0, count, self.burst_chunk):
            began = time.time()
            with self.bulk(broker):
                for _ in range(min(self.burst_chunk, count - first)):
                    actor.send_with_options(args=(due_at,), delay=delay_until(due_at))
            skew = max(skew, time.time() - began)
        return skew

    def flush(self, broker: Broker) -> None:
        broker.flush_all()

    def join(self, broker: Broker, timeout_ms: int) -> None:
        broker.join(QUEUE, timeout=timeout_ms)

    def close(self, broker: Broker) -> None:
        broker.close()

    @contextmanager
    def drain_worker(self, settings: Settings) -> Iterator[workers.WorkerProcess]:
        with workers.running(self.app_module, settings.processes, settings.threads, {}) as proc:
            yield proc

    @contextmanager
    def idle_worker(self, broker: Broker, settings: Settings) -> Iterator[None]:
        with workers.running(self.app_module, settings.processes, settings.threads, {}) as proc:
            proc.wait_ready()
            yield

    def drain_count(self, settings: Settings) -> int:
        return settings.count


def messages_table() -> str:
    return f'"{setting("ZBENCH_PG_SCHEMA")}".messages'


def settle_table() -> None:
    """Give the messages table its own statistics, and owe no checkpoint for its writes."""
    # Statistics of this pass's table, as autovacuum would give them, not those an earlier
    # pass left (autovacuum may be off: it is on the shared server). They decide the
    # claim's plans.
    sql(f"VACUUM (ANALYZE) {messages_table()}")
    # A million parked rows are ~500 MB of WAL: without this, PostgreSQL checkpoints
    # (max_wal_size) during the pass, and its full-page writes slow what is measured.
    with suppress(Exception):  # a role without pg_checkpoint: measure as it is
        sql("CHECKPOINT")


class PostgresTarget(Target):
    name = "postgres"
    label = "PostgresBroker (broker_pg)"
    app_module = "benchmarks.apps.postgres_app"
    # broker_pg fixes a delayed row's due time when the batch is written: small chunks
    # keep the due times within a few ms of each other.
    burst_chunk = 100

    def note(self, settings: Settings) -> str:
        if not settings.burst:
            return ""
        return f"postgres: the burst is sent with broker.batch() per {self.burst_chunk} messages"

    def setup(self, broker: Broker, actors: BenchActors, progress: Progress) -> None:
        broker.flush_all()
        settle_table()

    def prepare(self) -> None:
        try:
            import broker_pg
        except ImportError as exc:
            raise Unavailable(f"broker_pg not importable: {short(exc)}") from exc
        broker_pg.migrate(setting("ZBENCH_PG_URL"), schema=setting("ZBENCH_PG_SCHEMA"))

    def bulk_enqueue(self, broker: Broker, actor: Actor, count: int) -> None:
        with self.bulk(broker):
            for seq in range(count):
                actor.send(seq)

    def bulk(self, broker: Broker) -> AbstractContextManager[Any]:
        # broker_pg's batch() buffers the sends and writes them in one statement at exit.
        return broker.batch()  # type: ignore[attr-defined,no-any-return]


# Half are durable sleeps or retry backoffs due in a day ('delayed', in messages_delayed),
# half are event waits with no deadline ('parked', in no index). Each is a real message of
# the noop actor with a message id of its own, so a worker could run any of them.
PARK = """
INSERT INTO {messages} (queue_name, message_id, actor_name, state, eta, payload)
SELECT %(queue)s, u.id, %(actor)s,
       CASE WHEN n %% 2 = 0 THEN 'delayed' ELSE 'parked' END,
       CASE WHEN n %% 2 = 0 THEN now() + interval '1 day' + n * interval '1 ms' ELSE now() END,
       convert_to(replace(%(template)s, %(placeholder)s, u.id), 'UTF8')
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n,
       LATERAL (SELECT gen_random_uuid()::text) AS u (id)
"""


class ParkedPostgresTarget(PostgresTarget):
    """PostgresBroker again, with `parked` rows sleeping or waiting in the benchmark's queue.

    The rows are inserted before the pass and deleted after it. In between, the flush
    deletes only the rows written after them (an index range on the key), and `join`
    does not wait for them: they are due in a day, or never.
    """

    name = "postgres+parked"
    baseline = "postgres"
    chunk = 100_000

    def __init__(self, parked: int) -> None:
        self.parked = parked
        self.label = f"PostgresBroker + {parked:,} parked"
        self.last_parked_id = 0

    def note(self, settings: Settings) -> str:
        return (
            f"postgres+parked: the same broker and worker with {self.parked:,} rows in the "
            f"queue, half 'delayed' due in a day, half 'parked' (event waits), inserted "
            f"before the pass with one INSERT ... SELECT generate_series per "
            f"{self.chunk:,}, then VACUUM (ANALYZE) as autovacuum would and CHECKPOINT; "
            "deleted after"
        )

    def setup(self, broker: Broker, actors: BenchActors, progress: Progress) -> None:
        broker.flush_all()  # also the parked rows of an earlier run that was killed
        message = actors.noop.message(-1)
        params = {
            "queue": message.queue_name,
            "actor": message.actor_name,
            "template": message.encode().decode(),
            "placeholder": message.message_id,
        }
        for first in range(1, self.parked + 1, self.chunk):
            last = min(first + self.chunk - 1, self.parked)
            sql(PARK.format(messages=messages_table()), {**params, "first": first, "last": last})
            progress(f"parked rows: {last:,}/{self.parked:,} inserted")
        progress("VACUUM (ANALYZE) of the messages table, CHECKPOINT")
        settle_table()
        self.last_parked_id = sql(f"SELECT max(id) FROM {messages_table()}")[0][0] or 0

    def teardown(self, broker: Broker) -> None:
        broker.flush_all()
        settle_table()

    def flush(self, broker: Broker) -> None:
        queues = sorted(broker.queues)
        sql(
            f"DELETE FROM {messages_table()} WHERE id > %s AND queue_name = ANY(%s)",
            (self.last_parked_id, queues),
        )
        schema = setting("ZBENCH_PG_SCHEMA")
        sql(f'DELETE FROM "{schema}".dead_letters WHERE queue_name = ANY(%s)', (queues,))

    def join(self, broker: Broker, timeout_ms: int) -> None:
        # broker.join would wait for the rows due in a day too.
        query = (
            f"SELECT count(*) FROM {messages_table()} WHERE id > %s AND queue_name = %s"
            " AND state IN ('queued', 'delayed', 'claimed')"
        )
        wait_until_zero(query, (self.last_parked_id, QUEUE), timeout_ms, QUEUE)


class RedisTarget(Target):
    name = "redis"
    label = "RedisBroker"
    app_module = "benchmarks.apps.redis_app"

    def probe(self, broker: Broker) -> None:
        broker.client.ping()  # type: ignore[attr-defined]

    def join(self, broker: Broker, timeout_ms: int) -> None:
        broker.join(QUEUE, interval=10, timeout=timeout_ms)  # type: ignore[call-arg]


class RabbitmqTarget(Target):
    name = "rabbitmq"
    label = "RabbitmqBroker"
    app_module = "benchmarks.apps.rabbitmq_app"

    def probe(self, broker: Broker) -> None:
        # Declaring for real also makes the first flush valid on a fresh server.
        broker.declare_queue(QUEUE, ensure=True)  # type: ignore[call-arg]

    @contextmanager
    def producer(self, broker: Broker) -> Iterator[None]:
        # RabbitmqBroker keeps a pika connection and channel per thread: open this
        # thread's before the clock starts, close it after (untimed on both ends).
        broker.channel  # type: ignore[attr-defined] # noqa: B018
        try:
            yield
        finally:
            del broker.connection  # type: ignore[attr-defined]


class DramatiqPgTarget(Target):
    name = "dramatiq-pg"
    label = "dramatiq-pg PostgresBroker"
    app_module = "benchmarks.apps.dramatiq_pg_app"

    def table(self) -> str:
        return f'"{setting("ZBENCH_DPG_SCHEMA")}".queue'

    def prepare(self) -> None:
        from dramatiq_pg import generate_init_sql

        schema = setting("ZBENCH_DPG_SCHEMA")
        # Its own schema, so it never collides with broker_pg's tables.
        if sql(f"SELECT to_regclass('{self.table()}')")[0][0] is None:
            sql(generate_init_sql(schema=schema, prefix=""))

    def flush(self, broker: Broker) -> None:
        # dramatiq-pg has no flush, and keeps processed rows as 'done': drop them all.
        sql(f"TRUNCATE {self.table()}")

    def join(self, broker: Broker, timeout_ms: int) -> None:
        query = f"SELECT count(*) FROM {self.table()} WHERE state IN ('queued', 'consumed')"
        wait_until_zero(query, (), timeout_ms, "dramatiq-pg queue")

    def close(self, broker: Broker) -> None:
        broker.pool.closeall()  # type: ignore[attr-defined]

    def drain_count(self, settings: Settings) -> int:
        # dramatiq-pg holds one advisory lock per consumed message until its consumer
        # idles; a large backlog exhausts PostgreSQL's shared lock table ("out of shared
        # memory") for every session on the server, not just this benchmark.
        cap = settings.dramatiq_pg_backlog
        return min(settings.count, cap) if cap else settings.count

    def note(self, settings: Settings) -> str:
        if self.drain_count(settings) == settings.count:
            return ""
        return (
            f"dramatiq-pg: drain backlog capped at {self.drain_count(settings):,} messages "
            "(--dramatiq-pg-backlog): it keeps an advisory lock per consumed message until "
            "idle, and ~12,800 of them exhaust PostgreSQL's default lock table"
        )


class StubTarget(Target):
    name = "stub"
    label = "StubBroker (ceiling)"
    app_module = "benchmarks.apps.stub_app"
    # The driver's in-memory queue is invisible to worker processes: each worker process
    # enqueues its own share of the backlog instead (see apps/stub_app.py).
    keeps_backlog = False

    def note(self, settings: Settings) -> str:
        p, t = settings.processes, settings.threads
        return (
            f"stub: drain = same dramatiq CLI ({p} processes x {t} threads), each process "
            f"pre-filled with {settings.count // p:,} messages in its own in-memory StubBroker; "
            f"enqueue, idle latency and delay run in the driver process with an in-process "
            f"Worker (1 process, {t} threads)"
        )

    def drain_count(self, settings: Settings) -> int:
        return settings.count // settings.processes * settings.processes

    @contextmanager
    def drain_worker(self, settings: Settings) -> Iterator[workers.WorkerProcess]:
        env = {
            "ZBENCH_STUB_PRELOAD": str(settings.count // settings.processes),
            "ZBENCH_PROCESSES": str(settings.processes),
        }
        with workers.running(self.app_module, settings.processes, settings.threads, env) as proc:
            yield proc

    @contextmanager
    def idle_worker(self, broker: Broker, settings: Settings) -> Iterator[None]:
        worker = Worker(broker, worker_threads=settings.threads)
        worker.start()
        try:
            yield
        finally:
            worker.stop()


ALL_TARGETS: tuple[Target, ...] = (
    PostgresTarget(),
    RabbitmqTarget(),
    RedisTarget(),
    DramatiqPgTarget(),
    StubTarget(),
)
