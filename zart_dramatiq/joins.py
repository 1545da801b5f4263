"""Waiting for work that runs elsewhere: a group's branches, a child execution.

The parent's journal has one entry for the group or the child, ``waiting``
until it ends. Whatever ends it (the branch that completes the group, the
child's end) writes the outcome into that entry and then wakes the parent, if
the parent waits for that entry: once, whatever the number of branches. The
parent reads the entry after locking its own row, and the ender writes the
entry before locking the parent's row, so one always sees the other: the
parent finds the outcome, or it is woken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

from . import lifecycle
from .run import Run
from .signals import Refused
from .store import Store, Transaction
from .transport import Transport

#: Journal statuses of an entry that has ended.
ENDED = frozenset({"completed", "failed"})


def wait_for_entry(
    run: Run, key: str, prepare: Callable[[Transaction], None] | None = None
) -> dict[str, Any]:
    """Journal entry ``key`` once it has ended; until then the run suspends (raises).

    ``prepare`` runs first in the same fenced transaction: it may create the
    entry and what will end it (a group's branches).
    """
    known = run.journal.get(key)
    if known is not None and known["status"] in ENDED:
        return known

    def wait(tx: Transaction) -> dict[str, Any] | None:
        if run.store.run(tx, "lock_current", id=run.execution_id, token=run.token) is None:
            raise Refused(f"execution {run.execution_id!r} moved on; this run stops")
        if prepare is not None:
            prepare(tx)
        row = run.store.run(tx, "journal_entry", id=run.execution_id, key=key)
        if row is not None and row[0] in ENDED:
            return {"status": row[0], "result": row[1], "error": row[2]}
        run.suspend(tx, status=lifecycle.WAITING, waiting_for=key)
        return None

    ended = run.store.atomically(wait)
    run.ensure_active()  # raises the suspension, now committed
    assert ended is not None
    entry = {**(known or {}), **ended}
    run.journal[key] = entry
    return entry


def entry_ended(
    store: Store, transport: Transport, tx: Transaction, execution_id: str, key: str
) -> None:
    """Wake ``execution_id`` if it waits for its journal entry ``key``, which just ended."""
    row = store.run(tx, "wake_waiting", id=execution_id, key=key)
    if row is not None:
        wake_message, resume_message = row
        transport.wake(tx, wake_message, dramatiq.Message.decode(resume_message))


def child_ended(store: Store, transport: Transport, tx: Transaction, child_id: str) -> None:
    """Hand a child's outcome to its parent's journal, and wake the parent if it waits.

    The caller locked the parent before the child (``lifecycle``'s lock order).
    """
    row = store.run(tx, "child_ended", id=child_id)
    if row is not None:
        entry_ended(store, transport, tx, row[0], row[1])


def discard_wakeups(transport: Transport, tx: Transaction, wake_messages: list[int | None]) -> None:
    """Drop the pending wake-ups of executions that just ended."""
    for wake_message in wake_messages:
        transport.discard(tx, wake_message)
