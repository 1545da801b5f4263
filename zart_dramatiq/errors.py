"""Errors of the durable layer; each names the execution, step or event at fault."""

from __future__ import annotations


class ZartError(Exception):
    """Base class of zart_dramatiq's own errors."""


class NotInExecution(ZartError):
    """A durable API was called outside the body of a durable actor."""


class NonDeterminismError(ZartError):
    """On replay, the body reached a step differently from what the journal recorded."""


class ExecutionConflict(ZartError):
    """An execution ID was reused with a different actor or input."""


class UnknownExecution(ZartError, LookupError):
    """No execution has this ID."""


class ExecutionFinished(ZartError):
    """The execution already ended, so it cannot take this request."""


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
