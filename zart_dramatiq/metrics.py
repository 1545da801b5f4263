"""Prometheus metrics of the durable executions a worker runs (with prometheus_client).

They follow Dramatiq's own Prometheus middleware: created as the worker
process boots, after it, so that with ``dramatiq.middleware.Prometheus`` installed
they go to its multiprocess store and are served with Dramatiq's metrics on
its port. Without prometheus_client installed, nothing is counted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds: from a step of a few milliseconds to an execution of a day.
_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600, 86400)


class Metrics:
    """The counters and histograms of durable executions, labelled by actor."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.started = Counter(
            "zart_executions_started_total", "Executions whose first run began", ["actor"]
        )
        self.ended = Counter(
            "zart_executions_ended_total",
            "Executions that ended, by status (completed, failed, timed_out)",
            ["actor", "status"],
        )
        self.execution_seconds = Histogram(
            "zart_execution_duration_seconds",
            "From an execution's creation to its end",
            ["actor", "status"],
            buckets=_BUCKETS,
        )
        self.step_attempts = Counter(
            "zart_step_attempts_total",
            "Attempts of step functions, by outcome (completed, failed, retrying)",
            ["actor", "outcome"],
        )
        self.step_seconds = Histogram(
            "zart_step_duration_seconds",
            "One attempt of a step function",
            ["actor"],
            buckets=_BUCKETS,
        )
        self.nondeterminism = Counter(
            "zart_nondeterminism_errors_total",
            "Replays that met code other than the journal recorded",
            ["actor"],
        )
        self.wakeup_lateness = Histogram(
            "zart_wakeup_lateness_seconds",
            "How late a sleeping or backing-off execution ran after its wake-up time",
            ["actor"],
            buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120),
        )
        self.leases_lost = Counter(
            "zart_runs_taken_over_total",
            "Runs resumed from their journal after their worker was presumed lost",
        )
        self.schedule_ticks_started = Counter(
            "zart_schedule_ticks_started_total",
            "Executions started by schedule ticks (zart.schedule)",
            ["schedule"],
        )
        self.schedule_ticks_missed = Counter(
            "zart_schedule_ticks_missed_total",
            "Due schedule ticks not started, by reason (catchup, overlap, error)",
            ["schedule", "reason"],
        )


_lock = threading.Lock()
_metrics: Metrics | None = None
_unavailable = False


def prepare() -> Metrics | None:
    """Create the metrics, once per process; None without prometheus_client.

    The middleware calls it as the worker boots, outside any run: a TimeLimit
    landing in the middle of creating them would leave half of them registered.
    """
    global _metrics, _unavailable
    if _metrics is None and not _unavailable:
        with _lock:
            if _metrics is None and not _unavailable:
                try:
                    _metrics = Metrics()
                except ImportError:
                    _unavailable = True
                except ValueError:
                    # Registered before, by a creation that did not finish.
                    logger.warning("Durable execution metrics are off.", exc_info=True)
                    _unavailable = True
    return _metrics


def observe(name: str, value: float | None = None, **labels: Any) -> None:
    """Count one ``name`` event (or observe ``value``), if metrics are on.

    Counting never fails a run: an error here is logged, not raised.
    """
    metrics = prepare()
    if metrics is None:
        return
    try:
        metric = getattr(metrics, name)
        child = metric.labels(**labels) if labels else metric
        if value is None:
            child.inc()
        else:
            child.observe(value)
    except Exception:
        logger.warning("Could not count %s %s.", name, labels, exc_info=True)


def count(name: str, amount: int, **labels: Any) -> None:
    """Add ``amount`` to counter ``name``, if metrics are on; never raises, like ``observe``."""
    metrics = prepare()
    if metrics is None or amount <= 0:
        return
    try:
        metric = getattr(metrics, name)
        (metric.labels(**labels) if labels else metric).inc(amount)
    except Exception:
        logger.warning("Could not count %s %s.", name, labels, exc_info=True)
