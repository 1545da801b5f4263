"""zart_dramatiq: durable execution for Dramatiq actors, on PostgreSQL.

Decorate an actor with ``@zart.durable``; inside it, ``zart.step`` results
are checkpointed, ``zart.sleep`` and ``zart.wait_for_event`` pause without
holding a thread, and after a crash the body resumes at its first
unfinished step. ``zart.now``, ``zart.uuid`` and ``zart.capture`` record a
value once and replay it; ``zart.context()`` tells the body which execution it
runs. ``zart.continue_as_new`` lets a long loop start afresh.
``zart.parallel`` and ``zart.map`` fan out branches as messages on any
worker and join them in SQL; ``zart.start_child`` starts a child execution.
"""

from . import aio
from .actor import DurableActor, durable
from .children import ChildHandle, start_child
from .client import (
    BranchInfo,
    ChildInfo,
    EventInfo,
    ExecutionHandle,
    ExecutionInfo,
    GroupInfo,
    Page,
    StepInfo,
    cancel,
    get_execution,
    get_handle,
    list_executions,
    pause,
    pause_actor,
    paused_actors,
    purge_executions,
    rerun,
    resume,
    resume_actor,
    retry,
    search_executions,
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
    NotAllowedOnEventLoop,
    NotInExecution,
    PayloadTooLarge,
    ResultTimeout,
    SerializationError,
    StepFailed,
    StepResultTooLarge,
    UnknownActor,
    UnknownExecution,
    ZartError,
)
from .fanout import Call, First, call, map, parallel
from .generations import continue_as_new
from .limits import Limits
from .middleware import DurableMiddleware
from .retry_policy import Retry
from .steps import step
from .transactional import transactional_step
from .values import capture, now, uuid
from .waits import sleep, sleep_until, wait_for_event

__all__ = [
    "BranchInfo",
    "Call",
    "ChildHandle",
    "ChildInfo",
    "DurableActor",
    "DurableMiddleware",
    "EventInfo",
    "EventTimeout",
    "ExecutionConflict",
    "ExecutionContext",
    "ExecutionFailed",
    "ExecutionFinished",
    "ExecutionHandle",
    "ExecutionInfo",
    "First",
    "GroupInfo",
    "JournalTooLarge",
    "LimitExceeded",
    "Limits",
    "NonDeterminismError",
    "NotAllowedInStep",
    "NotAllowedOnEventLoop",
    "NotInExecution",
    "Page",
    "PayloadTooLarge",
    "ResultTimeout",
    "Retry",
    "SerializationError",
    "StepFailed",
    "StepInfo",
    "StepResultTooLarge",
    "UnknownActor",
    "UnknownExecution",
    "ZartError",
    "aio",
    "call",
    "cancel",
    "capture",
    "context",
    "continue_as_new",
    "durable",
    "get_execution",
    "get_handle",
    "list_executions",
    "map",
    "now",
    "parallel",
    "pause",
    "pause_actor",
    "paused_actors",
    "purge_executions",
    "rerun",
    "resume",
    "resume_actor",
    "retry",
    "search_executions",
    "send_event",
    "sleep",
    "sleep_until",
    "start",
    "start_child",
    "step",
    "transactional_step",
    "uuid",
    "wait_for_event",
]
