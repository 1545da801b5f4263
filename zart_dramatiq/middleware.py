"""DurableMiddleware: runs durable bodies and keeps Dramatiq's middleware honest.

Hooks, in the order a delivery meets them:

* ``before_process_message`` makes the delivery visible to the durable actor.
* The actor's call acquires the execution, replays its journal, runs the
  body and records its end (``run_body``). A pause raises ``Suspended``, a
  SkipMessage, so Retries, Callbacks, Pipelines and Results ignore it.
* ``after_process_message`` runs after Retries (the middleware sits first in
  the list): once Dramatiq gives up on the message, the execution is failed.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import dramatiq
from dramatiq import Message, MessageProxy
from dramatiq.common import current_millis
from dramatiq.middleware import Retries
from dramatiq.worker import has_results_middleware

from broker_pg import DEFAULT_SCHEMA, Database, PostgresBroker
from broker_pg.database import channel_name
from broker_pg.listener import Listener
from broker_pg.presence import WorkerPresence
from broker_pg.sqlfile import Queries

from .errors import ZartError
from .run import (
    EXECUTION_ID,
    SEQ,
    DeadlinePassed,
    Run,
    Stopped,
    activate,
    deactivate,
    end_quietly,
)
from .serialization import dump, error_to_json, input_hash
from .store import Store
from .transport import Transport, transport_for

if TYPE_CHECKING:
    from .actor import DurableActor

logger = logging.getLogger(__name__)

_delivery: ContextVar[MessageProxy | None] = ContextVar("zart_delivery", default=None)

TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out"})


def current_delivery() -> MessageProxy | None:
    return _delivery.get()


class DurableMiddleware(dramatiq.Middleware):
    """Durable execution for the actors decorated with ``@zart.durable``.

    Parameters:
      url, schema: where executions are kept. On a PostgresBroker both default
        to the broker's own database and schema, which makes suspend-and-requeue
        and event-and-wake single transactions.
      lease_timeout: seconds without a heartbeat after which the worker running
        a body is presumed lost, so another delivery may take the body over.
      repair_after: on other brokers, how overdue a wake-up must be before the
        sweeper sends the resuming message again.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str | None = None,
        lease_timeout: float = 30.0,
        repair_after: timedelta = timedelta(seconds=60),
        heartbeat_interval: float = 1.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.lease_timeout = lease_timeout
        self.repair_after = repair_after
        self.heartbeat_interval = heartbeat_interval
        self.broker: dramatiq.Broker | None = None
        self._store: Store | None = None
        self._transport: Transport | None = None
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
            self._store = Store(db)
            self._transport = transport_for(broker, db)

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
    def worker_id(self) -> UUID:
        # Leases are checked against the workers table of the executions' schema:
        # the broker's own worker row only counts when it lives there.
        if self.transport.atomic:
            assert isinstance(self.broker, PostgresBroker)
            return self.broker.worker_id  # type: ignore[no-any-return]
        return self._own_presence().worker_id

    def _own_presence(self) -> WorkerPresence:
        """Without broker_pg in the same schema, this process's own worker row for leases."""
        with self._lock:
            if self._presence is None:
                db = self.store.db
                self._presence = WorkerPresence(
                    Queries("broker_pg", "queries.sql", db.schema),
                    lease_timeout=self.lease_timeout,
                )
                self._listener = Listener(
                    db,
                    channel_name(db.schema, "messages"),
                    on_notify=lambda _: None,
                    on_connect=self._presence.register,
                    on_tick=self._tick,
                    tick_interval=self.heartbeat_interval,
                )
                self._listener.start()
            presence, listener = self._presence, self._listener
        assert listener is not None
        listener.connected.wait(self.store.db.connect_timeout)
        return presence

    def _tick(self, conn: Any) -> None:
        assert self._presence is not None
        self._presence.beat(conn)
        self.repair_lost_wakeups()

    def repair_lost_wakeups(self) -> int:
        """Send again the resuming messages a non-transactional broker may have lost."""
        if self.transport.atomic:
            return 0
        rows = self.store.fetchall("repair_lost_wakeups", grace_s=self.repair_after.total_seconds())
        for payload, seq in rows:
            message = Message.decode(payload)
            logger.warning(
                "Re-sending the overdue wake-up of execution %s.", message.options.get(EXECUTION_ID)
            )
            assert self.broker is not None
            self.broker.enqueue(message.copy(options={SEQ: seq}))
        return len(rows)

    # -- Hooks -------------------------------------------------------------

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.bind(broker)
        if not self.transport.atomic:
            # Heartbeats for the bodies this worker runs, and the sweeper.
            self._own_presence()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
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
        if exception is None or not _is_durable(broker, message):
            return
        gave_up = message.failed or not any(isinstance(m, Retries) for m in broker.middleware)
        if gave_up:
            self.store.fetchone(
                "mark_failed",
                id=_execution_id(message),
                error=error_to_json(exception),
            )

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
        execution_id = _execution_id(delivery)
        seq = int(delivery.options.get(SEQ, 0))
        acquired = self._acquire(actor, delivery, execution_id, seq, args, kwargs)
        if not isinstance(acquired, Run):
            return acquired.result
        run = acquired
        token = activate(run)
        try:
            loaded_args, loaded_kwargs = actor.load_arguments(args, kwargs)
            value = actor.fn(*loaded_args, **loaded_kwargs)
            run.ensure_active()  # the body swallowed a Suspended and returned
            data = dump(value, actor.return_annotation, what=f"the result of {actor.actor_name}")
        except Stopped as stop:
            if isinstance(stop, DeadlinePassed):
                self._finish(run.execution_id, delivery, "timed_out", error=_timeout_error())
            end_quietly(delivery)
            raise
        except BaseException as error:
            if run.suspension is not None:
                raise run.suspension from error
            self.store.fetchone(
                "release_after_error",
                id=execution_id,
                worker_id=run.worker_id,
                error=error_to_json(error),
            )
            raise
        finally:
            deactivate(token)
        self._finish(execution_id, delivery, "completed", result=data)
        return data if _result_consumed(actor, delivery) else None

    def _acquire(
        self,
        actor: DurableActor,
        delivery: MessageProxy,
        execution_id: str,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Run | _Replay:
        worker_id = self.worker_id
        params = dict(
            id=execution_id, seq=seq, worker_id=worker_id, lease_timeout=self.lease_timeout
        )
        row = self.store.fetchone("acquire", **params)
        if row is None:
            state = self.store.fetchone("delivery_outcome", id=execution_id)
            if state is None and seq == 0:
                # Started with a plain send(): the execution begins with its first delivery.
                self.store.fetchone(
                    "insert_execution",
                    id=execution_id,
                    actor_name=actor.actor_name,
                    queue_name=actor.queue_name,
                    input_hash=input_hash(list(args), kwargs),
                    input={"args": list(args), "kwargs": kwargs},
                    timeout_s=_seconds(actor.durable_timeout),
                    message=delivery.copy(options={EXECUTION_ID: execution_id}).encode(),
                )
                row = self.store.fetchone("acquire", **params)
                state = None if row else self.store.fetchone("delivery_outcome", id=execution_id)
            if row is None:
                return self._refuse(delivery, execution_id, seq, state)
        expired, journal = row
        if expired:
            self._finish(execution_id, delivery, "timed_out", error=_timeout_error())
            raise _stop(delivery, f"execution {execution_id!r} passed its deadline")
        return Run(
            execution_id=execution_id,
            seq=seq,
            worker_id=worker_id,
            delivery=delivery,
            middleware=self,
            journal={entry["key"]: entry for entry in journal},
        )

    def _refuse(
        self, delivery: MessageProxy, execution_id: str, seq: int, state: tuple[Any, ...] | None
    ) -> _Replay:
        if state is None:
            raise _stop(delivery, f"execution {execution_id!r} does not exist")
        status, wake_seq, owned, result = state
        if status == "completed" and not self.transport.atomic:
            # Elsewhere a crash may have fallen between the completion and the ack:
            # the redelivery hands the recorded result to Dramatiq (callbacks, pipelines).
            # On broker_pg both commit together, so a delivery seeing it is a duplicate.
            return _Replay(result)
        if status in TERMINAL:
            raise _stop(delivery, f"execution {execution_id!r} already ended {status}")
        if wake_seq != seq:
            raise _stop(delivery, f"stale delivery of execution {execution_id!r}")
        if owned:
            # A live worker runs the body: come back once its lease could have lapsed.
            with self.store.transaction() as tx:
                self.transport.send(tx, delivery.copy(), int(self.lease_timeout * 1000))
                self.transport.settle(tx, delivery)
            raise _stop(delivery, f"execution {execution_id!r} is running elsewhere")
        raise _stop(delivery, f"execution {execution_id!r} is not runnable ({status})")

    def _finish(
        self,
        execution_id: str,
        delivery: MessageProxy,
        status: str,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        with self.store.transaction() as tx:
            self.store.run(
                tx,
                "finish",
                id=execution_id,
                worker_id=self.worker_id,
                status=status,
                result=result,
                error=error,
            )
            self.transport.settle(tx, delivery)


class _Replay:
    def __init__(self, result: Any) -> None:
        self.result = result


def _result_consumed(actor: DurableActor, delivery: MessageProxy) -> bool:
    """Whether Dramatiq does something with the actor's return value.

    The result is kept on the execution anyway; handing it to Dramatiq when
    nothing there uses it only earns a warning that it was discarded.
    """
    options = delivery.options
    return (
        has_results_middleware(actor.broker)
        or options.get("pipe_target") is not None
        or (options.get("on_success") or actor.options.get("on_success")) is not None
    )


def _stop(delivery: MessageProxy, reason: str) -> Stopped:
    end_quietly(delivery)
    return Stopped(reason)


def _quiet_pauses(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return not (args and getattr(args[0], "zart_paused", False) is True)


# A pause is routine, not the warning Dramatiq logs for skipped messages.
logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_quiet_pauses)


def _timeout_error() -> dict[str, Any]:
    return {"type": "ExecutionTimeout", "message": "the execution passed its deadline"}


def _seconds(duration: timedelta | None) -> float | None:
    return None if duration is None else duration.total_seconds()


def _execution_id(message: MessageProxy) -> str:
    return str(message.options.get(EXECUTION_ID) or message.message_id)


def _is_durable(broker: dramatiq.Broker, message: MessageProxy) -> bool:
    from .actor import DurableActor

    return isinstance(broker.actors.get(message.actor_name), DurableActor)


def middleware_for(broker: dramatiq.Broker) -> DurableMiddleware:
    """The broker's DurableMiddleware, installed (before Retries) if missing."""
    for middleware in broker.middleware:
        if isinstance(middleware, DurableMiddleware):
            middleware.bind(broker)
            return middleware
    middleware = DurableMiddleware()
    # First in the list: its before_* hooks run before AgeLimit's, and its
    # after_* hooks last, once Retries has decided whether the message failed.
    first = type(broker.middleware[0]) if broker.middleware else None
    broker.add_middleware(middleware, before=first)
    middleware.bind(broker)
    return middleware
