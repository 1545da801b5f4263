"""OpenTelemetry spans of durable executions (with opentelemetry-api: the ``otel`` extra).

One span per run of a body, per step attempt and per branch. The trace
context travels in the execution's messages (option ``zart_trace``, W3C
``traceparent``), so every run of an execution, across suspensions and
workers, joins the trace of whoever started it (or of its first run). Spans
go to the tracer provider the application configured: zart installs none.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from .signals import Paused

#: The message option carrying the execution's trace context.
TRACE = "zart_trace"

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    trace = None  # type: ignore[assignment]


def carrier() -> dict[str, str]:
    """The current trace context, to put in a message; empty without one."""
    if trace is None:
        return {}
    found: dict[str, str] = {}
    propagate.inject(found)
    return found


@contextmanager
def span(
    name: str, options: MutableMapping[str, Any] | None = None, /, **attributes: Any
) -> Iterator[None]:
    """A span named ``name``, current for the block; an error ending the block is recorded.

    With ``options`` (a message's), the span joins the trace those carry, and
    when they carry none, they get this span's: the messages made from them
    (the execution's next ones) continue its trace.
    """
    if trace is None:
        yield
        return
    tracer = trace.get_tracer("zart_dramatiq")
    parent = propagate.extract(options.get(TRACE) or {}) if options is not None else None
    with tracer.start_as_current_span(
        name,
        context=parent,
        attributes={k: v for k, v in attributes.items() if v is not None},
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        if options is not None and not options.get(TRACE):
            options[TRACE] = carrier()
        try:
            yield
        except BaseException as error:
            # A pause (Dramatiq's SkipMessage) is how a run ends, not a failure.
            if isinstance(error, Paused):
                current.set_attribute("zart.outcome", type(error).__name__)
                raise
            current.record_exception(error)
            current.set_status(Status(StatusCode.ERROR, str(error)))
            raise
