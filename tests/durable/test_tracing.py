"""OpenTelemetry spans: one per run, step and branch, in one trace across suspensions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import zart_dramatiq as zart

#: The application's provider, as an application would install it: zart installs none.
EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER


def triple(x: int) -> int:
    return 3 * x


def test_every_run_step_and_branch_of_an_execution_joins_the_callers_trace(
    broker, worker, spans
) -> None:
    @zart.durable(actor_name="traced")
    def traced() -> int:
        one = zart.step("one", lambda: 1)
        zart.sleep("pause", 0.05)
        (tripled,) = zart.parallel(zart.call("triple", triple, one))
        return tripled

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        handle = zart.start(traced)
    assert handle.result(timeout=20) == 3
    finished = {s.name: s for s in spans.get_finished_spans()}
    names = [s.name for s in spans.get_finished_spans()]
    trace_id = request.get_span_context().trace_id
    zart_spans = [s for s in spans.get_finished_spans() if s.name.startswith("zart.")]
    # Three runs: before the sleep, after it (opening the group), after the join.
    assert names.count("zart.run traced") == 3
    assert "zart.step one" in finished and "zart.branch group:parallel[0]" in finished
    assert {s.context.trace_id for s in zart_spans} == {trace_id}
    run = finished["zart.run traced"]
    assert run.attributes is not None and run.attributes["zart.execution_id"] == handle.execution_id


def test_a_failed_step_is_an_error_span_and_a_pause_is_not(broker, worker, spans) -> None:
    @zart.durable(actor_name="fails_once", max_retries=0)
    def fails_once() -> None:
        zart.sleep("pause", 0.01)
        zart.step("bad", lambda: 1 / 0)

    with pytest.raises(zart.ExecutionFailed):
        zart.start(fails_once).result(timeout=20)
    by_name: dict[str, list] = {}
    for s in spans.get_finished_spans():
        by_name.setdefault(s.name, []).append(s)
    (step,) = by_name["zart.step bad"]
    assert step.status.status_code == StatusCode.ERROR
    first_run, second_run = sorted(by_name["zart.run fails_once"], key=lambda s: s.start_time)
    assert first_run.status.status_code == StatusCode.UNSET  # paused by the sleep
    assert first_run.attributes is not None and first_run.attributes["zart.outcome"] == "Suspended"
    assert second_run.status.status_code == StatusCode.ERROR
    # Without a caller's trace, the runs share the first run's.
    assert first_run.context.trace_id == second_run.context.trace_id
