"""OpenTelemetry spans of durable executions (with opentelemetry-api: the ``otel`` extra).

One span per run of a body, per step attempt and per branch. The trace
context travels in the execution's messages (option ``zart_trace``, W3C
``traceparent``), so every run of an execution, across suspensions and
workers, joins the trace of whoever started it (or of its first run). Spans
go to the tracer provider the application configured: zart installs none, and
records nothing without one. Spans a step function makes of its own are not
children of the step's span: zart's spans are never made the current span.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

from .signals import Interrupted

#: The message option carrying the execution's trace context.
TRACE = "zart_trace"

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    trace = None  # type: ignore[assignment]

#: The span a run or step of this context is in. Spans are never made OpenTelemetry's
#: current span: attaching and detaching its context is not safe from an asynchronous
#: exception (TimeLimit), which a detach then logs, and logging under such interrupts
#: can leave a handler's lock held.
_parent: ContextVar[Any] = ContextVar("zart_trace_parent", default=None)


def _tracer() -> Any:
    """The application's tracer; None when it installed no tracer provider (nothing to record)."""
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider.get_tracer("zart_dramatiq")


def carrier() -> dict[str, str]:
    """The trace context of this run or step (else the caller's), to put in a message."""
    if _tracer() is None:
        return {}
    found: dict[str, str] = {}
    propagate.inject(found, context=_parent.get())
    return found


@contextmanager
def span(
    name: str, options: MutableMapping[str, Any] | None = None, /, **attributes: Any
) -> Iterator[None]:
    """A span named ``name`` for the block; an error ending the block is recorded.

    With ``options`` (a message's), the span joins the trace those carry, and
    when they carry none, they get this span's: the messages made from them
    (the execution's next ones) continue its trace. Without ``options``, it is
    a child of the enclosing run's span.
    """
    tracer = _tracer()
    if tracer is None:
        yield
        return
    parent: Context | None = (
        propagate.extract(options.get(TRACE) or {}) if options is not None else _parent.get()
    )
    current = tracer.start_span(
        name, context=parent, attributes={k: v for k, v in attributes.items() if v is not None}
    )
    token = _parent.set(trace.set_span_in_context(current))
    try:
        if options is not None and not options.get(TRACE):
            options[TRACE] = carrier()
        yield
    except BaseException as error:
        # A pause (Dramatiq's SkipMessage) is how a run ends, not a failure.
        if isinstance(error, Interrupted):
            current.set_attribute("zart.outcome", type(error).__name__)
        else:
            current.record_exception(error)
            current.set_status(Status(StatusCode.ERROR, str(error)))
        raise
    finally:
        current.end()
        with suppress(ValueError):  # reset in another context, after an interrupt
            _parent.reset(token)
