"""Parallel steps and durable map side by side: zart-dramatiq on broker_pg, and DBOS.

Run from the repository root (PostgreSQL: DATABASE_URL, else the embedded one):

    .venv/bin/python -m benchmarks.fanout [--quick] [--branches N] [--items N] [--json out.json]

Scenarios: ``fanout`` (N no-op branches in one parallel group, joined by the parent) and
``map`` (a no-op mapped over N items, at most --max-concurrency at a time). See
benchmarks/README.md, "Fan-out and map".
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    # Run as a file (python benchmarks/fanout.py): make `benchmarks` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import workers
from benchmarks.durable import (
    CpuSampler,
    CpuShare,
    Poller,
    attempt,
    close_pg_connections,
    cpu_parts,
    dbos_workers,
    dead_dbos_worker,
    dramatiq_death,
    drop_database,
    fmt,
    grid,
    package_version,
    recreate_database,
    wait_dbos_ready,
    wait_until,
    with_descendants,
)
from benchmarks.options import comma_separated
from benchmarks.pg_spend import Spend, SpendMeter
from benchmarks.report import Target, target, verdict

SYSTEMS = ["zart", "dbos"]
SCENARIOS = ["fanout", "map"]
ZART_DB = "zbench_fanout_zart"
DBOS_DB = "zbench_fanout_dbos"
ZART_SCHEMA = "bench_fanout"
ZART_APP = "benchmarks.apps.fanout_zart"
DBOS_WORKER = "benchmarks.dbos_fanout"
#: Sizes: the issue's, and --quick's smoke run.
SIZES = {"branches": 1_000, "items": 10_000}
QUICK_SIZES = {"branches": 200, "items": 2_000}
#: After the workers say they are ready, before the baseline: their boot's commits are
#: mostly published by then (an idle backend publishes its statistics within ~1 s).
SETTLE_S = 1.5

LABELS = {"zart": "zart-dramatiq (broker_pg)", "dbos": "DBOS (queue + handles)"}
SPEEDUP_TARGET = 10.0  # zart / DBOS branches/s, at least
COMMITS_TARGET = 1.5  # zart commits per branch, at most

ZART_ENDED = f"""SELECT count(*) FROM {ZART_SCHEMA}.executions
                  WHERE id = %s AND status IN ('completed', 'failed', 'cancelled', 'timed_out')"""
DBOS_ENDED = """SELECT count(*) FROM dbos.workflow_status
                 WHERE workflow_uuid = %s AND status NOT IN ('PENDING', 'ENQUEUED', 'DELAYED')"""


# -- Settings and results --------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    branches: int  # the fan-out's
    items: int  # the map's
    max_concurrency: int
    processes: int
    threads: int
    dbos_poll: float
    admin_url: str
    server: str  # where admin_url leads, for the report (no password)
    timeout: float
    keep: bool

    def db_url(self, name: str) -> str:
        return urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()

    def size(self, scenario: str) -> int:
        return self.branches if scenario == "fanout" else self.items

    def describe(self, scenario: str) -> str:
        if scenario == "fanout":
            return f"{self.branches:,} branches in one parallel group"
        return f"{self.items:,} items at max_concurrency {self.max_concurrency}"


@dataclass(frozen=True)
class Run:
    """One scenario on one system: from the start call to the parent's result."""

    branches: int
    wall_s: float
    spend: Spend | None = None  # the database's cost, the driver's polling excluded
    cpu: CpuShare | None = None  # CPU per branch (ms), workers and their backends

    @property
    def branches_per_s(self) -> float:
        return self.branches / self.wall_s

    @property
    def commits_per_branch(self) -> float | None:
        return None if self.spend is None else self.spend.commits / self.branches

    @property
    def wal_per_branch(self) -> float | None:
        if self.spend is None:
            return None
        wal = self.spend.wal
        return (wal.bytes if wal.bytes is not None else wal.server_bytes) / self.branches


def key(scenario: str, system: str) -> str:
    return f"{scenario}/{system}"


@dataclass
class Results:
    runs: dict[str, Run] = field(default_factory=dict)  # by key(scenario, system)
    errors: dict[str, str] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load averages, before and after
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


# -- zart-dramatiq ---------------------------------------------------------------------


def zart_env(settings: Settings) -> dict[str, str]:
    return {"ZFANOUT_PG_URL": settings.db_url(ZART_DB), "ZFANOUT_SCHEMA": ZART_SCHEMA}


def zart_app(settings: Settings) -> Any:
    """Import the worker app in the driver too (it declares the actors zart.start needs)."""
    os.environ.update(zart_env(settings))
    return importlib.import_module(ZART_APP)


def bench_zart(settings: Settings, scenario: str) -> Run:
    import zart_dramatiq as zart
    from broker_pg import migrate
    from zart_dramatiq.middleware import middleware_for

    if not hasattr(zart, "parallel"):
        raise RuntimeError("zart_dramatiq has no parallel/map yet")
    url = recreate_database(settings, ZART_DB)
    migrate(url, schema=ZART_SCHEMA)
    app = zart_app(settings)
    n = settings.size(scenario)
    actor, args = (
        (app.fanout, (n,)) if scenario == "fanout" else (app.fan_map, (n, settings.max_concurrency))
    )
    execution_id = f"{scenario}-{time.time_ns()}"
    meter = SpendMeter(settings.admin_url, url, ZART_DB, ZART_SCHEMA)
    try:
        env = zart_env(settings)
        with workers.running(ZART_APP, settings.processes, settings.threads, env) as worker:
            worker.wait_ready()
            # The driver's pool, opened now: connecting is not part of the start.
            with middleware_for(app.broker).store.db.connection() as conn:
                conn.execute("SELECT 1")
            time.sleep(SETTLE_S)
            poller = Poller(url)
            try:
                family = lambda: with_descendants(worker.proc.pid)  # noqa: E731
                sampler = CpuSampler(settings.admin_url, n, ZART_DB, family, poller)
                meter.begin()
                sampler.mark(0)
                started = time.perf_counter()
                handle = zart.start(actor, *args, execution_id=execution_id)
                died = lambda: dramatiq_death(worker)  # noqa: E731
                wait_until(poller, ZART_ENDED, (execution_id,), 1, settings.timeout, died)
                wall = time.perf_counter() - started
                sampler.mark(n)
            finally:
                polls = poller.queries
                poller.close()
        # The workers have stopped: their backends published their statistics on exit.
        close_pg_connections(app)
        spend = meter.end(polls)
        check_result(handle.result(timeout=30), n)
    finally:
        close_pg_connections(app)
    return Run(n, wall, spend, sampler.share())


def check_result(total: Any, n: int) -> None:
    if total != n * (n - 1) // 2:
        raise AssertionError(f"the parent returned {total!r}, not the sum of 0..{n - 1}")


# -- DBOS ------------------------------------------------------------------------------


def register_dbos_queues(url: str, settings: Settings, children: str, cap: int | None) -> None:
    from dbos import DBOSClient

    from benchmarks import dbos_fanout as fan
    from benchmarks import dbos_workflow as wf

    client = DBOSClient(system_database_url=url, application_name=wf.APP_NAME)
    try:
        poll = settings.dbos_poll
        client.register_queue(
            fan.PARENT_QUEUE, polling_interval_sec=poll, application_name=wf.APP_NAME
        )
        # As many children per worker process as a zart worker process has threads.
        client.register_queue(
            children,
            worker_concurrency=settings.threads,
            global_concurrency=cap,
            polling_interval_sec=poll,
            application_name=wf.APP_NAME,
        )
    finally:
        client.destroy()


def bench_dbos(settings: Settings, scenario: str) -> Run:
    from dbos import DBOS, DBOSClient

    from benchmarks import dbos_fanout as fan
    from benchmarks import dbos_workflow as wf

    url = recreate_database(settings, DBOS_DB)
    DBOS.migrate(url)
    n = settings.size(scenario)
    if scenario == "fanout":
        children, cap = fan.FANOUT_QUEUE, None
    else:
        children, cap = fan.MAP_QUEUE, settings.max_concurrency
    register_dbos_queues(url, settings, children, cap)
    meter = SpendMeter(settings.admin_url, url, DBOS_DB, "dbos")
    workflow_id = f"{scenario}-{time.time_ns()}"
    extra = ["--listen", f"{fan.PARENT_QUEUE},{children}"]
    with dbos_workers(url, settings.processes, extra, module=DBOS_WORKER) as procs:
        wait_dbos_ready(procs)
        client = DBOSClient(system_database_url=url, application_name=wf.APP_NAME)
        time.sleep(SETTLE_S)
        poller = Poller(url)
        try:
            pids = lambda: [pid for p in procs for pid in with_descendants(p.pid)]  # noqa: E731
            sampler = CpuSampler(settings.admin_url, n, DBOS_DB, pids, poller)
            meter.begin()
            sampler.mark(0)
            started = time.perf_counter()
            options = {
                "queue_name": fan.PARENT_QUEUE,
                "workflow_name": fan.PARENT,
                "workflow_id": workflow_id,
                # The workers' fixed version: they run only workflows of their own version.
                "app_version": wf.APP_VERSION,
            }
            client.enqueue(options, n, children, settings.dbos_poll)  # type: ignore[arg-type]
            died = lambda: dead_dbos_worker(procs)  # noqa: E731
            wait_until(poller, DBOS_ENDED, (workflow_id,), 1, settings.timeout, died)
            wall = time.perf_counter() - started
            sampler.mark(n)
        finally:
            polls = poller.queries
            poller.close()
            client.destroy()
    spend = meter.end(polls)
    client = DBOSClient(system_database_url=url, application_name=wf.APP_NAME)
    try:
        check_result(client.retrieve_workflow(workflow_id).get_result(), n)
    finally:
        client.destroy()
    return Run(n, wall, spend, sampler.share())


# -- Report ----------------------------------------------------------------------------


def runs_table(results: Results, scenarios: list[str], systems: list[str]) -> str:
    header = ["scenario", "system", "branches", "wall s", "branches/s", "commits/branch"]
    header += ["CPU ms/branch", "(worker+pg)", "WAL B/branch"]
    rows = []
    for scenario in scenarios:
        for system in systems:
            run = results.runs.get(key(scenario, system))
            if run is None:
                missing = "err" if key(scenario, system) in results.errors else "-"
                rows.append([scenario, LABELS[system], *([missing] * (len(header) - 2))])
                continue
            wal = fmt(run.wal_per_branch, "{:,.0f}")
            if run.spend is not None and run.spend.wal.bytes is None:
                wal += " (server)"
            rows.append(
                [
                    scenario,
                    LABELS[system],
                    f"{run.branches:,}",
                    f"{run.wall_s:.2f}",
                    f"{run.branches_per_s:,.0f}",
                    fmt(run.commits_per_branch, "{:.2f}"),
                    fmt(run.cpu.total_ms if run.cpu else None, "{:.2f}"),
                    cpu_parts(run.cpu),
                    wal,
                ]
            )
    return grid(header, rows)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios_table(results: Results, scenarios: list[str]) -> str:
    header = ["zart / DBOS", "wall s", "branches/s", "commits/branch", "CPU/branch"]
    rows = []
    for scenario in scenarios:
        zart, dbos = (
            results.runs.get(key(scenario, "zart")),
            results.runs.get(key(scenario, "dbos")),
        )
        if zart is None or dbos is None:
            rows.append([scenario, *(["-"] * (len(header) - 1))])
            continue
        cpu = ratio(
            zart.cpu.total_ms if zart.cpu else None, dbos.cpu.total_ms if dbos.cpu else None
        )
        rows.append(
            [
                scenario,
                fmt(ratio(zart.wall_s, dbos.wall_s), "{:.3f}x"),
                fmt(ratio(zart.branches_per_s, dbos.branches_per_s), "{:.1f}x"),
                fmt(ratio(zart.commits_per_branch, dbos.commits_per_branch), "{:.3f}x"),
                fmt(cpu, "{:.3f}x"),
            ]
        )
    return grid(header, rows)


def targets(results: Results, scenarios: list[str]) -> list[Target]:
    found = []
    for scenario in scenarios:
        zart, dbos = (
            results.runs.get(key(scenario, "zart")),
            results.runs.get(key(scenario, "dbos")),
        )
        speedup = ratio(zart.branches_per_s, dbos.branches_per_s) if zart and dbos else None
        commits = zart.commits_per_branch if zart else None
        found += [
            target(
                f"{scenario}: zart >= {SPEEDUP_TARGET:g}x DBOS branches/s",
                speedup,
                SPEEDUP_TARGET,
                True,
                "{:.1f}x",
            ),
            target(
                f"{scenario}: zart <= {COMMITS_TARGET:g} commits per branch",
                commits,
                COMMITS_TARGET,
                False,
                "{:.2f}",
            ),
        ]
    return found


def targets_table(results: Results, scenarios: list[str]) -> str:
    rows = [[t.text, t.shown, verdict(t)] for t in targets(results, scenarios)]
    return grid(["target", "actual", ""], rows)


def spend_details(results: Results, scenarios: list[str], systems: list[str]) -> list[str]:
    """Per run, rows written and WAL by record kind, per branch: where a branch's cost goes."""
    lines = []
    for scenario in scenarios:
        for system in systems:
            run = results.runs.get(key(scenario, system))
            if run is None or run.spend is None:
                continue
            label = f"{scenario}, {LABELS[system]}"
            lines.append(f"{label}, rows per branch: {run.spend.rows_line(run.branches)}")
            wal = run.spend.wal
            if wal.by_kind:
                kinds = ", ".join(f"{k} {v / run.branches:,.0f}" for k, v in wal.by_kind.items())
                lines.append(f"{label}, WAL bytes per branch: {kinds}")
    return lines


def render(results: Results, settings: Settings, scenarios: list[str], systems: list[str]) -> str:
    load = " -> ".join(f"{x:.1f}" for x in results.load)
    parts = [
        "Fan-out and map: "
        + "; ".join(f"{s} = {settings.describe(s)}" for s in scenarios)
        + f"; workers {settings.processes} processes x {settings.threads} threads"
        f" (DBOS: worker_concurrency {settings.threads}), DBOS polling"
        f" {settings.dbos_poll * 1000:g} ms; PostgreSQL {settings.server};"
        f" {os.cpu_count()} CPUs, 1-min load average {load}",
        "",
        runs_table(results, scenarios, systems),
    ]
    if details := spend_details(results, scenarios, systems):
        parts += ["", *details]
    if set(systems) == set(SYSTEMS):
        parts += ["", ratios_table(results, scenarios)]
    parts += ["", targets_table(results, scenarios)]
    if results.errors:
        parts += ["", "Errors:", *(f"  {k}: {v}" for k, v in results.errors.items())]
    return "\n".join(parts)


def write_json(path: Path, results: Results, settings: Settings, scenarios: list[str]) -> None:
    data = {
        "meta": {
            "started": results.started,
            "settings": {**asdict(settings), "admin_url": settings.server},
            "cpus": os.cpu_count(),
            "load_average_1min": results.load,
            "python": platform.python_version(),
            "versions": {n: package_version(n) for n in ("dramatiq", "dbos", "psycopg")},
        },
        "runs": {
            k: {
                **asdict(run),
                "branches_per_s": run.branches_per_s,
                "commits_per_branch": run.commits_per_branch,
                "wal_bytes_per_branch": run.wal_per_branch,
                "cpu_total_ms_per_branch": run.cpu.total_ms if run.cpu else None,
            }
            for k, run in results.runs.items()
        },
        "targets": [asdict(t) for t in targets(results, scenarios)],
        "errors": results.errors,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- Orchestration ---------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke-run sizes: {QUICK_SIZES} instead of {SIZES}"
    )
    parser.add_argument("--branches", type=int, help="branches of the fan-out")
    parser.add_argument("--items", type=int, help="items of the map")
    parser.add_argument("--max-concurrency", type=int, default=50, help="the map's window")
    parser.add_argument(
        "--only", type=comma_separated(SYSTEMS, "system(s)"), help=f"subset of {SYSTEMS}"
    )
    parser.add_argument(
        "--scenarios",
        type=comma_separated(SCENARIOS, "scenario(s)"),
        help=f"subset of {SCENARIOS}",
    )
    parser.add_argument("--json", type=Path, help="also write machine-readable results here")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--dbos-poll",
        type=float,
        default=0.01,
        help="DBOS queue polling_interval_sec, and its handles' get_result polling",
    )
    parser.add_argument(
        "--admin-url",
        help="a database of the server to create the benchmark databases from "
        "(default: DATABASE_URL, else the embedded PostgreSQL)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    from broker_pg.database import describe, resolve_url

    admin_url = resolve_url(args.admin_url)  # DATABASE_URL, else the embedded server
    if args.admin_url or os.environ.get("DATABASE_URL"):
        server = describe(admin_url)
    else:
        server = f"embedded (pgserver, {urlsplit(admin_url).query.removeprefix('host=')})"
    sizes = QUICK_SIZES if args.quick else SIZES
    return Settings(
        branches=args.branches or sizes["branches"],
        items=args.items or sizes["items"],
        max_concurrency=args.max_concurrency,
        processes=args.processes,
        threads=args.threads,
        dbos_poll=args.dbos_poll,
        admin_url=admin_url,
        server=server,
        timeout=args.timeout,
        keep=args.keep,
    )


BENCHES: dict[str, Callable[[Settings, str], Run]] = {"zart": bench_zart, "dbos": bench_dbos}


def run(settings: Settings, scenarios: list[str], systems: list[str]) -> Results:
    results = Results(load=[os.getloadavg()[0]])
    for scenario in scenarios:
        for system in systems:
            name = key(scenario, system)
            found = attempt(results, name, functools.partial(BENCHES[system], settings, scenario))
            if found is not None:
                results.runs[name] = found
                print(
                    f"[{name}] {found.wall_s:.2f} s, {found.branches_per_s:,.0f} branches/s, "
                    f"{fmt(found.commits_per_branch, '{:.2f}')} commits/branch",
                    file=sys.stderr,
                    flush=True,
                )
    results.load.append(os.getloadavg()[0])
    return results


def cleanup(settings: Settings) -> None:
    if settings.keep:
        return
    for name in (ZART_DB, DBOS_DB):
        with suppress(Exception):
            drop_database(settings, name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("psycopg.pool", "dbos"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    workers.exit_on_termination_signals()
    settings = settings_from(args)
    scenarios = args.scenarios or SCENARIOS
    systems = args.only or SYSTEMS
    try:
        results = run(settings, scenarios, systems)
    finally:
        cleanup(settings)
    print(render(results, settings, scenarios, systems))
    if args.json:
        write_json(args.json, results, settings, scenarios)
        print(f"\nJSON written to {args.json}")
    return 0 if not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
