"""Housekeeping that live workers share: lost messages, rows past their retention, dead tuples."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from .database import Database, configure_session
from .sqlfile import Queries

logger = logging.getLogger(__name__)

#: Seconds a retention job rests once nothing is left past retention, or when
#: another worker is running it.
RETENTION_INTERVAL = 60.0
#: Rows a retention batch deletes from each of its tables, in one short transaction.
RETENTION_BATCH = 1000
#: Dead rows in the messages table above which a worker vacuums it itself.
VACUUM_AFTER = 10_000


class Maintenance:
    def __init__(
        self,
        db: Database,
        queries: Queries,
        channel: str,
        *,
        max_deliveries: int,
        dead_letter_ttl: float | None,
    ) -> None:
        self.db = db
        self.queries = queries
        self.channel = channel
        self.max_deliveries = max_deliveries
        #: Dead letters older than ``dead_letter_ttl`` seconds (None: none) and
        #: expired results.
        self.retention = Retention(
            queries,
            db.schema,
            "broker",
            queries["purge_expired"],
            {"dead_letter_ttl": dead_letter_ttl},
        )
        self._vacuuming = threading.Event()

    def run(self, conn: psycopg.Connection) -> None:
        """One round, on the listener's connection, once per heartbeat."""
        self.recover_lost_messages(conn)
        dead = conn.execute(self.queries["dead_messages"], {"schema": self.db.schema}).fetchone()
        if dead and dead[0] > VACUUM_AFTER and not self._vacuuming.is_set():
            # Claims scan the queue's index; dead rows of settled messages slow
            # every claim until vacuumed, and autovacuum may be a minute away.
            # In a thread of its own: a long vacuum must not delay the heartbeat.
            self._vacuuming.set()
            threading.Thread(target=self._vacuum, name="broker_pg-vacuum", daemon=True).start()
        self.retention.run(conn)

    def _vacuum(self) -> None:
        try:
            with self.db.connection() as conn:
                # A vacuum takes as long as the table needs; the pool's bound is for the rest.
                conn.execute("SET statement_timeout = 0")
                try:
                    conn.execute(self.queries["vacuum_messages"])
                finally:
                    configure_session(conn)
        except Exception:
            logger.warning("Could not vacuum the messages table.", exc_info=True)
        finally:
            self._vacuuming.clear()

    def recover_lost_messages(self, conn: psycopg.Connection) -> None:
        """Return the messages of reaped workers to their queues (or dead letters)."""
        returned = conn.execute(
            self.queries["recover_lost_messages"],
            {"max_deliveries": self.max_deliveries, "channel": self.channel},
        ).fetchall()
        if returned:
            logger.info(
                "Recovered messages of lost workers on queues %s.", [row[0] for row in returned]
            )


class Retention:
    """Deletes a schema's rows past their retention in batches, one worker at a time.

    ``run`` is called once a heartbeat by every live worker. When the job is
    due, it deletes one batch: ``query`` with ``params`` and a ``limit`` of
    ``RETENTION_BATCH`` rows per table, returning how many went from each, in a
    transaction that first takes the job's advisory lock. A full batch leaves
    more for the next heartbeat, so no transaction is long and the server gets
    a pause between batches; a short batch, or the lock held by another worker,
    rests the job for ``RETENTION_INTERVAL``. The lock is transaction-level: a
    worker that dies mid-batch holds nothing once its session ends.
    """

    def __init__(
        self, queries: Queries, schema: str, job: str, query: bytes, params: dict[str, Any]
    ) -> None:
        self.take_lock = queries["take_retention_lock"]
        self.lock = {"schema": schema, "job": job}
        self.query = query
        self.params = params
        self._next_run = 0.0

    @property
    def due(self) -> bool:
        """Whether the job is not resting: ``run`` would try a batch."""
        return time.monotonic() >= self._next_run

    def run(self, conn: psycopg.Connection) -> int:
        """Delete one batch on ``conn`` if due and no other worker is at it; return its rows."""
        if not self.due:
            return 0
        # Set first: a batch that fails is tried again an interval later, not every heartbeat.
        self._next_run = time.monotonic() + RETENTION_INTERVAL
        limit = RETENTION_BATCH
        with conn.transaction():
            locked = conn.execute(self.take_lock, self.lock).fetchone()
            if not (locked and locked[0]):
                return 0  # another worker is deleting: leave the round to it
            counts = conn.execute(self.query, {**self.params, "limit": limit}).fetchone() or ()
        if any(count >= limit for count in counts):
            self._next_run = 0.0  # more past retention: go on at the next heartbeat
        return sum(counts)
