"""Driver-side adapters: what differs between brokers, and nothing else.

Every broker gets the same measurements; a `Target` only knows how to set its broker up,
bulk-enqueue (the API differs), flush, wait for an empty queue, and run a worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dramatiq import Actor, Broker, Worker, group

from benchmarks import workers
from benchmarks.apps.actors import QUEUE
from benchmarks.apps.factories import make_broker, setting


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


def short(exc: BaseException, limit: int = 120) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:limit]


class Target:
    name = ""
    label = ""
    app_module = ""
    # Whether the bulk-enqueued messages stay in the broker to become the drain backlog.
    keeps_backlog = True

    def note(self, settings: Settings) -> str:
        """What the output must say about how this broker was measured differently."""
        return ""

    def connect(self) -> Broker:
        try:
            self.prepare()
            broker = make_broker(self.name)
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

    def bulk_enqueue(self, broker: Broker, actor: Actor, count: int) -> None:
        # Dramatiq's own bulk API; on the peers it is one enqueue per message underneath.
        group([actor.message(seq) for seq in range(count)], broker=broker).run()

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


class PostgresTarget(Target):
    name = "postgres"
    label = "PostgresBroker (broker_pg)"
    app_module = "benchmarks.apps.postgres_app"

    def prepare(self) -> None:
        try:
            import broker_pg
        except ImportError as exc:
            raise Unavailable(f"broker_pg not importable: {short(exc)}") from exc
        broker_pg.migrate(setting("ZBENCH_PG_URL"), schema=setting("ZBENCH_PG_SCHEMA"))

    def bulk_enqueue(self, broker: Broker, actor: Actor, count: int) -> None:
        # broker_pg's batch() buffers the sends and writes them in one statement at exit.
        with broker.batch():  # type: ignore[attr-defined]
            for seq in range(count):
                actor.send(seq)


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


class DramatiqPgTarget(Target):
    name = "dramatiq-pg"
    label = "dramatiq-pg PostgresBroker"
    app_module = "benchmarks.apps.dramatiq_pg_app"

    def table(self) -> str:
        return f'"{setting("ZBENCH_DPG_SCHEMA")}".queue'

    def sql(self, query: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(setting("ZBENCH_PG_URL"), autocommit=True) as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else []

    def prepare(self) -> None:
        from dramatiq_pg import generate_init_sql

        schema = setting("ZBENCH_DPG_SCHEMA")
        # Its own schema, so it never collides with broker_pg's tables.
        if self.sql(f"SELECT to_regclass('{self.table()}')")[0][0] is None:
            self.sql(generate_init_sql(schema=schema, prefix=""))

    def flush(self, broker: Broker) -> None:
        # dramatiq-pg has no flush, and keeps processed rows as 'done': drop them all.
        self.sql(f"TRUNCATE {self.table()}")

    def join(self, broker: Broker, timeout_ms: int) -> None:
        deadline = time.monotonic() + timeout_ms / 1000
        query = f"SELECT count(*) FROM {self.table()} WHERE state IN ('queued', 'consumed')"
        while self.sql(query)[0][0]:
            if time.monotonic() > deadline:
                raise TimeoutError("dramatiq-pg queue not empty")
            time.sleep(0.01)

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
