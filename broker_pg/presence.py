"""Worker presence: the row that holds a process's leases, and lease recovery.

Claimed messages are leased to a worker row, not renewed one by one. The row
is kept alive by a heartbeat; a worker whose session has ended or whose
heartbeat is older than the lease timeout is lost, and every live worker
returns the lost worker's messages to their queues.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import psycopg

from .sqlfile import Queries

logger = logging.getLogger(__name__)

#: Seconds between purges of expired dead letters and results.
PURGE_INTERVAL = 60.0


class WorkerPresence:
    def __init__(
        self,
        queries: Queries,
        channel: str,
        *,
        lease_timeout: float,
        max_deliveries: int,
        dead_letter_ttl: float,
    ) -> None:
        self.worker_id = uuid.uuid4()
        self.queries = queries
        self.channel = channel
        self.lease_timeout = lease_timeout
        self.max_deliveries = max_deliveries
        self.dead_letter_ttl = dead_letter_ttl
        self._next_purge = 0.0

    def register(self, conn: psycopg.Connection) -> None:
        """(Re)register on ``conn``, whose session then stands for this process."""
        conn.execute(
            self.queries["register_worker"],
            {"worker_id": self.worker_id, "hostname": socket.gethostname(), "pid": os.getpid()},
        )
        self.recover_lost_messages(conn)

    def beat(self, conn: psycopg.Connection) -> None:
        """Renew this worker's leases, then recover the leases of lost workers."""
        alive = conn.execute(self.queries["heartbeat"], {"worker_id": self.worker_id}).fetchone()
        if alive is None:
            # Declared lost (a long stall): our messages went back to their queues,
            # and acks of our old leases will match nothing. Carry on as a new lease holder.
            logger.warning("Worker %s was presumed lost; registering again.", self.worker_id)
            self.register(conn)
            return
        self.recover_lost_messages(conn)
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL
            conn.execute(self.queries["purge_expired"], {"dead_letter_ttl": self.dead_letter_ttl})

    def recover_lost_messages(self, conn: psycopg.Connection) -> None:
        returned = conn.execute(
            self.queries["recover_lost_messages"],
            {
                "lease_timeout": self.lease_timeout,
                "max_deliveries": self.max_deliveries,
                "channel": self.channel,
            },
        ).fetchall()
        if returned:
            logger.info(
                "Recovered messages of lost workers on queues %s.", [row[0] for row in returned]
            )

    def unregister(self, conn: psycopg.Connection) -> None:
        """Leave; whatever this worker still holds is recovered by the others."""
        conn.execute(self.queries["unregister_worker"], {"worker_id": self.worker_id})
