"""How a suspended execution's resuming message reaches the broker.

On broker_pg the message, the checkpoint and the ack of the current delivery
commit in one transaction. On any other broker the message is sent right
after the checkpoint commits; a crash in between leaves an execution whose
wake-up is overdue, and the middleware's sweeper sends it again.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq import Message, MessageProxy

from broker_pg import Database, PostgresBroker

from .store import Transaction


class Transport:
    """Resuming messages sent after the checkpoint commits (any broker)."""

    #: Whether suspend-and-requeue and event-and-wake are each one transaction.
    atomic = False

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker

    def send(self, tx: Transaction, message: Message[Any], delay_ms: int | None) -> int | None:
        """Schedule ``message`` after ``delay_ms``, or park it when None; maybe return its id."""
        self.declare(message)
        if delay_ms is not None:
            tx.after_commit.append(lambda: self._enqueue(message, delay_ms or None))
        return None

    def send_many(self, tx: Transaction, messages: list[Message[Any]]) -> None:
        """Send ``messages`` now (a group's branches)."""
        for message in messages:
            self.send(tx, message, 0)

    def wake(self, tx: Transaction, wake_message: int | None, message: Message[Any]) -> None:
        self.declare(message)
        tx.after_commit.append(lambda: self._enqueue(message, None))

    def _enqueue(self, message: Message[Any], delay_ms: int | None) -> None:
        self.broker.enqueue(message, delay=delay_ms)

    def declare(self, message: Message[Any]) -> None:
        """Let a process that does not run the actor (a CLI, a web app) send to its queue."""
        self.broker.declare_queue(message.queue_name)

    def settle(self, tx: Transaction, delivery: MessageProxy) -> None:
        """The Worker acks ``delivery`` once the actor returns."""

    def discard(self, tx: Transaction, wake_message: int | None) -> None:
        """A resuming message already sent is dropped on delivery (its execution has ended)."""

    def hand_back(self, delivery: MessageProxy) -> None:
        """A delivery whose outcome could not be recorded: the Worker acks it.

        The sweeper re-sends the execution's wake-up once it is overdue.
        """


class PostgresTransport(Transport):
    """Resuming messages written in the checkpoint's own transaction (broker_pg)."""

    atomic = True
    broker: PostgresBroker

    def send(self, tx: Transaction, message: Message[Any], delay_ms: int | None) -> int | None:
        self.declare(message)
        with self.broker.transaction(tx.conn):
            return self.broker.enqueue_parked(message, delay=delay_ms)

    def send_many(self, tx: Transaction, messages: list[Message[Any]]) -> None:
        # One statement for the lot: a group may send thousands of branches.
        if messages:
            self.declare(messages[0])  # a group's branches share their actor's queue
        with self.broker.transaction(tx.conn), self.broker.batch():
            for message in messages:
                self.broker.enqueue(message)

    def wake(self, tx: Transaction, wake_message: int | None, message: Message[Any]) -> None:
        if wake_message is not None:
            self.broker.wake(wake_message, connection=tx.conn)

    def settle(self, tx: Transaction, delivery: MessageProxy) -> None:
        self.broker.ack_within(tx.conn, delivery)

    def discard(self, tx: Transaction, wake_message: int | None) -> None:
        if wake_message is not None:
            self.broker.discard(wake_message, connection=tx.conn)

    def hand_back(self, delivery: MessageProxy) -> None:
        # Not acked: the message returns to its queue once the database answers.
        self.broker.hand_back(delivery)


def transport_for(broker: dramatiq.Broker, db: Database) -> Transport:
    """One transaction for checkpoints and messages when both live in ``db``."""
    if isinstance(broker, PostgresBroker) and broker.db is db:
        return PostgresTransport(broker)
    return Transport(broker)
