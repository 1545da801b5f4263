"""Worker presence: the row that holds a process's leases, kept alive by heartbeats.

Claimed messages are leased to a worker row, not renewed one by one. A worker
is lost once its heartbeat is older than its lease; a session that ended only
shortens that wait (see ``reap_lost_workers``). Being presumed lost is safe
for a worker that is in fact alive: it takes a new identity, and its leases
under the old one are refused (acks, claims, durable checkpoints).
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
    """This process's worker row, kept alive by ``beat``; lost workers' rows are reaped.

    ``worker_id`` is the identity claims are made under. It changes when the
    row turns out to have been reaped: the old identity is never used again.
    """

    def __init__(
        self, queries: Queries, *, lease_timeout: float, heartbeat_interval: float
    ) -> None:
        self.worker_id = uuid.uuid4()
        self.queries = queries
        self.lease_timeout = lease_timeout
        #: How long a worker whose session ended has to reconnect before it is
        #: presumed dead: a heartbeat, plus a second to reconnect (a reconnect beats).
        self.session_grace = min(heartbeat_interval + 1.0, lease_timeout)
        self._registered = False

    def connect(self, conn: psycopg.Connection) -> None:
        """Stand for this process on ``conn``: a new session, same identity unless it was reaped."""
        if self._registered:
            row = conn.execute(
                self.queries["reconnect_worker"], {"worker_id": self.worker_id}
            ).fetchone()
            if row is not None:
                return
            self._renew_identity()
        conn.execute(
            self.queries["register_worker"],
            {
                "worker_id": self.worker_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "lease_timeout": self.lease_timeout,
            },
        )
        self._registered = True

    def beat(self, conn: psycopg.Connection) -> None:
        """Renew this worker's leases, then reap the rows of lost workers."""
        alive = conn.execute(self.queries["heartbeat"], {"worker_id": self.worker_id}).fetchone()
        if alive is None:
            self._renew_identity()
            self.connect(conn)
        lost = conn.execute(
            self.queries["reap_lost_workers"],
            {"grace": self.session_grace, "dead": self._dead_on_this_host(conn)},
        ).fetchall()
        if lost:
            logger.info("Workers presumed lost: %s.", [str(row[0]) for row in lost])

    def _dead_on_this_host(self, conn: psycopg.Connection) -> list[uuid.UUID]:
        """Workers of this host whose session and process are both gone: surely dead.

        A worker restarted on the same host (or a sibling process) then takes
        over at once, without waiting for the grace a vanished session gets.
        """
        silent = conn.execute(
            self.queries["silent_workers_on_host"],
            {"hostname": socket.gethostname(), "worker_id": self.worker_id},
        ).fetchall()
        return [worker_id for worker_id, pid in silent if not _process_exists(pid)]

    def forked(self) -> None:
        """In a forked child: the parent's row is not this process's."""
        self.worker_id = uuid.uuid4()
        self._registered = False

    def unregister(self, conn: psycopg.Connection) -> None:
        """Leave; whatever this worker still holds is recovered by the others."""
        conn.execute(self.queries["unregister_worker"], {"worker_id": self.worker_id})

    def _renew_identity(self) -> None:
        # Presumed lost (a stall or a cut connection): our messages went back to
        # their queues and our late settlements match nothing. Carry on as a new worker.
        old, self.worker_id = self.worker_id, uuid.uuid4()
        self._registered = False
        logger.warning("Worker %s was presumed lost; continuing as %s.", old, self.worker_id)


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie is not: it has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc to tell: alive, as far as we know
