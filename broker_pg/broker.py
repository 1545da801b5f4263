"""PostgresBroker: a Dramatiq broker on PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
from dramatiq import Message, MessageProxy
from dramatiq.common import current_millis, dq_name, q_name
from dramatiq.errors import QueueJoinTimeout, QueueNotFound

from .consumer import (
    DelayQueueConsumer,
    Lease,
    PostgresConsumer,
    PostgresMessageProxy,
    QueueState,
    Settlements,
    settle,
)
from .database import (
    DEFAULT_SCHEMA,
    STATEMENT_TIMEOUT_MS,
    Database,
    channel_name,
    unreachable,
)
from .encoding import encode_message
from .errors import DatabaseUnavailable, SchemaMissing
from .group_commit import GroupCommit
from .listener import Listener
from .maintenance import Maintenance
from .presence import WorkerPresence
from .sqlfile import Queries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed for good, kept for ``dead_letter_ttl``."""

    id: int
    queue_name: str
    message_id: str
    actor_name: str
    deliveries: int
    error: str | None
    dead_at: Any
    message: Message[Any] | None


@dataclass(frozen=True)
class QueueStats:
    """One queue's messages by state, its oldest due message and its dead letters."""

    queue_name: str
    #: Due now (queued, or delayed and come due).
    queued: int
    #: Due later.
    delayed: int
    #: Waiting for an explicit wake-up (durable event waits, joins).
    parked: int
    #: Leased to a worker.
    claimed: int
    dead_letters: int
    #: Seconds the oldest message due now has waited; None when none is due.
    oldest_due_s: float | None


@dataclass(frozen=True)
class LiveWorker:
    """A worker process whose database session is open, with the messages it holds."""

    id: uuid.UUID
    hostname: str
    pid: int
    started_at: Any
    heartbeat_age_s: float
    claimed: int


@dataclass(frozen=True)
class Claim:
    """What one claim round returns: the leased rows and when to look again."""

    rows: list[tuple[int, int, int, Any, bytes]]
    #: The identity the rows are leased to.
    owner: uuid.UUID
    #: Seconds until the queue's next delayed message is due, if fewer were due than asked.
    due_in: float | None


@dataclass
class _Row:
    queue_name: str
    message_id: str
    actor_name: str
    priority: int
    delay_ms: int
    payload: bytes

    def params(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies, a measurable share of a send.
        return {
            "queue_name": self.queue_name,
            "message_id": self.message_id,
            "actor_name": self.actor_name,
            "priority": self.priority,
            "delay_ms": self.delay_ms,
            "payload": self.payload,
        }


@dataclass
class _Route:
    """Where enqueues of the current context go: a caller's connection, a batch, or both."""

    connection: psycopg.Connection | None = None
    batch: list[tuple[_Row, Message[Any], int | None]] | None = None


_route: ContextVar[_Route | None] = ContextVar("broker_pg_route", default=None)


def caller_connection() -> psycopg.Connection | None:
    """The connection of the enclosing ``broker.transaction(conn)`` block, if any."""
    route = _route.get()
    return route.connection if route is not None else None


class PostgresBroker(dramatiq.Broker):
    """A Dramatiq broker that keeps every message in PostgreSQL.

    Parameters:
      url: PostgreSQL URL; defaults to ``DATABASE_URL``, then an embedded server.
      schema: the schema holding the broker's tables (see ``broker_pg.migrate``).
      middleware: as for any Dramatiq broker.
      pool_size: connections per process, shared by consumers, acks and enqueues;
        default ``ZART_POOL_SIZE``, else 4. A consuming process uses
        ``pool_size + 1`` connections (one LISTENs).
      transaction_pooling: ``url`` leads to a proxy pooling by transaction
        (pgbouncer's ``pool_mode = transaction``); default ``ZART_TRANSACTION_POOLING``.
        For producers only: see ``broker_pg.Database``.
      lease_timeout: seconds without a heartbeat after which a worker is presumed
        lost and its messages are delivered again (durable executions it runs
        are taken over after the same time). A worker whose database session
        ended and that did not reconnect within a few heartbeats is presumed
        lost sooner; if it was alive after all, it continues under a new
        identity and its late acks are refused.
      heartbeat_interval: seconds between heartbeats (and lost-worker checks).
      max_deliveries: deliveries lost to dead workers after which a message is
        dead-lettered instead of delivered again.
      dead_letter_ttl: how long dead letters are kept (as Dramatiq's RedisBroker keeps
        dead messages, 7 days); then a worker deletes them. None keeps them until purged.
      poll_interval: upper bound, in seconds, on how long a consumer relies on
        notifications alone before it looks at its queue again.
      fail_fast_default: the default of ``join(fail_fast=)``, as on StubBroker.
      application_name: how the process's sessions appear in ``pg_stat_activity``
        (its LISTEN session adds ``-listener``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        middleware: list[dramatiq.Middleware] | None = None,
        pool_size: int | None = None,
        lease_timeout: float = 30.0,
        heartbeat_interval: float = 1.0,
        max_deliveries: int = 5,
        dead_letter_ttl: timedelta | None = timedelta(days=7),
        poll_interval: float = 1.0,
        fail_fast_default: bool = True,
        application_name: str = "broker_pg",
        transaction_pooling: bool | None = None,
    ) -> None:
        super().__init__(middleware=middleware)
        self.db = Database(
            url,
            schema=schema,
            pool_size=pool_size,
            application_name=application_name,
            transaction_pooling=transaction_pooling,
        )
        self.queries = Queries("broker_pg", "queries.sql", self.db.schema)
        self.channel = channel_name(self.db.schema, "messages")
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.fail_fast_default = fail_fast_default
        self.queues: set[str] = set()
        self.presence = WorkerPresence(
            self.queries, lease_timeout=lease_timeout, heartbeat_interval=heartbeat_interval
        )
        self.maintenance = Maintenance(
            self.db,
            self.queries,
            self.channel,
            max_deliveries=max_deliveries,
            dead_letter_ttl=None if dead_letter_ttl is None else dead_letter_ttl.total_seconds(),
        )
        self._states: dict[str, QueueState] = {}
        # Sends of concurrent producer threads share commits; each still returns
        # only once its own message is committed.
        self._sends: GroupCommit[_Row, None] = GroupCommit(
            self._write_sends,
            timeout=self.db.connect_timeout + STATEMENT_TIMEOUT_MS / 1000,
            what="a message",
            then="it may or may not have been enqueued",
        )
        #: The first error dead-lettered per queue in this process, for join(fail_fast=True).
        self._failures: dict[str, _Failure] = {}
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._pid = os.getpid()

    # -- Declarations ------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues.add(queue_name)
        self.emit_after("declare_queue", queue_name)
        delayed_name = dq_name(queue_name)
        self.delay_queues.add(delayed_name)
        self.emit_after("declare_delay_queue", delayed_name)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def get_declared_delay_queues(self) -> set[str]:
        return self.delay_queues.copy()

    # -- Enqueueing --------------------------------------------------------

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Store ``message``, due after ``delay`` milliseconds (if given).

        Inside ``transaction(conn)`` the row is written on the caller's
        connection; inside ``batch()`` it is written when the block ends.
        """
        message, row = self._prepare(message, delay)
        route = _route.get()
        if route is not None and route.batch is not None:
            route.batch.append((row, message, delay))
            return message
        if route is not None and route.connection is not None:
            self._insert(row, connection=route.connection)
        else:
            self._sends.submit(row)
        self.emit_after("enqueue", message, delay)
        return message

    def enqueue_parked(self, message: Message[Any], *, delay: int | None = None) -> int:
        """Store ``message`` parked: no consumer claims it until ``wake(row_id)``.

        With a ``delay`` the message is instead due then, unless woken earlier.
        Returns the row id to wake it with. Used for durable event waits.
        """
        message, row = self._prepare(message, delay)
        route = _route.get()
        row_id = self._insert(
            row,
            connection=route.connection if route else None,
            state="parked" if delay is None else "queued",
        )
        self.emit_after("enqueue", message, delay)
        return row_id

    def _prepare(self, message: Message[Any], delay: int | None) -> tuple[Message[Any], _Row]:
        """Run the before_enqueue hooks and encode the row to store."""
        queue_name = q_name(message.queue_name)
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)
        if delay is not None:
            # What Dramatiq's hooks and callers expect to see; the row itself is
            # stored in the queue proper with a due time.
            message = message.copy(
                queue_name=dq_name(queue_name), options={"eta": current_millis() + delay}
            )
        self.emit_before("enqueue", message, delay)
        return message, self._row(message, delay)

    def _row(self, message: Message[Any], delay: int | None) -> _Row:
        plain = message._message if isinstance(message, MessageProxy) else message
        options = {k: v for k, v in plain.options.items() if k != "eta"}
        stored = dataclasses.replace(plain, queue_name=q_name(plain.queue_name), options=options)
        actor = self.actors.get(stored.actor_name)
        return _Row(
            queue_name=stored.queue_name,
            message_id=stored.message_id,
            actor_name=stored.actor_name,
            # A message's own priority option, else its actor's: lower is claimed first.
            priority=stored.options.get("priority", actor.priority if actor is not None else 0),
            delay_ms=max(int(delay or 0), 0),
            payload=encode_message(stored),
        )

    def _insert(
        self, row: _Row, *, connection: psycopg.Connection | None, state: str = "queued"
    ) -> int:
        params = {**row.params(), "state": state, "channel": self.channel}
        if connection is not None:
            return _one(connection.execute(self.queries["enqueue"], params))
        with self.db.connection() as conn:
            return _one(conn.execute(self.queries["enqueue"], params))

    def _write_sends(self, rows: Sequence[_Row]) -> list[None]:
        """Commit the messages that producer threads sent at the same moment."""
        if len(rows) == 1:
            self._insert(rows[0], connection=None)
        else:
            self._insert_many(rows, None)
        return [None] * len(rows)

    @contextmanager
    def transaction(self, connection: psycopg.Connection) -> Iterator[None]:
        """Write this context's enqueues on ``connection``, inside its transaction.

        The messages commit with the caller's own writes, or vanish with a rollback.
        """
        outer = _route.get()
        token = _route.set(_Route(connection=connection, batch=outer.batch if outer else None))
        try:
            yield
        finally:
            _route.reset(token)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Buffer this context's enqueues and write them in one statement at the end.

        If the block raises, nothing is enqueued. Inside ``transaction(conn)``,
        the batch is written on that connection.
        """
        outer = _route.get()
        batch: list[tuple[_Row, Message[Any], int | None]] = []
        token = _route.set(_Route(connection=outer.connection if outer else None, batch=batch))
        try:
            yield
        finally:
            _route.reset(token)
        if batch:
            self._insert_many([row for row, _, _ in batch], outer.connection if outer else None)
            for _, message, delay in batch:
                self.emit_after("enqueue", message, delay)

    def _insert_many(self, rows: Sequence[_Row], connection: psycopg.Connection | None) -> None:
        params = {
            "queue_names": [r.queue_name for r in rows],
            "message_ids": [r.message_id for r in rows],
            "actor_names": [r.actor_name for r in rows],
            "priorities": [r.priority for r in rows],
            "delays_ms": [r.delay_ms for r in rows],
            "payloads": [r.payload for r in rows],
            "channel": self.channel,
        }
        if connection is not None:
            connection.execute(self.queries["enqueue_many"], params)
            return
        with self.db.connection() as conn:
            conn.execute(self.queries["enqueue_many"], params)

    def wake(self, row_id: int, *, connection: psycopg.Connection | None = None) -> bool:
        """Make a parked or delayed message due now; False if it is gone or running."""
        params = {"id": row_id, "channel": self.channel}
        if connection is not None:
            return connection.execute(self.queries["wake"], params).fetchone() is not None
        with self.db.connection() as conn:
            return conn.execute(self.queries["wake"], params).fetchone() is not None

    def discard(self, row_id: int, *, connection: psycopg.Connection | None = None) -> None:
        """Delete a queued or parked message that has not started."""
        params = {"id": row_id}
        if connection is not None:
            connection.execute(self.queries["discard"], params)
            return
        with self.db.connection() as conn:
            conn.execute(self.queries["discard"], params)

    # -- Consuming ---------------------------------------------------------

    def consume(
        self, queue_name: str, prefetch: int = 1, timeout: int = 5000
    ) -> PostgresConsumer | DelayQueueConsumer:
        if queue_name in self.delay_queues:
            return DelayQueueConsumer(timeout)
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)
        self._ensure_listening()
        return PostgresConsumer(self, queue_name, prefetch, timeout)

    def queue_state(self, queue_name: str) -> QueueState:
        with self._lock:
            return self._states.setdefault(queue_name, QueueState())

    @property
    def worker_id(self) -> uuid.UUID:
        """The identity this process claims under now (it changes if presumed lost)."""
        return self.presence.worker_id

    def _ensure_listening(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's listener did not come along, and the
                # child's leases need a worker row of their own.
                self._pid = os.getpid()
                self._listener = None
                self._states = {}
                self.presence.forked()
            if self._listener is None:
                listener = Listener(
                    self.db,
                    self.channel,
                    on_notify=self._on_notify,
                    on_connect=self._on_listener_connect,
                    on_tick=self._on_tick,
                    tick_interval=self.heartbeat_interval,
                )
                # Kept once started: one that refuses to start (transaction pooling) says so again.
                listener.start()
                self._listener = listener
            listener = self._listener
        # Claims need the worker row that holds their leases to exist first.
        if not listener.wait_connected(self.db.connect_timeout):
            error = listener.last_error
            if isinstance(error, SchemaMissing | DatabaseUnavailable):
                # They say what is wrong; a copy, as several consumers may raise it at once.
                raise type(error)(*error.args) from error
            raise unreachable(
                self.db.url, error or TimeoutError("the LISTEN session did not start in time")
            )

    def _on_notify(self, queue_name: str) -> None:
        state = self._states.get(queue_name)
        if state is not None:
            state.wake()

    def _on_tick(self, conn: psycopg.Connection) -> None:
        self.presence.beat(conn)
        self.maintenance.run(conn)

    def _on_listener_connect(self, conn: psycopg.Connection) -> None:
        self.presence.connect(conn)
        # Messages of workers lost while this one was away come back at once.
        self.presence.beat(conn)
        self.maintenance.recover_lost_messages(conn)
        # Notifications may have been missed while disconnected.
        for state in list(self._states.values()):
            state.wake()

    def settle_and_claim(
        self, queue_name: str, settlements: Settlements, limit: int, claim_token: uuid.UUID
    ) -> Claim:
        """Settle leases let go of and lease up to ``limit`` due messages of ``queue_name``."""
        owner = self.worker_id
        params = {
            **_lease_arrays("ack", settlements.acks),
            **_lease_arrays("back", settlements.hand_backs),
            "worker_id": owner,
            "claim_token": claim_token,
            "queue_name": queue_name,
            "limit": limit,
            "channel": self.channel,
        }
        with self.db.connection() as conn:
            rows = conn.execute(self.queries["settle_and_claim"], params).fetchall()
        *claimed, (*_, due_in, registered) = rows
        if not registered:
            # Presumed lost: the listener takes a new identity within a heartbeat.
            due_in = self.heartbeat_interval
        return Claim(
            rows=[row[:5] for row in claimed],
            owner=owner,
            due_in=None if due_in is None else max(due_in, 0.0),
        )

    def return_lost_claim(self, claim_token: uuid.UUID) -> None:
        """Hand back the rows of a claim round whose reply was lost."""
        with self.db.connection() as conn:
            conn.execute(
                self.queries["return_lost_claim"],
                {"worker_id": self.worker_id, "claim_token": claim_token, "channel": self.channel},
            )

    def hand_back(self, message: MessageProxy) -> None:
        """Return a delivered message to its queue instead of acking it.

        For a delivery whose outcome could not be recorded (the database was
        unreachable): the row stays leased until the database answers again,
        then it is due at once. The Worker's own ack of it becomes a no-op.
        """
        if isinstance(message, PostgresMessageProxy) and settle(message):
            self.queue_state(q_name(message.queue_name)).buffer_hand_back(Lease.of(message))

    def ack_within(self, connection: psycopg.Connection, message: MessageProxy) -> None:
        """Ack ``message`` inside the caller's transaction on ``connection``.

        The row is deleted when that transaction commits, together with the
        caller's writes; the Worker's own ack (or nack) of the message then
        matches no row. If the transaction rolls back, that ack or nack settles
        the lease as usual, so the message is never left claimed.
        """
        if not isinstance(message, PostgresMessageProxy) or message.settled:
            return
        connection.execute(
            self.queries["ack"],
            {"id": message.row_id, "deliveries": message.delivery, "owner": message.owner},
        )

    def dead_letter(self, message: PostgresMessageProxy) -> None:
        """Move a delivered message to dead letters, with its error."""
        error = message._exception
        if error is not None:
            self._failures.setdefault(q_name(message.queue_name), _Failure.of(error))
        description = (
            f"{type(error).__name__}: {error}"
            if error is not None
            else message.options.get("traceback")
        )
        with self.db.connection() as conn:
            conn.execute(
                self.queries["dead_letter"],
                {
                    "id": message.row_id,
                    "deliveries": message.delivery,
                    "owner": message.owner,
                    "payload": encode_message(message._message),
                    "error": description,
                },
            )

    def bury_undecodable(self, lease: Lease, error: str) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self.queries["dead_letter_undecodable"],
                {
                    "id": lease.row_id,
                    "deliveries": lease.delivery,
                    "owner": lease.owner,
                    "error": error,
                },
            )

    # -- Dead letters ------------------------------------------------------

    def queue_stats(self) -> list[QueueStats]:
        """Every queue with messages or dead letters, and every declared queue, by name."""
        with self.db.connection() as conn:
            rows = conn.execute(self.queries["queue_stats"]).fetchall()
        stats = {row[0]: QueueStats(*row) for row in rows}
        for name in self.get_declared_queues() - stats.keys():
            stats[name] = QueueStats(name, 0, 0, 0, 0, 0, None)
        return [stats[name] for name in sorted(stats)]

    def live_workers(self) -> list[LiveWorker]:
        """Workers whose database session is still open, oldest first."""
        with self.db.connection() as conn:
            rows = conn.execute(self.queries["live_workers"]).fetchall()
        return [LiveWorker(*row) for row in rows]

    def list_dead_letters(
        self, queue_name: str | None = None, *, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one queue."""
        with self.db.connection() as conn:
            rows = conn.execute(
                self.queries["list_dead_letters"], {"queue_name": queue_name, "limit": limit}
            ).fetchall()
        return [
            DeadLetter(
                id=row[0],
                queue_name=row[1],
                message_id=row[2],
                actor_name=row[3],
                deliveries=row[4],
                error=row[5],
                dead_at=row[6],
                message=_decode_or_none(row[7]),
            )
            for row in rows
        ]

    @property
    def dead_letters(self) -> list[Message[Any]]:
        """The dead-lettered messages of this broker's queues, as StubBroker offers them."""
        return [
            letter.message
            for letter in self.list_dead_letters(limit=10_000)
            if letter.message is not None and letter.queue_name in self.queues
        ]

    def requeue_dead_letters(
        self, ids: list[int] | None = None, *, queue_name: str | None = None
    ) -> int:
        """Put dead letters back on their queues; return how many."""
        with self.db.connection() as conn:
            row = conn.execute(
                self.queries["requeue_dead_letters"],
                {"ids": ids, "queue_name": queue_name, "channel": self.channel},
            ).fetchone()
        return self._forget_failures(row)

    def purge_dead_letters(
        self, *, queue_name: str | None = None, older_than: timedelta | None = None
    ) -> int:
        """Delete dead letters; return how many."""
        with self.db.connection() as conn:
            row = conn.execute(
                self.queries["purge_dead_letters"],
                {
                    "queue_name": queue_name,
                    "older_than": older_than.total_seconds() if older_than else None,
                },
            ).fetchone()
        return self._forget_failures(row)

    def _forget_failures(self, row: tuple[Any, ...] | None) -> int:
        """Given (count, queue names) of dead letters gone, stop re-raising their errors in join."""
        for name in (row[1] if row else None) or []:
            self._failures.pop(name, None)
        return int(row[0]) if row else 0

    # -- Test and maintenance helpers --------------------------------------

    def join(
        self, queue_name: str, *, timeout: int | None = None, fail_fast: bool | None = None
    ) -> None:
        """Wait until ``queue_name`` has no queued, delayed or running messages.

        Parked messages (durable event waits) are not waited for. With
        ``fail_fast``, re-raise the error of a message of this queue that this
        process dead-lettered. Raises QueueJoinTimeout after ``timeout`` ms.
        """
        queue_name = q_name(queue_name)
        fail_fast = self.fail_fast_default if fail_fast is None else fail_fast
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            if fail_fast and queue_name in self._failures:
                raise self._failures[queue_name].rebuild()
            with self.db.connection() as conn:
                pending = _one(
                    conn.execute(self.queries["count_pending"], {"queue_name": queue_name})
                )
            if pending == 0:
                if fail_fast and queue_name in self._failures:
                    raise self._failures[queue_name].rebuild()
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(0.005)

    def flush(self, queue_name: str) -> None:
        queue_name = q_name(queue_name)
        self._flush([queue_name])

    def flush_all(self) -> None:
        self._flush(sorted(self.queues))

    def _flush(self, queue_names: list[str]) -> None:
        with self.db.connection() as conn, conn.transaction():
            conn.execute(self.queries["flush"], {"queue_names": queue_names})
            conn.execute(self.queries["flush_dead_letters"], {"queue_names": queue_names})
        for name in queue_names:
            self._failures.pop(name, None)

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and self._pid == os.getpid():
            # (In a forked child that never consumed, the listener and worker row are the parent's.)
            listener.stop()
            try:
                with self.db.connection() as conn:
                    self.presence.unregister(conn)
            except Exception:
                logger.warning("Could not unregister worker %s.", self.worker_id, exc_info=True)
        self.db.close()


def _lease_arrays(prefix: str, leases: list[Lease]) -> dict[str, list[Any]]:
    """Leases as the parallel arrays the queries unnest (``ack_ids``, ``ack_deliveries``...)."""
    return {
        f"{prefix}_ids": [lease.row_id for lease in leases],
        f"{prefix}_deliveries": [lease.delivery for lease in leases],
        f"{prefix}_owners": [lease.owner for lease in leases],
    }


def _one(cursor: psycopg.Cursor[Any]) -> Any:
    row = cursor.fetchone()
    assert row is not None
    return row[0]


def _decode_or_none(payload: bytes) -> Message[Any] | None:
    try:
        return Message.decode(payload)
    except Exception:
        return None


@dataclass(frozen=True)
class _Failure:
    """An error's type and arguments: keeping them keeps neither the error nor its frames."""

    type: type[BaseException]
    args: tuple[Any, ...]
    text: str

    @classmethod
    def of(cls, error: BaseException) -> _Failure:
        return cls(type(error), error.args, str(error))

    def rebuild(self) -> BaseException:
        try:
            return self.type(*self.args)
        except Exception:
            return Exception(f"{self.type.__name__}: {self.text}")
