"""Consumers: batched lease claims, buffered settlements, wake-ups without polling."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import tenacity
from dramatiq import Consumer, Message, MessageProxy
from dramatiq.errors import DecodeError

from .errors import DatabaseUnavailable

if TYPE_CHECKING:
    from .broker import PostgresBroker

logger = logging.getLogger(__name__)


#: Seconds a closing consumer keeps trying to settle its buffered leases.
CLOSE_SETTLE_TIMEOUT = 10.0
#: Longest pause between claims while the database is unreachable.
OUTAGE_BACKOFF_MAX = 1.0


class PostgresMessageProxy(MessageProxy):
    """A delivered message and its lease: the row id, the delivery number and the owner.

    The owner is the worker identity the message was claimed under; settling
    the lease names it, so a worker that was presumed lost (and took a new
    identity) can never settle a message that was handed to someone else.
    """

    def __init__(self, message: Message[Any], row_id: int, delivery: int, owner: UUID) -> None:
        super().__init__(message)
        self.row_id = row_id
        self.delivery = delivery
        self.owner = owner
        #: Set once the lease is settled (acked, nacked, requeued, or taken over
        #: by a transaction that deleted the row), so it is settled only once.
        self.settled = False


@dataclass(frozen=True)
class Lease:
    """A message's lease, as settlements name it."""

    row_id: int
    delivery: int
    owner: UUID

    @classmethod
    def of(cls, message: PostgresMessageProxy) -> Lease:
        return cls(message.row_id, message.delivery, message.owner)


@dataclass
class Settlements:
    """Leases let go of since the last claim: acked (deleted) or handed back (requeued)."""

    acks: list[Lease]
    hand_backs: list[Lease]

    def __bool__(self) -> bool:
        return bool(self.acks or self.hand_backs)


class QueueState:
    """What the consumers of one queue in this process share.

    Settlements arrive on worker threads and are buffered here until the
    consumer's next claim settles them in the same round trip. Every
    settlement, and every NOTIFY for the queue, wakes the consumer.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._signalled = False
        self._pending = Settlements([], [])
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

    def buffer_ack(self, lease: Lease) -> None:
        self._buffer(lease, self._pending.acks)

    def buffer_hand_back(self, lease: Lease) -> None:
        self._buffer(lease, self._pending.hand_backs)

    def _buffer(self, lease: Lease, into: list[Lease]) -> None:
        with self._cond:
            into.append(lease)
            self.outstanding -= 1
            self._signalled = True
            self._cond.notify_all()

    def take_settlements(self) -> Settlements:
        with self._cond:
            taken, self._pending = self._pending, Settlements([], [])
            return taken

    def restore_settlements(self, taken: Settlements) -> None:
        """Put back settlements that could not be written; they go with the next claim."""
        with self._cond:
            self._pending.acks[:0] = taken.acks
            self._pending.hand_backs[:0] = taken.hand_backs


class PostgresConsumer(Consumer):
    """Claims messages of one queue for this process's worker threads.

    While the database is unreachable it keeps returning None (so the Worker
    neither restarts it nor drops its prefetched messages) and claims again
    once the database answers; settlements wait in the queue state meanwhile.
    """

    def __init__(
        self, broker: PostgresBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.timeout = timeout / 1000
        self.state = broker.queue_state(queue_name)
        self.fetched: deque[PostgresMessageProxy] = deque()
        #: Claim rounds whose reply was lost: their rows may be leased to us unseen.
        self._lost_claims: list[UUID] = []
        self._failures = 0

    def __next__(self) -> PostgresMessageProxy | None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.fetched:
                return self.fetched.popleft()
            wait_for = self.broker.poll_interval
            settlements = self.state.take_settlements()
            free = max(self.prefetch - self.state.outstanding, 0)
            if free or settlements:
                try:
                    due_in = self._settle_and_claim(settlements, free)
                except DatabaseUnavailable as e:
                    self.state.restore_settlements(settlements)
                    wait_for = self._outage(e)
                else:
                    if self.fetched:
                        continue
                    if due_in is not None:
                        wait_for = min(wait_for, due_in)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.state.wait(min(remaining, wait_for))

    def _outage(self, error: DatabaseUnavailable) -> float:
        """Note a failed round; return how long to wait before the next one."""
        if self._failures == 0:
            logger.warning("Queue %s: %s Claiming again once it answers.", self.queue_name, error)
        self._failures += 1
        return outage_wait(self._failures)

    def _settle_and_claim(self, settlements: Settlements, limit: int) -> float | None:
        """Settle leases, claim up to ``limit`` messages; return seconds until the next is due."""
        for token in list(self._lost_claims):
            self.broker.return_lost_claim(token)
            self._lost_claims.remove(token)
        token = uuid.uuid4()
        try:
            claim = self.broker.settle_and_claim(self.queue_name, settlements, limit, token)
        except DatabaseUnavailable:
            # The claim may have committed with its reply lost.
            if limit:
                self._lost_claims.append(token)
            raise
        if self._failures:
            logger.info("Queue %s: the database answers again.", self.queue_name)
            self._failures = 0
        self.state.claimed(len(claim.rows))
        # Claimed rows come back unordered; hand them out in claim order.
        for row_id, delivery, _priority, _eta, payload in sorted(
            claim.rows, key=lambda r: (r[2], r[3], r[0])
        ):
            try:
                message = Message.decode(payload)
            except DecodeError as e:
                logger.error("Dead-lettering undecodable message %s: %s", row_id, e)
                self.broker.bury_undecodable(
                    Lease(row_id, delivery, claim.owner), f"undecodable message: {e}"
                )
                self.state.released()
                continue
            self.fetched.append(PostgresMessageProxy(message, row_id, delivery, claim.owner))
        return claim.due_in

    def ack(self, message: MessageProxy) -> None:
        if isinstance(message, PostgresMessageProxy) and settle(message):
            self.state.buffer_ack(Lease.of(message))

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
            hand_backs = Settlements([], [Lease.of(m) for m in returned])
            try:
                # At once, not with the next claim: Dramatiq requeues as it stops.
                self.broker.settle_and_claim(self.queue_name, hand_backs, 0, uuid.uuid4())
            except BaseException:
                for m in returned:
                    m.settled = False
                raise
            self.state.released(len(returned))

    def close(self) -> None:
        # Settle what this process let go of before letting go of the queue, so a
        # graceful stop leaves no row behind; a short outage is waited out.
        if self.fetched:
            for message in self.fetched:
                if settle(message):
                    self.state.buffer_hand_back(Lease.of(message))
            self.fetched.clear()
        settlements = self.state.take_settlements()
        if not settlements and not self._lost_claims:
            return
        try:
            for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(DatabaseUnavailable),
                stop=tenacity.stop_after_delay(CLOSE_SETTLE_TIMEOUT),
                wait=lambda state: outage_wait(state.attempt_number),
                reraise=True,
            ):
                with attempt:
                    self._settle_and_claim(settlements, 0)
        except Exception:
            logger.warning(
                "Could not settle %d acks and %d hand-backs on close; those messages "
                "will be delivered again once this worker is presumed lost.",
                len(settlements.acks),
                len(settlements.hand_backs),
                exc_info=True,
            )


def outage_wait(failures: int) -> float:
    """Seconds between rounds while the database is unreachable: 0.1, doubling, at most 1."""
    return float(min(0.1 * 2 ** (failures - 1), OUTAGE_BACKOFF_MAX))


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
