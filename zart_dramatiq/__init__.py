"""zart_dramatiq: durable execution for Dramatiq actors, on PostgreSQL.

Decorate an actor with ``@zart.durable``; inside it, ``zart.step`` results
are checkpointed, ``zart.sleep`` and ``zart.wait_for_event`` pause without
holding a thread, and after a crash the body resumes at its first
unfinished step. ``zart.now``, ``zart.uuid`` and ``zart.capture`` record a
value once and replay it; ``zart.context()`` tells the body which execution it
runs. ``zart.continue_as_new`` lets a long loop start afresh.
"""

from .actor import DurableActor, durable
from .client import (
    ExecutionHandle,
    ExecutionInfo,
    StepInfo,
    cancel,
    get_execution,
    get_handle,
    list_executions,
    purge_executions,
    retry,
    send_event,
    start,
)
from .context import ExecutionContext, context
from .errors import (
    EventTimeout,
    ExecutionConflict,
    ExecutionFailed,
    ExecutionFinished,
    JournalTooLarge,
    LimitExceeded,
    NonDeterminismError,
    NotAllowedInStep,
    NotInExecution,
    PayloadTooLarge,
    ResultTimeout,
    SerializationError,
    StepFailed,
    StepResultTooLarge,
    UnknownExecution,
    ZartError,
)
from .generations import continue_as_new
from .limits import Limits
from .middleware import DurableMiddleware
from .retry_policy import Retry
from .steps import step
from .values import capture, now, uuid
from .waits import sleep, sleep_until, wait_for_event

__all__ = [
    "DurableActor",
    "DurableMiddleware",
    "EventTimeout",
    "ExecutionConflict",
    "ExecutionContext",
    "ExecutionFailed",
    "ExecutionFinished",
    "ExecutionHandle",
    "ExecutionInfo",
    "JournalTooLarge",
    "LimitExceeded",
    "Limits",
    "NonDeterminismError",
    "NotAllowedInStep",
    "NotInExecution",
    "PayloadTooLarge",
    "ResultTimeout",
    "Retry",
    "SerializationError",
    "StepFailed",
    "StepInfo",
    "StepResultTooLarge",
    "UnknownExecution",
    "ZartError",
    "cancel",
    "capture",
    "context",
    "continue_as_new",
    "durable",
    "get_execution",
    "get_handle",
    "list_executions",
    "now",
    "purge_executions",
    "retry",
    "send_event",
    "sleep",
    "sleep_until",
    "start",
    "step",
    "uuid",
    "wait_for_event",
]
