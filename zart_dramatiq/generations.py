"""Long executions: ``zart.continue_as_new`` starts an execution afresh as its next generation.

Every run loads its generation's whole journal, so a body that loops for ever
would load more at each run. Calling ``continue_as_new`` every so many
iterations keeps that bounded: the next generation starts with an empty
journal and the loop's state as its input, under the same execution id.
"""

from __future__ import annotations

from typing import Any, NoReturn

from .actor import DurableActor
from .errors import NotAllowedInStep, PayloadTooLarge
from .run import current_run


def continue_as_new(*args: Any, **kwargs: Any) -> NoReturn:
    """End this run and start the execution again from the top, with ``args`` and ``kwargs``.

    Like Temporal's continue-as-new. In one transaction (fenced like any write
    of the run) the journal is emptied, the input replaced, the generation
    counter bumped and the next run's message sent. The execution keeps its
    id, deadline and inbox: events not consumed yet, and those sent meanwhile,
    wait for the next generation. ``handle.result()`` returns what the last
    generation returns.

    Raises NotAllowedInStep inside a step's function, and PayloadTooLarge (which
    fails the execution) for an input past ``Limits.payload_bytes``.
    """
    run = current_run()
    run.ensure_active()
    if run.step_in_flight is not None:
        raise NotAllowedInStep(
            f"zart.continue_as_new was called inside step {run.step_in_flight!r}: a step's "
            "function runs once and records what it returns, so it cannot end the run. Call "
            "zart.continue_as_new in the durable actor's body, after the step returns."
        )
    # This generation's journal is dropped: a replay must have reached its end first.
    run.check_replayed()
    actor = run.transport.broker.get_actor(run.delivery.actor_name)
    assert isinstance(actor, DurableActor)
    try:
        data_args, data_kwargs = actor.dump_input(args, kwargs)
    except PayloadTooLarge as error:
        raise run.final(error) from None
    run.store.atomically(lambda tx: run.continue_as_new(tx, data_args, data_kwargs))
    # Committed: what ends this delivery (and any zart call or return that follows).
    assert run.suspension is not None
    raise run.suspension
