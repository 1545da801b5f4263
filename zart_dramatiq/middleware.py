"""DurableMiddleware: runs durable bodies and keeps Dramatiq's middleware honest.

Hooks, in the order a delivery meets them:

* ``before_process_message`` makes the delivery visible to the durable actor.
* The actor's call hands the delivery to the runner (``runner.Runner``): it
  takes the execution, replays its journal, runs the body and records its
  end. A pause raises a SkipMessage, so Retries, Callbacks, Pipelines and
  Results ignore it; a final failure is raised with retries exhausted.
* ``after_worker_boot`` starts the sweeper (``sweeper.Sweeper``), which
  resumes executions whose run ended without recording it.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import dramatiq
from dramatiq import MessageProxy
from dramatiq.common import current_millis

from broker_pg import DEFAULT_SCHEMA, Database, PostgresBroker
from broker_pg.database import channel_name
from broker_pg.listener import Listener
from broker_pg.presence import WorkerPresence
from broker_pg.sqlfile import Queries

from . import metrics
from .errors import ZartError
from .limits import DEFAULT_LIMITS, Limits
from .run import SEQ
from .runner import Runner
from .store import Store
from .sweeper import Sweeper
from .transport import Transport, transport_for
from .versioning import DEFAULT_BLOCKED_BACKOFF

if TYPE_CHECKING:
    from .actor import DurableActor
    from .scheduler import Scheduler

logger = logging.getLogger(__name__)

_delivery: ContextVar[MessageProxy | None] = ContextVar("zart_delivery", default=None)


def current_delivery() -> MessageProxy | None:
    return _delivery.get()


class DurableMiddleware(dramatiq.Middleware):
    """Durable execution for the actors decorated with ``@zart.durable``.

    Parameters:
      url, schema: where executions are kept. On a PostgresBroker both default
        to the broker's own database and schema, which makes suspend-and-requeue
        and event-and-wake single transactions.
      lease_timeout, heartbeat_interval: on brokers other than a PostgresBroker
        in the same schema, the lease and heartbeat of this process's own
        worker row (a PostgresBroker's own settings apply otherwise).
      repair_after: on other brokers, how overdue a wake-up must be before the
        sweeper sends the resuming message again.
      write_timeout: how long a run keeps retrying a write through a database
        outage before it lets go and leaves its execution to the sweeper.
      execution_retention: how long an ended execution (completed, failed,
        cancelled, timed out) is kept, with its steps and events, before a worker
        deletes it: until then its id starts nothing new and ``zart.retry`` can
        resume it. None keeps executions until purged.
      limits: what one execution may store: the entries of a generation's
        journal, and the size of a step result, event payload or input
        (``Limits``: 10,000 entries, 1 MiB).
      blocked_backoff: the first and the longest wait before the replay of a
        blocked execution (one whose replay diverged from its journal) is tried
        again, doubling in between; a worker with other code for its actor tries
        it at once (``versioning``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str | None = None,
        lease_timeout: float = 30.0,
        repair_after: timedelta = timedelta(seconds=60),
        heartbeat_interval: float = 1.0,
        write_timeout: float = 30.0,
        execution_retention: timedelta | None = timedelta(days=30),
        limits: Limits = DEFAULT_LIMITS,
        blocked_backoff: tuple[timedelta, timedelta] = DEFAULT_BLOCKED_BACKOFF,
    ) -> None:
        self.url = url
        self.schema = schema
        self.lease_timeout = lease_timeout
        self.repair_after = repair_after
        self.heartbeat_interval = heartbeat_interval
        self.write_timeout = write_timeout
        self.execution_retention = execution_retention
        self.limits = limits
        self.blocked_backoff = blocked_backoff
        self.broker: dramatiq.Broker | None = None
        self._store: Store | None = None
        self._transport: Transport | None = None
        self._runner: Runner | None = None
        self._sweeper: Sweeper | None = None
        self._scheduler: Scheduler | None = None
        self._presence: WorkerPresence | None = None
        self._listener: Listener | None = None
        self._lock = threading.Lock()

    # -- Wiring ------------------------------------------------------------

    def bind(self, broker: dramatiq.Broker) -> None:
        with self._lock:
            if self.broker is broker:
                return
            self.broker = broker
            if (
                isinstance(broker, PostgresBroker)
                and self.url is None
                and (self.schema in (None, broker.db.schema))
            ):
                db = broker.db
            else:
                db = Database(
                    self.url,
                    schema=self.schema or DEFAULT_SCHEMA,
                    application_name="zart_dramatiq",
                )
            self._store = Store(db, write_timeout=self.write_timeout)
            self._transport = transport_for(broker, db)
            self._runner = Runner(
                self._store,
                self._transport,
                worker_id=lambda: self.worker_id,
                lease_timeout=self._lease_timeout,
                limits=self.limits,
                blocked_backoff=self.blocked_backoff,
            )
            self._sweeper = Sweeper(
                self._store,
                self._transport,
                self._runner.local_runs,
                worker_id=lambda: self.worker_id,
                interval=self.heartbeat_interval,
                repair_after=self.repair_after,
                execution_retention=self.execution_retention,
            )

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ZartError("DurableMiddleware is not attached to a broker yet")
        return self._store

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise ZartError("DurableMiddleware is not attached to a broker yet")
        return self._transport

    @property
    def sweeper(self) -> Sweeper:
        if self._sweeper is None:
            raise ZartError("DurableMiddleware is not attached to a broker yet")
        return self._sweeper

    @property
    def scheduler(self) -> Scheduler:
        """This process's schedules loop (``scheduler.Scheduler``); workers start it at boot."""
        from .scheduler import Scheduler  # it imports the client API, which imports us

        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self)
            return self._scheduler

    @property
    def worker_id(self) -> UUID:
        """The identity runs take executions under: the worker row in the executions' schema."""
        if self.transport.atomic:
            assert isinstance(self.broker, PostgresBroker)
            return self.broker.worker_id
        return self._own_presence().worker_id

    def _lease_timeout(self) -> float:
        if self.transport.atomic:
            assert isinstance(self.broker, PostgresBroker)
            return self.broker.presence.lease_timeout
        return self.lease_timeout

    def _own_presence(self) -> WorkerPresence:
        """Without broker_pg in the same schema, this process's own worker row for leases."""
        with self._lock:
            if self._presence is None:
                db = self.store.db
                self._presence = WorkerPresence(
                    Queries("broker_pg", "queries.sql", db.schema),
                    lease_timeout=self.lease_timeout,
                    heartbeat_interval=self.heartbeat_interval,
                )
                self._listener = Listener(
                    db,
                    channel_name(db.schema, "messages"),
                    on_notify=lambda _: None,
                    on_connect=self._presence.connect,
                    on_tick=self._presence.beat,
                    tick_interval=self.heartbeat_interval,
                )
                self._listener.start()
            presence, listener = self._presence, self._listener
        assert listener is not None
        listener.connected.wait(self.store.db.connect_timeout)
        return presence

    # -- Hooks -------------------------------------------------------------

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.bind(broker)
        metrics.prepare()  # before any run, where a TimeLimit could cut it short
        if not self.transport.atomic:
            self._own_presence()  # heartbeats for the bodies this worker runs
        self.sweeper.start()
        self.scheduler.start()  # writes the schedules defined in code, then fires their ticks

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
        if self._scheduler is not None:
            self._scheduler.stop()
        with self._lock:
            listener, self._listener = self._listener, None
            presence, self._presence = self._presence, None
        if listener is not None:
            listener.stop()
        if presence is not None:
            with self.store.db.connection() as conn:
                presence.unregister(conn)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self.bind(broker)
        if int(message.options.get(SEQ, 0)) > 0:
            # A resumed execution is a new delivery for AgeLimit, which runs next:
            # it must not count the time the execution slept or waited.
            message._message = message._message.copy(message_timestamp=current_millis())
        _delivery.set(message)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        _delivery.set(None)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _delivery.set(None)

    # -- Running a body ----------------------------------------------------

    def run_body(
        self,
        actor: DurableActor,
        delivery: MessageProxy,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run one delivery of a durable actor; return its JSON result."""
        self.bind(actor.broker)
        self.sweeper.start()  # also where durable actors were declared after the worker booted
        assert self._runner is not None
        return self._runner.deliver(actor, delivery, args, kwargs)


def _quiet_interruptions(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return not (args and getattr(args[0], "zart_interrupted", False) is True)


# An interruption is routine, not the warning Dramatiq logs for skipped messages.
logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_quiet_interruptions)


def middleware_for(broker: dramatiq.Broker) -> DurableMiddleware:
    """The broker's DurableMiddleware, installed (before Retries) if missing."""
    for middleware in broker.middleware:
        if isinstance(middleware, DurableMiddleware):
            middleware.bind(broker)
            return middleware
    middleware = DurableMiddleware()
    # First in the list: its before_* hooks run before AgeLimit's.
    first = type(broker.middleware[0]) if broker.middleware else None
    broker.add_middleware(middleware, before=first)
    middleware.bind(broker)
    return middleware
