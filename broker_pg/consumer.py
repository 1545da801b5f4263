"""Consumers: batched lease claims, buffered acks, wake-ups without polling."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dramatiq import Consumer, Message, MessageProxy
from dramatiq.errors import DecodeError

if TYPE_CHECKING:
    from .broker import PostgresBroker

logger = logging.getLogger(__name__)


class PostgresMessageProxy(MessageProxy):
    """A delivered message and its lease: the row id and the delivery number."""

    def __init__(self, message: Message[Any], row_id: int, delivery: int) -> None:
        super().__init__(message)
        self.row_id = row_id
        self.delivery = delivery
        #: Set once the lease is settled (acked, nacked, requeued, or taken over
        #: by a transaction that deleted the row), so it is settled only once.
        self.settled = False


class QueueState:
    """What the consumers of one queue in this process share.

    Acks arrive on worker threads and are buffered here until the consumer's
    next claim settles them in the same round trip. Every ack, and every
    NOTIFY for the queue, wakes the consumer.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._signalled = False
        self._acks: list[tuple[int, int]] = []
        self.outstanding = 0

    def wake(self) -> None:
        with self._cond:
            self._signalled = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        with self._cond:
            if not self._signalled:
                self._cond.wait(timeout)
            self._signalled = False

    def claimed(self, count: int) -> None:
        with self._cond:
            self.outstanding += count

    def released(self, count: int = 1) -> None:
        with self._cond:
            self.outstanding -= count
            self._signalled = True
            self._cond.notify_all()

    def buffer_ack(self, row_id: int, delivery: int) -> None:
        with self._cond:
            self._acks.append((row_id, delivery))
            self.outstanding -= 1
            self._signalled = True
            self._cond.notify_all()

    def take_acks(self) -> list[tuple[int, int]]:
        with self._cond:
            acks, self._acks = self._acks, []
            return acks

    def restore_acks(self, acks: list[tuple[int, int]]) -> None:
        with self._cond:
            self._acks[:0] = acks


class PostgresConsumer(Consumer):
    def __init__(
        self, broker: PostgresBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.timeout = timeout / 1000
        self.state = broker.queue_state(queue_name)
        self.fetched: deque[PostgresMessageProxy] = deque()

    def __next__(self) -> PostgresMessageProxy | None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.fetched:
                return self.fetched.popleft()
            wait_for = self.broker.poll_interval
            acks = self.state.take_acks()
            free = max(self.prefetch - self.state.outstanding, 0)
            if free or acks:
                due_in = self._settle_and_claim(acks, free)
                if self.fetched:
                    continue
                if due_in is not None:
                    wait_for = min(wait_for, due_in)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.state.wait(min(remaining, wait_for))

    def _settle_and_claim(self, acks: list[tuple[int, int]], limit: int) -> float | None:
        """Settle ``acks``, claim up to ``limit`` messages; return seconds until the next is due."""
        try:
            rows, due_in = self.broker.ack_and_claim(self.queue_name, acks, limit)
        except BaseException:
            self.state.restore_acks(acks)
            raise
        self.state.claimed(len(rows))
        # Claimed rows come back unordered; hand them out in claim order.
        for row_id, delivery, _priority, _eta, payload, _ in sorted(
            rows, key=lambda r: (r[2], r[3], r[0])
        ):
            try:
                message = Message.decode(payload)
            except DecodeError as e:
                logger.error("Dead-lettering undecodable message %s: %s", row_id, e)
                self.broker.bury_undecodable(row_id, f"undecodable message: {e}")
                self.state.released()
                continue
            self.fetched.append(PostgresMessageProxy(message, row_id, delivery))
        return due_in

    def ack(self, message: MessageProxy) -> None:
        if isinstance(message, PostgresMessageProxy) and settle(message):
            self.state.buffer_ack(message.row_id, message.delivery)

    def nack(self, message: MessageProxy) -> None:
        if isinstance(message, PostgresMessageProxy) and settle(message):
            try:
                self.broker.dead_letter(message)
            except BaseException:
                # Unsettled again, so the Worker's retry of the nack is not a no-op.
                message.settled = False
                raise
            self.state.released()

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        returned = [m for m in messages if isinstance(m, PostgresMessageProxy) and settle(m)]
        if returned:
            try:
                self.broker.requeue([m.row_id for m in returned])
            except BaseException:
                for m in returned:
                    m.settled = False
                raise
            self.state.released(len(returned))

    def close(self) -> None:
        # Settle acks still buffered so a graceful stop leaves no row behind.
        if self.fetched:
            self.requeue(list(self.fetched))
            self.fetched.clear()
        if acks := self.state.take_acks():
            try:
                self.broker.ack_and_claim(self.queue_name, acks, 0)
            except Exception:
                logger.warning(
                    "Could not settle %d acks on close; they will be redelivered.",
                    len(acks),
                    exc_info=True,
                )


class DelayQueueConsumer(Consumer):
    """Consumer for Dramatiq's ``.DQ`` queues, which stay empty here.

    A delayed message is stored in its own queue with a future due time, and
    the queue's consumer claims it when due, so delayed messages never wait
    in worker memory. The Worker still starts a thread per delay queue; this
    keeps it idle without touching the database.
    """

    def __init__(self, timeout: int) -> None:
        self.timeout = timeout / 1000
        self._closed = threading.Event()

    def __next__(self) -> None:
        self._closed.wait(self.timeout)
        return None

    def ack(self, message: MessageProxy) -> None:
        pass

    def nack(self, message: MessageProxy) -> None:
        pass

    def close(self) -> None:
        self._closed.set()


_settle_lock = threading.Lock()


def settle(message: PostgresMessageProxy) -> bool:
    """Mark ``message`` settled; False if it already was."""
    with _settle_lock:
        if message.settled:
            return False
        message.settled = True
        return True
