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
import uuid

import psycopg

from .sqlfile import Queries

logger = logging.getLogger(__name__)


class WorkerPresence:
    """This process's worker row, kept alive by ``beat``; lost workers' rows are reaped."""

    def __init__(self, queries: Queries, *, lease_timeout: float) -> None:
        self.worker_id = uuid.uuid4()
        self.queries = queries
        self.lease_timeout = lease_timeout

    def register(self, conn: psycopg.Connection) -> None:
        """(Re)register on ``conn``, whose session then stands for this process."""
        conn.execute(
            self.queries["register_worker"],
            {"worker_id": self.worker_id, "hostname": socket.gethostname(), "pid": os.getpid()},
        )

    def beat(self, conn: psycopg.Connection) -> None:
        """Renew this worker's leases, then reap the rows of lost workers."""
        alive = conn.execute(self.queries["heartbeat"], {"worker_id": self.worker_id}).fetchone()
        if alive is None:
            # Declared lost (a long stall): our messages went back to their queues,
            # and acks of our old leases will match nothing. Carry on as a new lease holder.
            logger.warning("Worker %s was presumed lost; registering again.", self.worker_id)
            self.register(conn)
        lost = conn.execute(
            self.queries["reap_lost_workers"], {"lease_timeout": self.lease_timeout}
        ).fetchall()
        if lost:
            logger.info("Workers presumed lost: %s.", [str(row[0]) for row in lost])

    def unregister(self, conn: psycopg.Connection) -> None:
        """Leave; whatever this worker still holds is recovered by the others."""
        conn.execute(self.queries["unregister_worker"], {"worker_id": self.worker_id})
