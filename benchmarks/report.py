"""Results: the side-by-side tables, PostgresBroker's ratios and targets, and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Burst, Drain, Percentiles
from benchmarks.pg_spend import CommitCeiling

PG = "postgres"
PGBENCH = "pgbench"
Metrics = dict[str, float | None]


@dataclass
class BrokerResult:
    name: str
    label: str
    #: The target whose broker this pass measures again (postgres+parked: postgres).
    baseline: str | None = None
    unavailable: str | None = None
    enqueue_single: float | None = None  # msg/s
    enqueue_threads: float | None = None  # msg/s, from several producer threads
    enqueue_bulk: float | None = None  # msg/s
    drain: Drain | None = None
    latency: Percentiles | None = None
    lateness: Percentiles | None = None
    burst: Burst | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> Metrics:
        """Every reported number under a flat key; None where the measurement failed."""
        drain, latency, lateness, burst = self.drain, self.latency, self.lateness, self.burst
        return {
            "enqueue_single": self.enqueue_single,
            "enqueue_threads": self.enqueue_threads,
            "enqueue_bulk": self.enqueue_bulk,
            "drain": drain.rate if drain else None,
            "drain_wall_s": drain.wall_s if drain else None,
            "drain_boot_s": drain.boot_s if drain else None,
            "latency_p50": latency.p50_ms if latency else None,
            "latency_p99": latency.p99_ms if latency else None,
            "lateness_p50": lateness.p50_ms if lateness else None,
            "lateness_p99": lateness.p99_ms if lateness else None,
            "burst_rate": burst.rate if burst else None,
            "burst_first": burst.first_ms if burst else None,
            "burst_p50": burst.lateness.p50_ms if burst else None,
            "burst_p99": burst.lateness.p99_ms if burst else None,
            "burst_last": burst.lateness.max_ms if burst else None,
            "burst_skew": burst.skew_ms if burst else None,
        }


@dataclass
class Pgbench:
    """The server's commit ceiling: pgbench, one single-row INSERT per transaction."""

    seconds: float
    ceilings: list[CommitCeiling] = field(default_factory=list)
    unavailable: str | None = None

    def metrics(self) -> Metrics:
        return {f"c{c.clients}": c.commits_per_s for c in self.ceilings}


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str
    measurement: str  # the one whose failure leaves this column empty (BrokerResult.errors)
    in_ratios: bool = True


THROUGHPUT = [
    Column("enqueue_single", "enq 1-by-1 msg/s", "{:,.0f}", "enqueue_single"),
    Column("enqueue_threads", "enq threads msg/s", "{:,.0f}", "enqueue_threads"),
    Column("enqueue_bulk", "enq bulk msg/s", "{:,.0f}", "enqueue_bulk"),
    Column("drain", "drain msg/s", "{:,.0f}", "drain"),
    Column("drain_wall_s", "drain wall s", "{:.2f}", "drain", in_ratios=False),
    Column("drain_boot_s", "boot s", "{:.2f}", "drain", in_ratios=False),
    Column("burst_rate", "burst msg/s", "{:,.0f}", "burst"),
]
LATENCY = [
    Column("latency_p50", "idle p50 ms", "{:.2f}", "latency"),
    Column("latency_p99", "idle p99 ms", "{:.2f}", "latency"),
    Column("lateness_p50", "delay p50 ms", "{:.1f}", "lateness"),
    Column("lateness_p99", "delay p99 ms", "{:.1f}", "lateness"),
    Column("burst_first", "burst first ms", "{:.1f}", "burst"),
    Column("burst_p50", "burst p50 ms", "{:.1f}", "burst"),
    Column("burst_p99", "burst p99 ms", "{:.1f}", "burst"),
    Column("burst_last", "burst last ms", "{:.1f}", "burst"),
    Column("burst_skew", "due skew ms", "{:.1f}", "burst", in_ratios=False),
]
# Failures that leave every later measurement of the broker's turn empty.
ABORTING = ("aborted", "idle_worker")
GROUPS = [THROUGHPUT, LATENCY]
COLUMNS = [c for group in GROUPS for c in group]
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


def shown(value: float | None, fmt: str, missing: str = "err") -> str:
    return missing if value is None else fmt.format(value)


def cell(result: BrokerResult, metrics: Metrics, column: Column) -> str:
    """The value; `err` if its measurement failed, `-` if it was not run (e.g. --burst 0)."""
    failed = {column.measurement, *ABORTING} & result.errors.keys()
    return shown(metrics[column.key], column.fmt, "err" if failed else "-")


def results_table(results: list[BrokerResult], columns: list[Column]) -> str:
    def cells(result: BrokerResult) -> list[str]:
        metrics = result.metrics()
        return [result.label, *(cell(result, metrics, c) for c in columns)]

    rows = [cells(r) for r in results if not r.unavailable]
    missing = [(r.label, f"n/a ({r.unavailable})") for r in results if r.unavailable]
    return render_grid(["broker", *(c.header for c in columns)], rows, missing)


def error_lines(results: list[BrokerResult]) -> list[str]:
    return [f"  {r.label}: {metric}: {text}" for r in results for metric, text in r.errors.items()]


def ratio(pg: float | None, peer: float | None) -> float | None:
    return pg / peer if pg is not None and peer else None


def available(results: list[BrokerResult]) -> dict[str, Metrics]:
    return {r.name: r.metrics() for r in results if not r.unavailable}


def ratios(results: list[BrokerResult]) -> dict[str, Metrics]:
    """PostgresBroker's metric divided by each available peer's (second passes are no peers)."""
    metrics = available(results)
    pg = metrics.get(PG)
    if pg is None:
        return {}
    peers = [r.name for r in results if r.name != PG and r.baseline is None]
    return {
        name: {c.key: ratio(pg[c.key], metrics[name][c.key]) for c in RATIO_COLUMNS}
        for name in peers
        if name in metrics
    }


def ratios_table(results: list[BrokerResult], columns: list[Column]) -> str:
    table = ratios(results)
    if not table:
        return "(no ratios: PostgresBroker or all peers unavailable)"
    labels = {r.name: r.label for r in results}
    columns = [c for c in columns if c.in_ratios]
    header = ["PostgresBroker / peer", *(c.header for c in columns)]
    rows = [
        [labels[name], *(shown(values[c.key], "{:.2f}x", "-") for c in columns)]
        for name, values in table.items()
    ]
    return render_grid(header, rows)


RATIO_CAPTION = "(throughput: above 1x means PostgresBroker is faster; latency: below 1x does)"


def second_pass_table(result: BrokerResult, base: BrokerResult) -> str:
    """A second pass of a broker beside its first, metric by metric, with the ratio."""
    ours, theirs = result.metrics(), base.metrics()
    header = [f"{result.label} vs {base.label}", "first pass", "this pass", "this/first"]
    rows = [
        [
            c.header,
            cell(base, theirs, c),
            cell(result, ours, c),
            shown(ratio(ours[c.key], theirs[c.key]), "{:.2f}x", "-"),
        ]
        for c in RATIO_COLUMNS
    ]
    return render_grid(header, rows)


def second_pass_tables(results: list[BrokerResult]) -> list[str]:
    by_name = {r.name: r for r in results if not r.unavailable}
    return [
        second_pass_table(r, by_name[r.baseline])
        for r in results
        if r.baseline in by_name and not r.unavailable
    ]


def pgbench_table(pgbench: Pgbench | None) -> str | None:
    if pgbench is None:
        return None
    # pg_spend.commit_ceiling runs min(clients, CPUs) pgbench threads.
    title = f"pgbench, one INSERT per transaction, {pgbench.seconds:g} s, -j min(-c, CPUs)"
    if pgbench.unavailable:
        return f"{title}: n/a ({pgbench.unavailable})"
    rows = [
        [f"-c {c.clients}", f"{c.commits_per_s:,.0f}", f"{c.latency_ms:.2f}"]
        for c in pgbench.ceilings
    ]
    return render_grid([title, "commits/s", "ms/commit"], rows)


@dataclass(frozen=True)
class Target:
    text: str
    actual: float | None
    shown: str
    met: bool | None  # None: not measured, or no limit (informational)
    limit: float | None = None


def target(
    text: str, value: float | None, limit: float | None, at_least: bool, fmt: str = "{:.2f}x"
) -> Target:
    """`value` against `limit` (None: printed for information only)."""
    met = None
    if value is not None and limit is not None:
        met = value >= limit if at_least else value <= limit
    return Target(text, value, shown(value, fmt, "n/a"), met, limit)


class Lookup:
    """Metrics by target name and key; None for anything not measured."""

    def __init__(self, results: list[BrokerResult], pgbench: Pgbench | None) -> None:
        self.metrics = available(results)
        if pgbench is not None:
            self.metrics[PGBENCH] = pgbench.metrics()

    def __call__(self, name: str, key: str) -> float | None:
        return self.metrics.get(name, {}).get(key)

    def ratio(self, a: tuple[str, str], b: tuple[str, str]) -> float | None:
        return ratio(self(*a), self(*b))


Ref = tuple[str, str]  # (target name, metric key)
# PostgresBroker's ratios to peers and to pgbench: text, numerator, denominator, limit
# (None: shown for information), whether the ratio must be at least the limit.
RATIO_TARGETS: list[tuple[str, Ref, Ref, float | None, bool]] = [
    ("drain >= 1.3x RabbitMQ", (PG, "drain"), ("rabbitmq", "drain"), 1.3, True),
    ("drain >= 1.5x Redis", (PG, "drain"), ("redis", "drain"), 1.5, True),
    ("drain >= 60% of Stub (0.60x)", (PG, "drain"), ("stub", "drain"), 0.6, True),
    ("idle p50 <= 1.0x RabbitMQ", (PG, "latency_p50"), ("rabbitmq", "latency_p50"), 1.0, False),
    ("1-by-1 send >= 60% of pgbench -c 1", (PG, "enqueue_single"), (PGBENCH, "c1"), 0.6, True),
    (
        "threaded send >= RabbitMQ 1-by-1",
        (PG, "enqueue_threads"),
        ("rabbitmq", "enqueue_single"),
        1.0,
        True,
    ),
    (
        "threaded send / RabbitMQ threaded",
        (PG, "enqueue_threads"),
        ("rabbitmq", "enqueue_threads"),
        None,
        True,
    ),
    ("threaded send / pgbench -c 8", (PG, "enqueue_threads"), (PGBENCH, "c8"), None, True),
]
# PostgresBroker's own numbers: text, metric key, limit, at least, format.
BOUND_TARGETS: list[tuple[str, str, float, bool, str]] = [
    ("burst: all started <= 1 s after due", "burst_last", 1000.0, False, "{:,.0f} ms"),
    ("bulk enqueue >= 10,000 msg/s", "enqueue_bulk", 10_000, True, "{:,.0f} msg/s"),
    ("idle latency p50 <= 2 ms", "latency_p50", 2.0, False, "{:.2f} ms"),
    ("idle latency p99 <= 5 ms", "latency_p99", 5.0, False, "{:.2f} ms"),
    ("delay lateness p99 <= 30 ms", "lateness_p99", 30.0, False, "{:.1f} ms"),
]
# A second pass (parked work) against its first: within 10 %.
SECOND_PASS_TARGETS: list[tuple[str, str, float, bool]] = [
    ("idle p50 <= 1.10x", "latency_p50", 1.1, False),
    ("drain >= 0.90x", "drain", 0.9, True),
    ("delay p99 <= 1.10x", "lateness_p99", 1.1, False),
]


def targets(results: list[BrokerResult], pgbench: Pgbench | None = None) -> list[Target]:
    get = Lookup(results, pgbench)
    second = [(r.name, r.baseline) for r in results if r.baseline is not None]
    return [
        *(target(text, get.ratio(a, b), lim, least) for text, a, b, lim, least in RATIO_TARGETS),
        *(
            target(text, get(PG, key), lim, least, fmt)
            for text, key, lim, least, fmt in BOUND_TARGETS
        ),
        *(
            target(f"{name}/{base} {text}", get.ratio((name, key), (base, key)), lim, least)
            for name, base in second
            for text, key, lim, least in SECOND_PASS_TARGETS
        ),
    ]


def verdict(t: Target) -> str:
    if t.met is None:
        return "n/a" if t.actual is None else "(info)"
    return "✓" if t.met else "✗"


def targets_table(results: list[BrokerResult], pgbench: Pgbench | None) -> str:
    rows = [[t.text, t.shown, verdict(t)] for t in targets(results, pgbench)]
    return render_grid(["PostgresBroker target", "actual", ""], rows)


def render(results: list[BrokerResult], pgbench: Pgbench | None, notes: list[str]) -> str:
    parts = [results_table(results, group) for group in GROUPS]
    errors = error_lines(results)
    if errors:
        parts.append("Errors:\n" + "\n".join(errors))
    ratio_tables = [ratios_table(results, group) for group in GROUPS]
    parts.append("\n\n".join(dict.fromkeys(ratio_tables)) + "\n" + RATIO_CAPTION)
    parts += second_pass_tables(results)
    parts += [t for t in [pgbench_table(pgbench)] if t]
    parts.append(targets_table(results, pgbench))
    if notes:
        parts.append("Notes:\n" + "\n".join(f"  - {n}" for n in notes))
    return "\n\n".join(parts)


def write_json(
    path: Path, meta: dict[str, Any], results: list[BrokerResult], pgbench: Pgbench | None
) -> None:
    document = {
        "meta": meta,
        "results": {r.name: {**asdict(r), "metrics": r.metrics()} for r in results},
        "pgbench": asdict(pgbench) if pgbench else None,
        "ratios_postgres_over_peer": ratios(results),
        "targets": [asdict(t) for t in targets(results, pgbench)],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
