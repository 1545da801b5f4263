"""Housekeeping that live workers share: lost messages, expired rows, dead tuples."""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from .database import Database, bound_statements
from .sqlfile import Queries

logger = logging.getLogger(__name__)

#: Seconds between purges of expired dead letters and results.
PURGE_INTERVAL = 60.0
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
        dead_letter_ttl: float,
    ) -> None:
        self.db = db
        self.queries = queries
        self.channel = channel
        self.max_deliveries = max_deliveries
        self.dead_letter_ttl = dead_letter_ttl
        self._next_purge = 0.0
        self._vacuuming = threading.Event()

    def run(self, conn: psycopg.Connection) -> None:
        """One round, on the listener's connection, once per heartbeat."""
        self.recover_lost_messages(conn)
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL
            conn.execute(self.queries["purge_expired"], {"dead_letter_ttl": self.dead_letter_ttl})
        dead = conn.execute(self.queries["dead_messages"], {"schema": self.db.schema}).fetchone()
        if dead and dead[0] > VACUUM_AFTER and not self._vacuuming.is_set():
            # Claims scan the queue's index; dead rows of settled messages slow
            # every claim until vacuumed, and autovacuum may be a minute away.
            # In a thread of its own: a long vacuum must not delay the heartbeat.
            self._vacuuming.set()
            threading.Thread(target=self._vacuum, name="broker_pg-vacuum", daemon=True).start()

    def _vacuum(self) -> None:
        try:
            with self.db.connection() as conn:
                # A vacuum takes as long as the table needs; the pool's bound is for the rest.
                conn.execute("SET statement_timeout = 0")
                try:
                    conn.execute(self.queries["vacuum_messages"])
                finally:
                    bound_statements(conn)
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
