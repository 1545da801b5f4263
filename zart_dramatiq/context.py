"""What a durable body may know about the execution it runs: ``zart.context()``."""

from __future__ import annotations

from dataclasses import dataclass

from .body_retries import RETRIES
from .run import current_run


@dataclass(frozen=True)
class ExecutionContext:
    """The execution a durable body runs, seen from inside it."""

    execution_id: str
    #: The durable actor's name.
    actor: str
    #: Which attempt of the body this is: 1, then 2 after its first failure...
    attempt: int
    #: Which run of the execution this is (a run ends at a suspension, a crash
    #: or the end), counted over its whole life.
    run: int
    #: How many times the execution continued as new (``zart.continue_as_new``).
    generation: int
    #: The execution that started this one as its child; None for a top-level one.
    parent_id: str | None = None


def context() -> ExecutionContext:
    """The execution this durable body runs; NotInExecution outside one."""
    run = current_run(blocking=False)  # reads no database: fine on an event loop
    return ExecutionContext(
        execution_id=run.execution_id,
        actor=run.delivery.actor_name,
        attempt=int(run.delivery.options.get(RETRIES, 0)) + 1,
        run=run.token,
        generation=run.generation,
        parent_id=run.parent_id,
    )
