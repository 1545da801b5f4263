"""Child executions: ``zart.start_child(actor, ...)`` and waiting for their result.

A child is a durable execution of its own, started in the transaction that
records it in the parent's journal. Its id defaults to the parent's id and
the journal key, so a replay never starts it twice. Its end (any terminal
status) is written into that journal entry and wakes the parent if it waits
(``joins``). An attached child ends with its parent (cancelled); a detached
one lives on.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from . import lifecycle
from .actor import DurableActor
from .body_retries import RETRIES
from .errors import ExecutionConflict, ExecutionFailed
from .joins import child_ended, wait_for_entry
from .lifecycle import ParentLink
from .run import EXECUTION_ID, SEQ, Run, continuation, current_run
from .serialization import error_from_json, input_hash, load
from .signals import Refused
from .store import Store, Transaction
from .tracing import TRACE, carrier
from .transport import Transport


class ChildHandle:
    """A child execution seen from its parent's body."""

    def __init__(self, execution_id: str, key: str, actor: DurableActor) -> None:
        self.execution_id = execution_id
        self._key = key
        self._actor = actor

    def __repr__(self) -> str:
        return f"ChildHandle({self.execution_id!r})"

    def result(self) -> Any:
        """The child's result, typed by its actor's return annotation.

        The parent suspends (holding no thread) until the child ends. A failed
        child's error is raised again here; a cancelled or timed-out one raises
        ExecutionFailed. Either is recorded: every replay raises the same.
        """
        run = current_run()
        entry = wait_for_entry(run, self._key)
        outcome = entry["result"] or {}
        if entry["status"] == "completed":
            return load(
                outcome.get("result"),
                self._actor.return_annotation,
                what=f"the result of child execution {self.execution_id!r}",
            )
        status, error = outcome.get("status"), entry["error"]
        if status == lifecycle.FAILED and error is not None:
            raise run.final(error_from_json(error, step=self._key))
        raise run.final(ExecutionFailed(self.execution_id, str(status), error))


def start_child(
    actor: DurableActor,
    *args: Any,
    execution_id: str | None = None,
    detached: bool = False,
    **kwargs: Any,
) -> ChildHandle:
    """Start ``actor(*args, **kwargs)`` as a child execution of this one.

    The child's id defaults to ``"<parent id>/child:<actor>"`` (``#2``, ``#3``
    for repeats; ``"<parent id>/gen<n>/child:<actor>"`` in generation n > 0 of
    a parent that continued as new). It inherits the parent's deadline unless
    its actor has a timeout of its own. Unless ``detached``, cancelling, timing
    out or ending the parent cancels it.
    """
    run = current_run()
    if not isinstance(actor, DurableActor):
        raise run.final(
            TypeError(
                f"zart.start_child({actor!r}): a child must be a durable actor; "
                "decorate it with @zart.durable"
            )
        )
    key = run.key("child", actor.actor_name)
    recorded = run.journal.get(key)
    if recorded is not None:
        return ChildHandle((recorded["result"] or {})["execution_id"], key, actor)
    # Refused before anything is written: bad input fails the parent at once.
    try:
        message = actor.message_with_options(args=args, kwargs=kwargs)
    except (TypeError, ValueError) as error:
        raise run.final(error) from None
    # A journal key is unique within a generation only: later generations name theirs apart.
    scope = run.execution_id if run.generation == 0 else f"{run.execution_id}/gen{run.generation}"
    child_id = execution_id or f"{scope}/{key}"
    # The child's runs join this run's trace.
    message = continuation(message, **{EXECUTION_ID: child_id, SEQ: 0, TRACE: carrier()})
    parent = ParentLink(run.execution_id, key, detached)

    def start(tx: Transaction) -> None:
        store = run.store
        if store.run(tx, "lock_current", id=run.execution_id, token=run.token) is None:
            raise Refused(f"execution {run.execution_id!r} moved on; this run stops")
        created = lifecycle.create(store, tx, child_id, actor, message, parent)
        if created:
            run.transport.send(tx, message, 0)
        else:
            _check_same_child(run, store.run(tx, "execution_identity", id=child_id), actor, message)
        run.record(
            key,
            kind="child",
            name=actor.actor_name,
            fn=actor.actor_name,
            status="waiting",
            result={"execution_id": child_id},
            tx=tx,
        )
        if not created and not reopen(store, run.transport, tx, child_id):
            # Started before (by a run whose journal entry a retry forgot): it may have ended.
            child_ended(store, run.transport, tx, child_id)

    run.store.atomically(start)
    return ChildHandle(child_id, key, actor)


def reopen(
    store: Store,
    transport: Transport,
    tx: Transaction,
    execution_id: str,
    reopened: lifecycle.Reopened | None = None,
) -> bool:
    """A failed, cancelled or timed-out execution runs again from where it stopped.

    With it, the attached children that its end cancelled and whose journal
    entries still wait for them: a retried parent finds them running again.
    ``reopened``: the transition already made (a rerun from a step), to send its
    message. False if it had not ended so.
    """
    reopened = reopened or lifecycle.reopen(store, tx, execution_id)
    if reopened is None or reopened.seq is None or reopened.message is None:
        return False
    # Dramatiq's retry count starts afresh: this is a new attempt by request.
    message = continuation(
        dramatiq.Message.decode(reopened.message), **{SEQ: reopened.seq, RETRIES: 0}
    )
    transport.send(tx, message, 0)
    for (child_id,) in store.run_all(tx, "children_to_reopen", id=execution_id):
        reopen(store, transport, tx, child_id)
    return True


def _check_same_child(
    run: Run, existing: tuple[Any, ...] | None, actor: DurableActor, message: Any
) -> None:
    assert existing is not None
    digest, actor_name, _status, parent_id = existing
    if (
        digest != input_hash(list(message.args), message.kwargs)
        or actor_name != actor.actor_name
        or parent_id != run.execution_id
    ):
        raise run.final(
            ExecutionConflict(
                f"cannot start child {message.options[EXECUTION_ID]!r}: an execution with "
                "this id exists with another actor, input or parent; pass another execution_id"
            )
        )
