"""A worker's use of the shared LISTEN session: wake-ups in, heartbeats out.

The Listener rides on ``db.notifications``: it subscribes to one channel and
runs its callbacks on that session, whose end is the process's sign of death.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import psycopg

from .database import Database
from .errors import ConfigurationError
from .notifications import Notifications, Subscription


class Listener:
    """``on_notify(payload)`` for each notification on ``channel``;
    ``on_connect(conn)`` on every (re)connect of the session, before its waiters
    are woken; ``on_tick(conn)`` about every ``tick_interval`` seconds.
    """

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
        #: Set once ``on_connect`` has run on a session.
        self.connected = threading.Event()
        #: Why the latest (re)connect failed; None once connected.
        self.last_error: BaseException | None = None
        self._changed = threading.Condition()
        self._hub: Notifications | None = None
        self._subscription: Subscription | None = None

    def start(self) -> None:
        hub = self._hub = self.db.notifications
        self._subscription = hub.subscribe(self.channel, on_notify=self.on_notify)
        hub.attach(self)

    def stop(self) -> None:
        """Stop; once this returns, no callback of this Listener runs again."""
        hub, self._hub = self._hub, None
        if hub is None or hub.pid != os.getpid():
            return  # a parent process's session: not this process's to touch
        hub.detach(self)
        if self._subscription is not None:
            self._subscription.close()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected; give up early on a failure waiting cannot cure (no schema)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.connected.is_set() or isinstance(self.last_error, ConfigurationError),
                timeout,
            )
        return self.connected.is_set()

    # -- SessionHooks ------------------------------------------------------

    def session_started(self, conn: psycopg.Connection) -> None:
        self.on_connect(conn)
        with self._changed:
            self.last_error = None
            self.connected.set()
            self._changed.notify_all()

    def tick(self, conn: psycopg.Connection) -> None:
        self.on_tick(conn)

    def session_failed(self, error: BaseException) -> None:
        with self._changed:
            self.last_error = error
            self._changed.notify_all()
