"""The shared LISTEN session: one connection per Database and process, for every NOTIFY waiter.

A waiter subscribes to a channel (optionally to one payload on it), then looks
at its table, then waits, and looks again after each wake-up. A subscription
to a channel the session does not listen to yet is woken once the session's
thread has run LISTEN, and every subscription is woken after a reconnect
(notifications sent while disconnected are lost): a waiter that looks again
after each wake-up misses nothing.

Session hooks run on the same connection: ``session_started`` on every
(re)connect, after LISTEN and before waiters are woken, and ``tick`` about
every ``tick_interval`` seconds (the worker heartbeat, whose session is the
process's sign of life).

Through a proxy that pools by transaction (``db.transaction_pooling``) no
session stays ours to LISTEN on: the thread then opens no connection and wakes
every waiter each ``POLL_INTERVAL`` seconds to look again; callbacks and session
hooks, which need real notifications and a session, are refused.
"""

from __future__ import annotations

import logging
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Protocol, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from .database import TRANSACTION_POOLING_ENV, Database, describe, is_connection_error
from .errors import ConfigurationError
from .sqlfile import Queries

logger = logging.getLogger(__name__)

K = TypeVar("K")

#: Seconds a channel stays listened to after its last subscription closed, and
#: the session stays open once nothing uses it: waiters that come and go reuse both.
LINGER = 10.0
#: Reconnection backoff: the first delay, doubling up to the cap (with jitter).
RECONNECT_DELAY = 0.05
RECONNECT_DELAY_CAP = 2.0
#: Longest the session's thread blocks before it looks at its state again.
MAX_BLOCK = 5.0
#: Longest ``close`` and ``detach`` wait for the thread (it may be running a tick).
STOP_TIMEOUT = 15.0
#: Without a LISTEN session (transaction pooling), how often waiters look again.
POLL_INTERVAL = 0.5


class SessionHooks(Protocol):
    """Work that runs on the shared session itself, in its thread."""

    @property
    def tick_interval(self) -> float: ...

    def session_started(self, conn: psycopg.Connection) -> None:
        """On every (re)connect, after LISTEN and before waiters are woken."""

    def tick(self, conn: psycopg.Connection) -> None:
        """About every ``tick_interval`` seconds."""

    def session_failed(self, error: BaseException) -> None:
        """A (re)connect failed, for this reason; the session tries again."""


class Subscription:
    """Interest in one channel's notifications (of one payload, if given).

    With ``on_notify``, each matching payload is passed to it in the session's
    thread; otherwise ``wait`` returns when one arrived. Close it when done.
    """

    def __init__(
        self,
        hub: Notifications,
        channel: str,
        payload: str | None,
        on_notify: Callable[[str], None] | None,
    ) -> None:
        self.channel = channel
        self.payload = payload
        self.on_notify = on_notify
        self._hub = hub
        self._woken = threading.Event()
        self._closed = False

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for news; whether there was any since the last wait.

        News is a matching notification, or a (re)connect after which
        notifications may have been missed: either way, look again.
        """
        woken = self._woken.wait(max(timeout, 0.0))
        self._woken.clear()
        return woken

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _deliver(self, payload: str) -> None:
        if self.on_notify is None:
            self._woken.set()
        else:
            self.on_notify(payload)

    def _wake(self) -> None:
        if self.on_notify is None:
            self._woken.set()


class Notifications:
    """One LISTEN connection to ``db`` for this process, opened on first use.

    Get it as ``db.notifications``. Its thread listens to the channels that
    have subscriptions, dispatches notifications, runs the attached session
    hooks, reconnects with a capped backoff after the connection breaks, and
    closes the connection once nothing has used it for ``LINGER`` seconds.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.queries = Queries("broker_pg", "queries.sql", db.schema)
        #: The process this session belongs to (a forked child makes its own).
        self.pid = os.getpid()
        #: Why the latest (re)connect failed; None once connected.
        self.last_error: BaseException | None = None
        self._lock = threading.Lock()
        self._hook_done = threading.Condition(self._lock)
        self._counts: dict[str, int] = {}
        self._unfiltered: dict[str, set[Subscription]] = {}
        self._by_payload: dict[tuple[str, str], set[Subscription]] = {}
        #: Channels without subscriptions, since when (they linger, then UNLISTEN).
        self._released: dict[str, float] = {}
        #: application_name the session takes while a channel is listened to.
        self._announce: dict[str, str] = {}
        #: What the current connection listens to, and its name and backend pid.
        self._listening: set[str] = set()
        self._name: str | None = None
        self._backend_pid: int | None = None
        #: Announced channels this session is registered for in the listeners table.
        self._registered: set[str] = set()
        #: Attached hooks and their next tick (None: not started on this connection).
        self._hooks: dict[SessionHooks, float | None] = {}
        self._running_hook: SessionHooks | None = None
        self._failing_ticks: set[SessionHooks] = set()
        self._thread: threading.Thread | None = None
        self._run: _Run | None = None
        self._idle_since: float | None = None
        self._outage = False

    # -- For waiters and hooks ----------------------------------------------

    def subscribe(
        self,
        channel: str,
        *,
        payload: str | None = None,
        on_notify: Callable[[str], None] | None = None,
        announce: str | None = None,
    ) -> Subscription:
        """Subscribe to ``channel`` (to ``payload`` only, if given).

        Subscribe before looking at what the notification is about. While the
        channel is listened to with an ``announce`` (a name), the session is
        registered in the ``listeners`` table, for senders that notify only when
        someone waits, and its application_name starts with ``announce`` (its own
        name follows, so tools still find it).
        """
        if on_notify is not None:
            self._need_session("a notification callback")
        subscription = Subscription(self, channel, payload, on_notify)
        with self._lock:
            self._counts[channel] = self._counts.get(channel, 0) + 1
            self._released.pop(channel, None)
            if payload is None:
                self._unfiltered.setdefault(channel, set()).add(subscription)
            else:
                self._by_payload.setdefault((channel, payload), set()).add(subscription)
            if announce is not None:
                self._announce[channel] = announce
            pending = channel not in self._listening or self._wanted_name() != self._name
            self._ensure_thread()
        if pending:
            self._nudge()
        return subscription

    def attach(self, hooks: SessionHooks) -> None:
        """Run ``hooks`` on the session: started now (or on connect), then ticked."""
        self._need_session("session hooks (a worker's heartbeat)")
        with self._lock:
            self._hooks[hooks] = None
            self._ensure_thread()
        self._nudge()

    def detach(self, hooks: SessionHooks) -> None:
        """Stop running ``hooks``; once this returns, none of them runs again."""
        with self._lock:
            self._hooks.pop(hooks, None)
            self._failing_ticks.discard(hooks)
            if threading.current_thread() is not self._thread:
                deadline = time.monotonic() + STOP_TIMEOUT
                while self._running_hook is hooks and (left := deadline - time.monotonic()) > 0:
                    self._hook_done.wait(left)
        self._nudge()

    def close(self) -> None:
        """Close the connection and end the thread; using it again reopens both."""
        with self._lock:
            thread, run = self._thread, self._run
            self._thread = self._run = None
        if run is not None:
            run.stop.set()
            run.nudge()
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                logger.warning("The LISTEN session's thread did not stop within %ss.", STOP_TIMEOUT)

    @property
    def backend_pid(self) -> int | None:
        """The server process of the current connection, if connected."""
        with self._lock:
            return self._backend_pid

    def listening(self, channel: str) -> bool:
        """Whether the current connection listens to ``channel``."""
        with self._lock:
            return channel in self._listening

    def subscribers(self, channel: str) -> int:
        """How many subscriptions ``channel`` has."""
        with self._lock:
            return self._counts.get(channel, 0)

    def _need_session(self, what: str) -> None:
        if self.db.transaction_pooling:
            raise ConfigurationError(
                f"{what} needs a LISTEN session of its own, which a proxy pooling by "
                f"transaction (transaction_pooling, {TRANSACTION_POOLING_ENV}) cannot give: "
                "connect workers to PostgreSQL directly or through pgbouncer in "
                "pool_mode=session; producers may keep the transaction-pooling URL."
            )

    # -- Bookkeeping (under the lock) ---------------------------------------

    def _unsubscribe(self, subscription: Subscription) -> None:
        channel = subscription.channel
        with self._lock:
            if subscription.payload is None:
                _discard(self._unfiltered, channel, subscription)
            else:
                _discard(self._by_payload, (channel, subscription.payload), subscription)
            count = self._counts.get(channel, 0) - 1
            if count > 0:
                self._counts[channel] = count
            else:
                self._counts.pop(channel, None)
                self._released[channel] = time.monotonic()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._run = _Run()
            self._thread = threading.Thread(
                target=self._thread_main,
                args=(self._run,),
                name="broker_pg-notifications",
                daemon=True,
            )
            self._thread.start()

    def _owns(self, run: _Run) -> bool:
        """Whether ``run`` is still current: no close, and no newer thread, replaced it."""
        return self._run is run and not run.stop.is_set()

    def _wanted_name(self) -> str:
        for channel, announce in sorted(self._announce.items()):
            if channel in self._counts or channel in self._listening:
                return self._announced(announce)
        return self.db.listener_name

    def _announced(self, announce: str) -> str:
        # PostgreSQL keeps 63 bytes of a name: the announcement comes first so it survives.
        return f"{announce} {self.db.listener_name}"[:63]

    def _waiters(self, channels: set[str] | None = None) -> list[Subscription]:
        found = [
            s
            for channel, subs in self._unfiltered.items()
            if channels is None or channel in channels
            for s in subs
        ]
        found += [
            s
            for (channel, _), subs in self._by_payload.items()
            if channels is None or channel in channels
            for s in subs
        ]
        return found

    def _in_use(self) -> bool:
        return bool(self._counts or self._hooks or self._listening)

    def _nudge(self) -> None:
        run = self._run
        if run is not None:
            run.nudge()

    # -- The session's thread -----------------------------------------------

    def _thread_main(self, run: _Run) -> None:
        try:
            if self.db.transaction_pooling:
                self._poll(run)
            else:
                self._connect_and_serve(run)
        finally:
            run.close()

    def _poll(self, run: _Run) -> None:
        """Without a session to LISTEN on: wake every waiter each POLL_INTERVAL, while any waits."""
        while not run.stop.wait(POLL_INTERVAL):
            with self._lock:
                if not self._owns(run):
                    return
                if not self._in_use():
                    self._thread = self._run = None
                    return
                waiters = self._waiters()
            for waiter in waiters:
                waiter._wake()

    def _connect_and_serve(self, run: _Run) -> None:
        failures = 0
        while not run.stop.is_set():
            conn: psycopg.Connection | None = None
            try:
                conn = self.db.listen_connection()
                self._serve(conn, run)
                failures = 0
            except Exception as e:
                failures += 1
                self._failed(run, self.db.schema_missing(e) or e)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        logger.debug("Closing the LISTEN connection failed.", exc_info=True)
                self._disconnected(run)
            with self._lock:
                if not self._owns(run):
                    return
                if not self._in_use():
                    # Nothing arrived while the connection closed: end the thread.
                    self._thread = self._run = None
                    return
            if failures:
                delay = min(RECONNECT_DELAY_CAP, RECONNECT_DELAY * 2 ** (failures - 1))
                run.stop.wait(delay * random.uniform(0.5, 1.0))

    def _serve(self, conn: psycopg.Connection, run: _Run) -> None:
        """Serve one connection until stopped or unused for a while; raise if it breaks."""
        self._start(conn, run)
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(run.wake_r, selectors.EVENT_READ)
            while not run.stop.is_set():
                self._dispatch(conn)
                self._sync(conn, run)
                self._run_hooks(conn)
                self._dispatch(conn)
                timeout = self._block_for()
                if timeout is None:
                    return
                for key, _ in selector.select(timeout):
                    if key.fileobj is run.wake_r:
                        run.drain()

    def _start(self, conn: psycopg.Connection, run: _Run) -> None:
        with self._lock:
            if not self._owns(run):
                return
            wanted = set(self._counts)
            self._released.clear()
            self._announce = {c: a for c, a in self._announce.items() if c in wanted}
            self._listening = set()
            self._registered = set()
            announced = set(self._announce)
            name = self._wanted_name()
            hooks = list(self._hooks)
        _set_name(conn, name)
        for channel in sorted(wanted):
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._register(conn, announced, set())
        with self._lock:
            if not self._owns(run):
                return
            self._name, self._listening = name, wanted
            self._backend_pid = conn.info.backend_pid
        for hooks_ in hooks:
            self._run_hook(hooks_, conn, start=True)
        self.last_error = None
        if self._outage:
            self._outage = False
            logger.info("LISTEN session to %s restored.", describe(self.db.url))
        with self._lock:
            waiters = self._waiters()
        for waiter in waiters:
            waiter._wake()

    def _sync(self, conn: psycopg.Connection, run: _Run) -> None:
        """LISTEN to new channels, UNLISTEN to long-released ones, keep the name announced."""
        now = time.monotonic()
        with self._lock:
            if not self._owns(run):
                return
            listen = set(self._counts) - self._listening
            unlisten = {
                c
                for c in self._listening
                if c not in self._counts and now - self._released.setdefault(c, now) >= LINGER
            }
            for channel in unlisten:
                self._listening.discard(channel)
                self._released.pop(channel, None)
                self._announce.pop(channel, None)
            name = self._wanted_name()
            renamed = {
                c
                for c, a in self._announce.items()
                if self._announced(a) == name and name != self._name
            }
            announced = set(self._announce)
        if name != self._name:
            _set_name(conn, name)
        for channel in sorted(unlisten):
            conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
        for channel in sorted(listen):
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._register(conn, announced - self._registered, self._registered - announced)
        if not (listen or unlisten or name != self._name):
            return
        with self._lock:
            if not self._owns(run):
                return
            self._name = name
            self._listening |= listen
            waiters = self._waiters(listen | renamed)
        for waiter in waiters:
            waiter._wake()

    def _register(self, conn: psycopg.Connection, add: set[str], remove: set[str]) -> None:
        """Register this session for the announced channels ``add``, no longer for ``remove``.

        After the LISTEN: a sender that finds the row is sure to reach the session.
        """
        if add:
            conn.execute(self.queries["register_listener"], {"channels": sorted(add)})
        if remove:
            conn.execute(self.queries["unregister_listener"], {"channels": sorted(remove)})
        self._registered = (self._registered | add) - remove

    def _run_hooks(self, conn: psycopg.Connection) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(h, t is None) for h, t in self._hooks.items() if t is None or t <= now]
        for hooks, start in due:
            self._run_hook(hooks, conn, start=start)

    def _run_hook(self, hooks: SessionHooks, conn: psycopg.Connection, *, start: bool) -> None:
        with self._lock:
            if hooks not in self._hooks:
                return  # detached meanwhile
            self._running_hook = hooks
        try:
            if start:
                hooks.session_started(conn)  # a failure fails the session
            else:
                self._tick(hooks, conn)
        finally:
            with self._lock:
                self._running_hook = None
                if hooks in self._hooks:
                    self._hooks[hooks] = time.monotonic() + hooks.tick_interval
                self._hook_done.notify_all()

    def _tick(self, hooks: SessionHooks, conn: psycopg.Connection) -> None:
        try:
            hooks.tick(conn)
        except Exception as e:
            if _broken(conn, e):
                raise
            # A failed statement leaves the connection usable: try again next tick.
            log = logger.debug if hooks in self._failing_ticks else logger.warning
            log("A tick on the LISTEN session failed (%s); trying again.", e, exc_info=True)
            self._failing_ticks.add(hooks)
        else:
            self._failing_ticks.discard(hooks)

    def _dispatch(self, conn: psycopg.Connection) -> None:
        for notification in list(conn.notifies(timeout=0)):
            with self._lock:
                targets = [
                    *self._unfiltered.get(notification.channel, ()),
                    *self._by_payload.get((notification.channel, notification.payload), ()),
                ]
            for target in targets:
                try:
                    target._deliver(notification.payload)
                except Exception:
                    logger.exception("A notification handler failed.")
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the LISTEN connection is closed")

    def _block_for(self) -> float | None:
        """Seconds to block for: until the next tick or lingering channel is due; None to end."""
        now = time.monotonic()
        with self._lock:
            if not self._in_use():
                if self._idle_since is None:
                    self._idle_since = now
                if now - self._idle_since >= LINGER:
                    return None
                return max(0.0, self._idle_since + LINGER - now)
            self._idle_since = None
            due = [MAX_BLOCK]
            due += [t - now for t in self._hooks.values() if t is not None]
            due += [t + LINGER - now for c, t in self._released.items() if c in self._listening]
            return max(0.0, min(due))

    def _failed(self, run: _Run, error: BaseException) -> None:
        if run.stop.is_set():
            return
        self.last_error = error
        # Once per outage, not every attempt.
        log = logger.debug if self._outage else logger.warning
        log("LISTEN session to %s failed (%s); reconnecting.", describe(self.db.url), error)
        self._outage = True
        with self._lock:
            hooks = list(self._hooks)
        for hooks_ in hooks:
            try:
                hooks_.session_failed(error)
            except Exception:
                logger.exception("A session hook failed.")

    def _disconnected(self, run: _Run) -> None:
        with self._lock:
            if self._run is not run and self._run is not None:
                return  # a newer thread owns the state now
            self._listening = set()
            self._name = None
            self._backend_pid = None
            self._hooks = dict.fromkeys(self._hooks)


class _Run:
    """One run of the session's thread: its stop flag, and a socket pair to wake it up."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    def nudge(self) -> None:
        # Full: the thread has enough reasons to wake up already. Closed: it ended.
        with suppress(OSError):
            self.wake_w.send(b"\0")

    def drain(self) -> None:
        with suppress(OSError):  # raised once drained
            while self.wake_r.recv(4096):
                pass

    def close(self) -> None:
        self.wake_r.close()
        self.wake_w.close()


def _set_name(conn: psycopg.Connection, name: str) -> None:
    conn.execute("SELECT set_config('application_name', %s, false)", (name,))


def _broken(conn: psycopg.Connection, error: BaseException) -> bool:
    """Whether ``error`` left ``conn`` unusable (rather than failing one statement)."""
    if conn.closed or conn.broken:
        return True
    if isinstance(error, psycopg.Error) and is_connection_error(error):
        return True
    return conn.info.transaction_status != TransactionStatus.IDLE


def _discard(index: dict[K, set[Subscription]], key: K, subscription: Subscription) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(subscription)
        if not subs:
            del index[key]
