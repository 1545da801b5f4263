"""Errors of the durable layer; each names the execution, step or event at fault."""

from __future__ import annotations


class ZartError(Exception):
    """Base class of zart_dramatiq's own errors."""


class NotInExecution(ZartError):
    """A durable API was called outside the body of a durable actor."""


class NonDeterminismError(ZartError):
    """On replay, the body reached a step differently from what the journal recorded.

    ``step`` names the first journal entry where the replay diverged (``step:charge``);
    ``kind`` says how: ``changed`` (another function), ``unrecorded`` (a call the journal
    does not have there: added, or renamed), ``out_of_order`` (a call the journal has
    further on: reordered, or the entries before it skipped), ``missing`` (the body
    ended, or continued as new, before replaying the entry).
    """

    def __init__(self, message: str, *, step: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.kind = kind


class ExecutionConflict(ZartError):
    """An execution ID was reused with a different actor or input."""


class UnknownExecution(ZartError, LookupError):
    """No execution has this ID."""


class UnknownActor(ZartError, LookupError):
    """No durable actor has this name on the broker."""


class ExecutionFinished(ZartError):
    """The execution already ended, so it cannot take this request."""


class ConcurrencyKeyError(ZartError, ValueError):
    """An execution's concurrency key could not be computed from its input."""


class SerializationError(ZartError, TypeError):
    """A step result, argument or event payload cannot be serialized or fails its model."""


class EventTimeout(ZartError, TimeoutError):
    """An event wait timed out; recorded, so every replay raises it again."""


class StepFailed(ZartError):
    """A step's recorded error whose original exception type could not be rebuilt."""

    def __init__(self, step: str, error_type: str, message: str) -> None:
        super().__init__(f"step {step!r} failed with {error_type}: {message}")
        self.step = step
        self.error_type = error_type


class ExecutionFailed(ZartError):
    """Raised by ``handle.result()`` when the execution ended without a result."""

    def __init__(self, execution_id: str, status: str, error: dict | None) -> None:
        detail = f": {error.get('type')}: {error.get('message')}" if error else ""
        super().__init__(f"execution {execution_id!r} ended {status}{detail}")
        self.execution_id = execution_id
        self.status = status
        self.error = error


class ResultTimeout(ZartError, TimeoutError):
    """``handle.result(timeout=)`` ran out of time before the execution ended."""


class NotAllowedOnEventLoop(ZartError):
    """A zart call that waits for PostgreSQL was made on an event loop: await its zart.aio form."""


class NotAllowedInStep(ZartError):
    """A call that ends the run (``zart.continue_as_new``) was made inside a step's function."""


class LimitExceeded(ZartError):
    """Something an execution would store is larger than its ``Limits`` allow.

    Built from its fields, so a recorded one is rebuilt as itself on replay.
    """


class JournalTooLarge(LimitExceeded):
    """A generation's journal is full: one more step, sleep or event wait would pass the limit."""

    def __init__(self, execution_id: str, key: str, entries: int, limit: int) -> None:
        super().__init__(execution_id, key, entries, limit)
        self.execution_id = execution_id
        self.key = key
        self.entries = entries
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"execution {self.execution_id!r} cannot record {self.key}: its journal holds "
            f"{self.entries} entries, the limit for one generation "
            f"(Limits.journal_entries = {self.limit}). Call zart.continue_as_new(...) every "
            "few thousand iterations to go on with a fresh journal, or raise the limit with "
            "DurableMiddleware(limits=Limits(journal_entries=...))."
        )


class StepResultTooLarge(LimitExceeded):
    """A step returned more JSON than ``Limits.payload_bytes``; recorded as the step's failure."""

    def __init__(self, step: str, size: int, limit: int) -> None:
        super().__init__(step, size, limit)
        self.step = step
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"step {self.step!r} returned {self.size} bytes of JSON, over the limit of "
            f"{self.limit} (Limits.payload_bytes). Its function ran, but its result is not "
            "stored: the step is recorded as failed. Store the data elsewhere (a table, object "
            "storage) and return a reference to it, or raise the limit with "
            "DurableMiddleware(limits=Limits(payload_bytes=...)); then zart.retry the execution."
        )


class PayloadTooLarge(LimitExceeded, ValueError):
    """An event payload or an execution's input is larger than ``Limits.payload_bytes``."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(what, size, limit)
        self.what = what
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"{self.what} is {self.size} bytes of JSON, over the limit of {self.limit} "
            "(Limits.payload_bytes); nothing was stored. Pass a reference to the data (a row "
            "id, an object-storage key) instead, or raise the limit with "
            "DurableMiddleware(limits=Limits(payload_bytes=...))."
        )


class InvalidSchedule(ZartError, ValueError):
    """A schedule's definition, or a request about one, that cannot work; says what to change."""


class UnknownSchedule(ZartError, LookupError):
    """No schedule has this name."""
