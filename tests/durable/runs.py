"""Runs taken directly through the state machine, for tests of fencing."""

from __future__ import annotations

import uuid

from dramatiq import MessageProxy

import zart_dramatiq as zart
from zart_dramatiq import lifecycle
from zart_dramatiq.middleware import middleware_for
from zart_dramatiq.run import Run


def take_run(
    broker, execution_id: str, worker_id: uuid.UUID, *, actor: zart.DurableActor | None = None
) -> Run:
    """A run of ``execution_id``, as a delivery (of ``actor``'s message, if given) would take it."""
    middleware = middleware_for(broker)
    acquired = lifecycle.acquire(middleware.store, execution_id, 0, worker_id)
    assert acquired is not None
    return Run(
        execution_id=execution_id,
        seq=0,
        token=acquired.token,
        generation=acquired.generation,
        parent_id=acquired.parent_id,
        delivery=None if actor is None else MessageProxy(actor.message_with_options(args=(0,))),  # type: ignore[arg-type]
        store=middleware.store,
        transport=middleware.transport,
        journal={},
    )
