"""The durable layer's access to PostgreSQL: named queries, retried writes, transactions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import tenacity
from psycopg.types.json import Jsonb

from broker_pg import Database, DatabaseUnavailable
from broker_pg.broker import caller_connection
from broker_pg.database import channel_name
from broker_pg.group_commit import GroupCommit
from broker_pg.sqlfile import Queries

from .errors import ZartError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What a session waiting for executions to end announces (see Notifications.subscribe).
RESULT_WAITER = "zart-result-waiter"


class CommitUnknown(DatabaseUnavailable):
    """The connection broke while a transaction committed: it may or may not have."""


@dataclass(frozen=True)
class StepRecord:
    """One step outcome to checkpoint, for the run holding ``token``."""

    execution_id: str
    token: int
    key: str
    kind: str
    name: str
    fn: str | None
    status: str
    result: Any
    error: dict[str, Any] | None
    attempts: int
    duration_ms: float
    wake_in_s: float | None
    #: Its place among the body's calls (``timeline``); None for a run that does not know it.
    position: int | None = None


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint tells its body."""

    #: False if the run was no longer the execution's current one: nothing was written.
    current: bool
    #: The execution's status (to say why a write was refused).
    status: str | None
    #: Whether the execution passed its deadline.
    expired: bool
    #: The step as recorded: the body's own outcome, or one recorded before it.
    step_status: str | None
    result: Any
    error: dict[str, Any] | None
    wake_at: datetime | None


@dataclass
class Transaction:
    """An open transaction, and what to do once it has committed."""

    conn: psycopg.Connection
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    committing: bool = False


class Store:
    """Queries of the durable layer on ``db``.

    A write that meets a transient error (the server restarting, a cut
    connection, a deadlock) is tried again for up to ``write_timeout`` seconds.
    """

    def __init__(self, db: Database, *, write_timeout: float = 30.0) -> None:
        self.db = db
        self.queries = Queries("zart_dramatiq", "queries.sql", db.schema)
        #: NOTIFY channel carrying the ids of executions that just ended.
        self.channel = channel_name(db.schema, "executions")
        #: Every query may name the channel.
        self._common = {"channel": self.channel}
        self.write_timeout = write_timeout
        self._checkpoints = GroupCommit(
            self._write_steps,
            timeout=write_timeout + 10.0,
            what="a checkpoint",
            then="the run stops and resumes from its journal later",
        )

    def fetchone(self, query: str, **params: Any) -> tuple[Any, ...] | None:
        with self.db.connection() as conn:
            return _first(conn.execute(self.queries[query], self._params(params)))

    def fetchall(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.db.connection() as conn:
            return conn.execute(self.queries[query], self._params(params)).fetchall()

    def write(self, query: str, **params: Any) -> tuple[Any, ...] | None:
        """Run one statement, trying again through transient errors; return its first row.

        For statements that are safe to repeat when a reply was lost.
        """
        return self._retried(self.fetchone, query, **params)

    def write_then_read(
        self, write: str, read: str, **params: Any
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
        """``write``, then ``read`` by a statement of its own: it sees what ``write`` waited for.

        One transaction; tried again through transient errors, like ``write``.
        """
        return self._retried(self._write_then_read_once, write, read, self._params(params))

    def _write_then_read_once(
        self, write: str, read: str, params: dict[str, Any]
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
        # Not a pipeline: one cut by an asynchronous exception (TimeLimit) left its
        # connection unusable in the pool, and the workers' threads stuck on it.
        with self.db.connection() as conn, conn.transaction():
            written = _first(conn.execute(self.queries[write], params))
            got = _first(conn.execute(self.queries[read], params))
        return written, got

    def atomically(self, unit: Callable[[Transaction], T]) -> T:
        """Run ``unit`` in a transaction of its own, again from the start on transient errors.

        A commit whose outcome is unknown is not repeated: it raises CommitUnknown.
        """
        return self._retried(self._commit_once, unit)

    def _commit_once(self, unit: Callable[[Transaction], T]) -> T:
        with self.db.connection() as conn:
            tx = Transaction(conn)
            try:
                with conn.transaction():
                    result = unit(tx)
                    tx.committing = True
            except psycopg.OperationalError as e:
                if tx.committing:
                    raise CommitUnknown(f"the commit's outcome is unknown: {e}") from e
                raise
        for action in tx.after_commit:
            action()
        return result

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A transaction of its own; inside ``broker.transaction(conn)``, the caller's."""
        caller = caller_connection()
        if caller is not None:
            tx = Transaction(caller)
            with caller.transaction():  # a savepoint: the caller commits or rolls back
                yield tx
            if tx.after_commit:
                raise ZartError(
                    "a durable start, event or cancel inside broker.transaction(conn) needs the "
                    "DurableMiddleware on the broker's own database and schema; here a message "
                    "would have to be sent after a commit that the caller controls"
                )
            return
        with self.db.connection() as conn:
            tx = Transaction(conn)
            with conn.transaction():
                yield tx
        for action in tx.after_commit:
            action()

    def record_step(self, record: StepRecord, tx: Transaction | None = None) -> Checkpoint:
        """Checkpoint ``record``: inside ``tx``, or committed with concurrent checkpoints."""
        if tx is not None:
            return _record_steps(tx.conn, self.queries["record_steps"], [record])[0]
        return self._checkpoints.submit(record)

    def _write_steps(self, records: Sequence[StepRecord]) -> list[Checkpoint]:
        # Safe to repeat: a step already recorded comes back as recorded.
        return self._retried(self._record_steps_once, records)

    def _record_steps_once(self, records: Sequence[StepRecord]) -> list[Checkpoint]:
        with self.db.connection() as conn:
            return _record_steps(conn, self.queries["record_steps"], records)

    def run(self, tx: Transaction, query: str, **params: Any) -> tuple[Any, ...] | None:
        """Execute ``query`` inside ``tx``; return its first row."""
        return _first(tx.conn.execute(self.queries[query], self._params(params)))

    def run_all(self, tx: Transaction, query: str, **params: Any) -> list[tuple[Any, ...]]:
        """Execute ``query`` inside ``tx``; return all its rows."""
        return tx.conn.execute(self.queries[query], self._params(params)).fetchall()

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self._common, **_adapt(params)}

    def _retried(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, called again through transient errors for ``write_timeout``."""
        try:
            # Most calls succeed at once: tenacity's bookkeeping is for the rest.
            return fn(*args, **kwargs)
        except Exception as error:
            if not transient(error):
                raise
            logger.warning("Durable write failed (%s); trying again.", error)
        return self._retrying()(fn, *args, **kwargs)

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            stop=tenacity.stop_after_delay(self.write_timeout),
            wait=tenacity.wait_exponential(multiplier=0.05, max=0.5),
            reraise=True,
        )


def transient(error: BaseException) -> bool:
    """Worth trying again: the server is away, or the transaction lost a race."""
    if isinstance(error, CommitUnknown):
        return False
    return isinstance(
        error,
        DatabaseUnavailable | psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected,
    )


#: Parameters bound to jsonb columns; a payload of None is JSON null, not SQL NULL.
_JSON_PARAMS = frozenset({"result", "error", "input", "branches"})


def _adapt(params: dict[str, Any]) -> dict[str, Any]:
    adapted = {k: Jsonb(v) if k in _JSON_PARAMS and v is not None else v for k, v in params.items()}
    if "payload" in params:
        adapted["payload"] = Jsonb(params["payload"])
    return adapted


def _first(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...] | None:
    return cursor.fetchone() if cursor.description is not None else None


def _record_steps(
    conn: psycopg.Connection, query: bytes, records: Sequence[StepRecord]
) -> list[Checkpoint]:
    # One JSON document rather than a dozen arrays: psycopg dumps array elements
    # one by one in Python, a large share of a checkpoint's CPU.
    batch = Jsonb([vars(record) for record in records])
    return [
        Checkpoint(
            current=row[0],
            status=row[1],
            expired=bool(row[2]),
            step_status=row[3],
            result=row[4],
            error=row[5],
            wake_at=row[6],
        )
        for row in conn.execute(query, {"batch": batch}).fetchall()
    ]
