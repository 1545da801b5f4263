"""zart_dramatiq: durable execution for Dramatiq actors, on PostgreSQL.

Decorate an actor with ``@zart.durable``; inside it, ``zart.step`` results
are checkpointed, ``zart.sleep`` and ``zart.wait_for_event`` pause without
holding a thread, and after a crash the body resumes at its first
unfinished step. ``zart.now``, ``zart.uuid`` and ``zart.capture`` record a
value once and replay it; ``zart.context()`` tells the body which execution it
runs. ``zart.continue_as_new`` lets a long loop start afresh.
``zart.parallel`` and ``zart.map`` fan out branches as messages on any
worker and join them in SQL; ``zart.start_child`` starts a child execution.
``@zart.schedule`` starts a durable actor on a cron expression or an interval,
each tick once; ``zart.schedules`` pauses, triggers and backfills schedules.
``zart.patched`` lets a deploy change a body under running executions; one
whose replay diverges from its journal is blocked until code that replays it
runs, and ``zart.replay_check`` finds such changes before a deploy.
"""

from . import aio, schedules
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
    fail,
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
    start_with_options,
    unblock,
)
from .concurrency import Limit
from .context import ExecutionContext, context
from .errors import (
    ConcurrencyKeyError,
    EventTimeout,
    ExecutionConflict,
    ExecutionFailed,
    ExecutionFinished,
    InvalidSchedule,
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
    UnknownSchedule,
    ZartError,
)
from .fanout import Call, First, call, map, parallel
from .generations import continue_as_new
from .limits import Limits
from .middleware import DurableMiddleware
from .rate_limits import RateLimit, RetryAfter
from .replay_check import ReplayReport, ReplayResult, replay_check
from .retry_policy import Retry
from .schedules import Schedule, schedule
from .steps import step
from .transactional import transactional_step
from .values import capture, now, uuid
from .versioning import BlockInfo, deprecate_patch, patched
from .waits import sleep, sleep_until, wait_for_event

__all__ = [
    "BlockInfo",
    "BranchInfo",
    "Call",
    "ChildHandle",
    "ChildInfo",
    "ConcurrencyKeyError",
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
    "InvalidSchedule",
    "JournalTooLarge",
    "Limit",
    "LimitExceeded",
    "Limits",
    "NonDeterminismError",
    "NotAllowedInStep",
    "NotAllowedOnEventLoop",
    "NotInExecution",
    "Page",
    "PayloadTooLarge",
    "RateLimit",
    "ReplayReport",
    "ReplayResult",
    "ResultTimeout",
    "Retry",
    "RetryAfter",
    "Schedule",
    "SerializationError",
    "StepFailed",
    "StepInfo",
    "StepResultTooLarge",
    "UnknownActor",
    "UnknownExecution",
    "UnknownSchedule",
    "ZartError",
    "aio",
    "call",
    "cancel",
    "capture",
    "context",
    "continue_as_new",
    "deprecate_patch",
    "durable",
    "fail",
    "get_execution",
    "get_handle",
    "list_executions",
    "map",
    "now",
    "parallel",
    "patched",
    "pause",
    "pause_actor",
    "paused_actors",
    "purge_executions",
    "replay_check",
    "rerun",
    "resume",
    "resume_actor",
    "retry",
    "schedule",
    "schedules",
    "search_executions",
    "send_event",
    "sleep",
    "sleep_until",
    "start",
    "start_child",
    "start_with_options",
    "step",
    "transactional_step",
    "unblock",
    "uuid",
    "wait_for_event",
]
