"""The durable layer's access to PostgreSQL: named queries and transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from broker_pg import Database
from broker_pg.broker import caller_connection
from broker_pg.database import channel_name
from broker_pg.sqlfile import Queries

from .errors import ZartError
from .group_commit import GroupCommit

#: The application name of connections waiting for executions to end.
RESULT_WAITER = "zart-result-waiter"


@dataclass(frozen=True)
class StepRecord:
    """One step outcome to checkpoint."""

    execution_id: str
    worker_id: UUID
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


#: What a checkpoint tells its body: the execution's status (None if another
#: worker took it over), whether it passed its deadline, and the step's wake-up time.
StepOutcome = tuple[str | None, bool | None, datetime | None]


@dataclass
class Transaction:
    """An open transaction, and what to do once it has committed."""

    conn: psycopg.Connection
    after_commit: list[Callable[[], None]] = field(default_factory=list)


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.queries = Queries("zart_dramatiq", "queries.sql", db.schema)
        #: NOTIFY channel carrying the ids of executions that just ended.
        self.channel = channel_name(db.schema, "executions")
        #: Every query may name the channel and who listens on it.
        self._common = {"channel": self.channel, "waiter": RESULT_WAITER}
        self._checkpoints = GroupCommit(self._write_steps)

    def fetchone(self, query: str, **params: Any) -> tuple[Any, ...] | None:
        with self.db.connection() as conn:
            return _first(conn.execute(self.queries[query], self._params(params)))

    def fetchall(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.db.connection() as conn:
            return conn.execute(self.queries[query], self._params(params)).fetchall()

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

    def record_step(self, record: StepRecord, tx: Transaction | None = None) -> StepOutcome:
        """Checkpoint ``record``: inside ``tx``, or committed with concurrent checkpoints."""
        if tx is not None:
            return _record_steps(tx.conn, self.queries["record_steps"], [record])[0]
        return self._checkpoints.submit(record)

    def _write_steps(self, records: Sequence[StepRecord]) -> list[StepOutcome]:
        with self.db.connection() as conn:
            return _record_steps(conn, self.queries["record_steps"], records)

    def run(self, tx: Transaction, query: str, **params: Any) -> tuple[Any, ...] | None:
        """Execute ``query`` inside ``tx``; return its first row."""
        return _first(tx.conn.execute(self.queries[query], self._params(params)))

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self._common, **_adapt(params)}


#: Parameters bound to jsonb columns.
_JSON_PARAMS = frozenset({"result", "error", "input", "payload"})


def _adapt(params: dict[str, Any]) -> dict[str, Any]:
    return {k: Jsonb(v) if k in _JSON_PARAMS and v is not None else v for k, v in params.items()}


def _first(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...] | None:
    return cursor.fetchone() if cursor.description is not None else None


def _record_steps(
    conn: psycopg.Connection, query: bytes, records: Sequence[StepRecord]
) -> list[StepOutcome]:
    def column(name: str) -> list[Any]:
        return [getattr(record, name) for record in records]

    def documents(name: str) -> list[Jsonb | None]:
        return [None if value is None else Jsonb(value) for value in column(name)]

    params = {
        "ids": column("execution_id"),
        "worker_ids": column("worker_id"),
        "keys": column("key"),
        "kinds": column("kind"),
        "names": column("name"),
        "fns": column("fn"),
        "statuses": column("status"),
        "results": documents("result"),
        "errors": documents("error"),
        "attempts": column("attempts"),
        "durations_ms": column("duration_ms"),
        "wake_ins_s": column("wake_in_s"),
    }
    return [(row[0], row[1], row[2]) for row in conn.execute(query, params).fetchall()]
