"""The durable layer's access to PostgreSQL: named queries and transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from broker_pg import Database
from broker_pg.database import channel_name
from broker_pg.sqlfile import Queries


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

    def fetchone(self, query: str, **params: Any) -> tuple[Any, ...] | None:
        with self.db.connection() as conn:
            return _first(conn.execute(self.queries[query], _adapt(params)))

    def fetchall(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.db.connection() as conn:
            return conn.execute(self.queries[query], _adapt(params)).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self.db.connection() as conn:
            tx = Transaction(conn)
            with conn.transaction():
                yield tx
        for action in tx.after_commit:
            action()

    def run(self, tx: Transaction, query: str, **params: Any) -> tuple[Any, ...] | None:
        """Execute ``query`` inside ``tx``; return its first row."""
        return _first(tx.conn.execute(self.queries[query], _adapt(params)))


#: Parameters bound to jsonb columns.
_JSON_PARAMS = frozenset({"result", "error", "input", "payload"})


def _adapt(params: dict[str, Any]) -> dict[str, Any]:
    return {k: Jsonb(v) if k in _JSON_PARAMS and v is not None else v for k, v in params.items()}


def _first(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...] | None:
    return cursor.fetchone() if cursor.description is not None else None
