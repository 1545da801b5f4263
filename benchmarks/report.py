"""Results: the side-by-side table, PostgresBroker's ratios and targets, and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Drain, Percentiles

PG = "postgres"
Metrics = dict[str, float | None]


@dataclass
class BrokerResult:
    name: str
    label: str
    unavailable: str | None = None
    enqueue_single: float | None = None  # msg/s
    enqueue_bulk: float | None = None  # msg/s
    drain: Drain | None = None
    latency: Percentiles | None = None
    lateness: Percentiles | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> Metrics:
        """Every reported number under a flat key; None where the measurement failed."""
        drain, latency, lateness = self.drain, self.latency, self.lateness
        return {
            "enqueue_single": self.enqueue_single,
            "enqueue_bulk": self.enqueue_bulk,
            "drain": drain.rate if drain else None,
            "drain_wall_s": drain.wall_s if drain else None,
            "drain_boot_s": drain.boot_s if drain else None,
            "latency_p50": latency.p50_ms if latency else None,
            "latency_p99": latency.p99_ms if latency else None,
            "lateness_p50": lateness.p50_ms if lateness else None,
            "lateness_p99": lateness.p99_ms if lateness else None,
        }


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str
    in_ratios: bool = True


COLUMNS = [
    Column("enqueue_single", "enq 1-by-1 msg/s", "{:,.0f}"),
    Column("enqueue_bulk", "enq bulk msg/s", "{:,.0f}"),
    Column("drain", "drain msg/s", "{:,.0f}"),
    Column("drain_wall_s", "drain wall s", "{:.2f}", in_ratios=False),
    Column("drain_boot_s", "boot s", "{:.2f}", in_ratios=False),
    Column("latency_p50", "idle p50 ms", "{:.2f}"),
    Column("latency_p99", "idle p99 ms", "{:.2f}"),
    Column("lateness_p50", "delay p50 ms", "{:.1f}"),
    Column("lateness_p99", "delay p99 ms", "{:.1f}"),
]
RATIO_COLUMNS = [c for c in COLUMNS if c.in_ratios]


def render_grid(
    header: list[str], rows: list[list[str]], spanning: Sequence[tuple[str, str]] = ()
) -> str:
    """Right-aligned columns; `spanning` rows (label, text) run across without widening them."""
    labels = [header[0], *(row[0] for row in rows), *(label for label, _ in spanning)]
    widths = [max(map(len, labels))]
    widths += [max(len(line[i]) for line in [header, *rows]) for i in range(1, len(header))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        padded = (c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        return "  ".join([first.ljust(widths[0]), *padded])

    rule = "-" * len(line(header))
    extra = [f"{label.ljust(widths[0])}  {text}" for label, text in spanning]
    return "\n".join([line(header), rule, *(line(row) for row in rows), *extra])


def results_table(results: list[BrokerResult]) -> str:
    def cells(result: BrokerResult) -> list[str]:
        metrics = result.metrics()
        values = [(metrics[c.key], c.fmt) for c in COLUMNS]
        return [result.label, *("err" if v is None else fmt.format(v) for v, fmt in values)]

    rows = [cells(r) for r in results if not r.unavailable]
    missing = [(r.label, f"n/a ({r.unavailable})") for r in results if r.unavailable]
    return render_grid(["broker", *(c.header for c in COLUMNS)], rows, missing)


def error_lines(results: list[BrokerResult]) -> list[str]:
    return [f"  {r.label}: {metric}: {text}" for r in results for metric, text in r.errors.items()]


def ratio(pg: float | None, peer: float | None) -> float | None:
    return pg / peer if pg is not None and peer else None


def available(results: list[BrokerResult]) -> dict[str, Metrics]:
    return {r.name: r.metrics() for r in results if not r.unavailable}


def ratios(results: list[BrokerResult]) -> dict[str, Metrics]:
    """PostgresBroker's metric divided by each available peer's."""
    metrics = available(results)
    pg = metrics.pop(PG, None)
    if pg is None:
        return {}
    return {
        name: {c.key: ratio(pg[c.key], peer[c.key]) for c in RATIO_COLUMNS}
        for name, peer in metrics.items()
    }


def ratios_table(results: list[BrokerResult]) -> str:
    table = ratios(results)
    if not table:
        return "(no ratios: PostgresBroker or all peers unavailable)"
    labels = {r.name: r.label for r in results}
    header = ["PostgresBroker / peer", *(c.header for c in RATIO_COLUMNS)]
    rows = [
        [
            labels[name],
            *("-" if values[c.key] is None else f"{values[c.key]:.2f}x" for c in RATIO_COLUMNS),
        ]
        for name, values in table.items()
    ]
    caption = "(throughput: above 1x means PostgresBroker is faster; latency: below 1x does)"
    return render_grid(header, rows) + "\n" + caption


@dataclass(frozen=True)
class Target:
    text: str
    actual: float | None
    shown: str
    met: bool | None


def drain_target(metrics: dict[str, Metrics], peer: str, factor: float, text: str) -> Target:
    value = ratio(metrics.get(PG, {}).get("drain"), metrics.get(peer, {}).get("drain"))
    shown = "n/a" if value is None else f"{value:.2f}x"
    return Target(text, value, shown, None if value is None else value >= factor)


def bound_target(value: float | None, limit: float, text: str, fmt: str, at_least: bool) -> Target:
    shown = "n/a" if value is None else fmt.format(value)
    met = None if value is None else (value >= limit if at_least else value <= limit)
    return Target(text, value, shown, met)


def targets(results: list[BrokerResult]) -> list[Target]:
    metrics = available(results)
    pg = metrics.get(PG, {})
    return [
        drain_target(metrics, "rabbitmq", 1.0, "drain >= 1.0x RabbitMQ"),
        drain_target(metrics, "redis", 1.5, "drain >= 1.5x Redis"),
        drain_target(metrics, "stub", 0.6, "drain >= 60% of Stub (0.60x)"),
        bound_target(
            pg.get("enqueue_bulk"), 10_000, "bulk enqueue >= 10,000 msg/s", "{:,.0f} msg/s", True
        ),
        bound_target(pg.get("latency_p50"), 2.0, "idle latency p50 <= 2 ms", "{:.2f} ms", False),
        bound_target(pg.get("latency_p99"), 5.0, "idle latency p99 <= 5 ms", "{:.2f} ms", False),
        bound_target(
            pg.get("lateness_p99"), 30.0, "delay lateness p99 <= 30 ms", "{:.1f} ms", False
        ),
    ]


def targets_table(results: list[BrokerResult]) -> str:
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    rows = [[t.text, t.shown, verdict[t.met]] for t in targets(results)]
    return render_grid(["PostgresBroker target", "actual", ""], rows)


def render(results: list[BrokerResult], notes: list[str]) -> str:
    parts = [results_table(results)]
    errors = error_lines(results)
    if errors:
        parts.append("Errors:\n" + "\n".join(errors))
    parts += [ratios_table(results), targets_table(results)]
    if notes:
        parts.append("Notes:\n" + "\n".join(f"  - {n}" for n in notes))
    return "\n\n".join(parts)


def write_json(path: Path, meta: dict[str, Any], results: list[BrokerResult]) -> None:
    document = {
        "meta": meta,
        "results": {r.name: {**asdict(r), "metrics": r.metrics()} for r in results},
        "ratios_postgres_over_peer": ratios(results),
        "targets": [asdict(t) for t in targets(results)],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
