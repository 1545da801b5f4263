"""Safe deploys: patches, blocked executions, and how they resume by themselves.

``zart.patched(change_id)`` lets one body serve executions recorded before and
after a change, as Temporal's ``workflow.patched``: its answer is recorded as a
``patch`` journal entry, so every replay takes the same branch. ``zart.deprecate_patch``
is for the code from which the old branch was removed.

A replay that departs from the journal (``timeline``) records nothing of the
call: its run parks the execution as ``blocked`` (``Run.suspend``), naming the
first entry where it diverged, and the execution tries again by itself:

* after a backoff (``DurableMiddleware(blocked_backoff=(first, longest))``: one
  minute, doubling up to one hour, by default), through the resuming message the
  block sent, like any suspension;
* at once when a worker runs other code for its actor: each sweep, a worker wakes
  the blocked executions of the actors it declares that no code with its
  fingerprint (``fingerprint``) has tried at that entry yet. Each version of the
  code wakes an execution once, however many workers run it, so two versions
  deployed side by side cannot pass an execution back and forth;
* when an operator asks (``zart.unblock``), or gives up on it (``zart.fail``, or
  ``zart.cancel``).

A replay that is still incompatible blocks again, before anything of its step
runs or is written: the entries before the divergence are replayed from the
journal, never run again.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import dramatiq
from psycopg.types.json import Jsonb

from . import lifecycle
from .errors import JournalTooLarge, NonDeterminismError
from .run import Run, current_run, resume_now
from .serialization import error_to_json
from .store import Store, Transaction
from .timeline import DEPRECATED, patch_key
from .transport import Transport

if TYPE_CHECKING:
    from .actor import DurableActor

logger = logging.getLogger(__name__)

#: Set it (to a release's commit, say) to have a deploy retry every blocked execution
#: at once, whatever the deploy changed.
CODE_VERSION = "ZART_CODE_VERSION"

#: The first and the longest wait before a blocked execution's replay is tried again.
DEFAULT_BLOCKED_BACKOFF = (timedelta(minutes=1), timedelta(hours=1))

#: At most so many blocked executions are woken by one sweep of one worker.
WAKE_BATCH = 100


# -- Patches -------------------------------------------------------------------------


def patched(change_id: str) -> bool:
    """Whether this execution runs the code of change ``change_id``; recorded, so stable.

    False while replaying an execution recorded before the change (its journal
    already holds other entries past this point, and no marker of this patch);
    True otherwise, and then a ``patch:<change_id>`` entry is recorded where the
    call stands, so every replay answers the same. Asked again for the same
    change, it answers as the first time. Keep both branches until no execution
    recorded before the change is left; then see ``deprecate_patch``. Inside a
    step's function (which only runs with the code deployed now) it is True.
    """
    return _patch(change_id, deprecated=False)


def deprecate_patch(change_id: str) -> None:
    """Mark the place of patch ``change_id`` in code from which its old branch was removed.

    An execution that recorded ``patched(change_id)`` replays (its marker is
    taken here); one that recorded nothing here goes on without; a new one
    records a deprecated marker, which code without this call may pass over. So
    the call can be removed once every execution that ran ``patched`` has ended.
    """
    _patch(change_id, deprecated=True)


def _patch(change_id: str, *, deprecated: bool) -> bool:
    run = current_run()
    run.ensure_active()
    what = "zart.deprecate_patch" if deprecated else "zart.patched"
    if not isinstance(change_id, str) or not change_id:
        raise run.final(TypeError(f"{what} takes a change id, a non-empty str; got {change_id!r}"))
    if run.step_in_flight is not None:
        return True  # part of a step, whose function runs with the code deployed now
    answer, record = run.timeline.patch(change_id, deprecated=deprecated)
    if record:
        key = patch_key(change_id)
        limit = run.limits.journal_entries
        if key not in run.journal and len(run.journal) >= limit:
            raise run.final(JournalTooLarge(run.execution_id, key, len(run.journal), limit))
        run.record(
            key,
            kind="patch",
            name=change_id,
            fn=DEPRECATED if deprecated else "patched",
            status="completed",
            result=True,
        )
    return answer


# -- The code's fingerprint ------------------------------------------------------------

_fingerprints: dict[Callable[..., Any], str] = {}


def fingerprint(actor: DurableActor) -> str:
    """What tells this worker's code for ``actor`` from another's: a digest of its body's
    code, of the code of the functions its module defines, and of ``ZART_CODE_VERSION``.

    Code as loaded, not files: a worker whose files were replaced under it still
    has, and says it has, its old code.
    """
    fn = actor.original_fn
    known = _fingerprints.get(fn)
    if known is None:
        digest = hashlib.sha256(os.environ.get(CODE_VERSION, "").encode())
        _digest_code(digest, getattr(fn, "__code__", None))
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        for name, code in _module_code(module) if module is not None else ():
            digest.update(name.encode())
            _digest_code(digest, code)
        known = _fingerprints[fn] = digest.hexdigest()[:16]
    return known


def _module_code(module: types.ModuleType) -> list[tuple[str, types.CodeType]]:
    """The code of the functions, methods and actors that ``module`` defines, by name."""
    found = []
    for name, value in sorted(vars(module).items()):
        try:
            if isinstance(value, dramatiq.Actor):
                value = inspect.unwrap(value.fn)
            if getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(value):
                found.append((name, value.__code__))
            elif inspect.isclass(value):
                found.extend(
                    (f"{name}.{attribute}", member.__code__)
                    for attribute, member in sorted(vars(value).items())
                    if inspect.isfunction(member)
                )
        except Exception:  # an object that will not say what it is: not code of ours
            continue
    return found


def _digest_code(digest: Any, code: types.CodeType | None) -> None:
    if code is None:
        return
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _digest_code(digest, const)
        else:
            digest.update(_stable_repr(const).encode())


def _stable_repr(value: Any) -> str:
    """``repr``, but the same in every process: a frozenset's order depends on the hash seed."""
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(_stable_repr(v) for v in value)) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(_stable_repr(v) for v in value) + ")"
    return repr(value)


# -- Blocking and unblocking -------------------------------------------------------------


@dataclass(frozen=True)
class BlockInfo:
    """Where a blocked execution's replay diverged from its journal, and since when."""

    #: The first journal entry where it diverged (``step:charge``).
    step: str
    #: How: changed (another function), unrecorded (a call added, or renamed),
    #: out_of_order (reordered, or entries skipped), missing (the body ended first).
    kind: str | None
    message: str
    #: Runs in a row that blocked there; the next try waits longer each time.
    blocks: int
    first_blocked_at: datetime
    blocked_at: datetime


def block(
    run: Run,
    tx: Transaction,
    actor: DurableActor,
    divergence: NonDeterminismError,
    backoff: tuple[timedelta, timedelta],
) -> None:
    """Park ``run``'s execution as blocked at its divergence, inside ``tx``.

    Its resuming message is due after the backoff of this block (or at the
    deadline); once ``tx`` commits, the run is over (``ensure_active`` raises).
    """
    store, step = run.store, divergence.step or "?"
    error = {**error_to_json(divergence), "step": step, "kind": divergence.kind}
    row = store.run(
        tx,
        "note_block",
        id=run.execution_id,
        generation=run.generation,
        step=step,
        error=error,
        code=fingerprint(actor),
    )
    assert row is not None
    wait = backoff_s(backoff, row[0])
    run.suspend(tx, status=lifecycle.BLOCKED, wake_in_s=wait, waiting_for=step)
    tx.after_commit.append(
        lambda: logger.warning(
            "Execution %r is blocked: its replay diverged from its journal at %s (%s). It is "
            "tried again in %.0f s, or at once by a worker with other code for %s.",
            run.execution_id,
            step,
            divergence,
            wait,
            run.actor,
        )
    )


def backoff_s(backoff: tuple[timedelta, timedelta], blocks: int) -> float:
    """Seconds before the next try of an execution blocked ``blocks`` times in a row."""
    first, longest = (limit.total_seconds() for limit in backoff)
    return float(min(first * 2 ** min(max(blocks - 1, 0), 60), longest))


def block_info(store: Store, execution_id: str) -> BlockInfo | None:
    row = store.fetchone("get_block", id=execution_id)
    if row is None:
        return None
    step, divergence, blocks, _codes, first_blocked_at, blocked_at = row
    return BlockInfo(
        step=step,
        kind=divergence.get("kind"),
        message=str(divergence.get("message")),
        blocks=blocks,
        first_blocked_at=first_blocked_at,
        blocked_at=blocked_at,
    )


def unblock(store: Store, transport: Transport, execution_id: str) -> bool:
    """Try a blocked execution's replay now; False (and nothing done) if it is not blocked."""

    def wake(tx: Transaction) -> bool:
        row = store.run(tx, "unblock", id=execution_id)
        if row is not None:
            _wake(store, transport, tx, *row[1:])  # (id, wake_message, payload, seq)
        return row is not None

    return store.atomically(wake)


def wake_blocked(store: Store, transport: Transport, grace_s: float) -> list[str]:
    """Wake the blocked executions that this worker's code has not tried yet (and those whose
    wake-up is ``grace_s`` overdue), of the actors its broker declares; return their ids."""
    from .actor import DurableActor

    actors = {
        name: fingerprint(actor)
        for name, actor in list(transport.broker.actors.items())
        if isinstance(actor, DurableActor)
    }
    if not actors:
        return []

    def wake(tx: Transaction) -> list[str]:
        rows = store.run_all(
            tx, "blocked_to_wake", actors=Jsonb(actors), grace_s=grace_s, limit=WAKE_BATCH
        )
        for row in rows:
            _wake(store, transport, tx, *row[1:])  # (id, wake_message, payload, seq)
        return [row[0] for row in rows]

    woken = store.atomically(wake)
    for execution_id in woken:
        logger.info("Trying the replay of blocked execution %r again.", execution_id)
    return woken


def _wake(
    store: Store,
    transport: Transport,
    tx: Transaction,
    wake_message: int | None,
    payload: bytes,
    seq: int,
) -> None:
    """Replace a blocked execution's pending wake-up with one due now."""
    transport.discard(tx, wake_message)
    resume_now(store, transport, tx, payload, seq)
