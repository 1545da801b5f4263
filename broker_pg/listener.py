"""One LISTEN connection per process: wake-ups in, heartbeats out.

The thread blocks on notifications for at most one tick, then runs the tick
callback (the worker heartbeat) on the same connection. Its session is the
process's sign of life: when the process dies, the session ends with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

from .database import Database
from .errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

#: Seconds to wait before reconnecting after the connection broke.
RECONNECT_DELAY = 0.5


class Listener:
    def __init__(
        self,
        db: Database,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_connect: Callable[[psycopg.Connection], None],
        on_tick: Callable[[psycopg.Connection], None],
        tick_interval: float,
    ) -> None:
        self.db = db
        self.channel = channel
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.on_tick = on_tick
        self.tick_interval = tick_interval
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._outage = False
        self._thread = threading.Thread(target=self._run, name="broker_pg-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # Wake it from its wait for notifications rather than wait out a whole tick.
            try:
                with self.db.connection() as conn:
                    conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
            except Exception:
                logger.debug("Could not wake the listener; waiting for its tick.", exc_info=True)
            self._thread.join(timeout=self.tick_interval + 5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self.db.listen_connection() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.on_connect(conn)
                    self.connected.set()
                    if self._outage:
                        logger.info("Listener reconnected.")
                        self._outage = False
                    self._serve(conn)
            except (psycopg.Error, OSError, DatabaseUnavailable) as e:
                # Once per outage, not every attempt.
                log = logger.debug if self._outage else logger.warning
                log("Listener connection lost (%s); reconnecting.", e)
                self._outage = True
                self._stopping.wait(RECONNECT_DELAY)
            except Exception:
                logger.exception("Listener failed; restarting it.")
                self._stopping.wait(RECONNECT_DELAY)

    def _serve(self, conn: psycopg.Connection) -> None:
        while not self._stopping.is_set():
            for notification in conn.notifies(timeout=self.tick_interval):
                self.on_notify(notification.payload)
                if self._stopping.is_set():
                    return
            self.on_tick(conn)
