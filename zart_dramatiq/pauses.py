"""Operators' pauses: an execution, or every execution of an actor, held so no run starts.

A pause is enforced where runs are taken (``lifecycle.acquire`` refuses a
held execution and its delivery is dropped), so it holds on every worker at
once. A run already going continues to its next suspension. Resuming sends
again the wake-ups that came due meanwhile; the others arrive on their own.
A deadline that passed during the pause ends the execution as timed out when
it resumes. Cancel works on a paused execution as on any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from . import lifecycle
from .errors import ExecutionFinished, UnknownExecution
from .run import resend_overdue
from .store import Store
from .transport import Transport


@dataclass(frozen=True)
class PausedActor:
    actor_name: str
    paused_at: datetime


def pause_execution(store: Store, execution_id: str) -> None:
    """Hold an active execution; pausing it twice is harmless."""
    row = store.write("pause_execution", id=execution_id, sources=sorted(lifecycle.ACTIVE))
    if row is None:
        raise UnknownExecution(f"cannot pause: no execution has id {execution_id!r}")
    status, held = row
    if not held:
        raise ExecutionFinished(
            f"cannot pause execution {execution_id!r}: it already ended {status}"
        )


def resume_execution(store: Store, transport: Transport, execution_id: str) -> bool:
    """Let a paused execution run again; return whether a wake-up was sent for it."""
    if store.write("resume_execution", id=execution_id) is None:
        raise UnknownExecution(f"cannot resume: no execution has id {execution_id!r}")
    # After the commit, so a delivery refused before it is seen as due here.
    return bool(resend_overdue(store, transport, 0.0, execution_id=execution_id))


def pause_actor(store: Store, actor_name: str) -> None:
    """Hold every execution of ``actor_name``, new ones too; pausing it twice is harmless."""
    store.write("pause_actor", actor=actor_name)


def resume_actor(store: Store, transport: Transport, actor_name: str) -> int:
    """Let ``actor_name``'s executions run again; return how many wake-ups were sent."""
    store.write("resume_actor", actor=actor_name)
    return len(resend_overdue(store, transport, 0.0, actor=actor_name, limit=None))


def paused_actors(store: Store) -> list[PausedActor]:
    return [PausedActor(*row) for row in store.fetchall("paused_actors")]
