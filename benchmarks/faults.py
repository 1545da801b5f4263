"""Faults, the long version: hundreds of faults of every kind against real dramatiq workers.

Run from the repository root, with the local PostgreSQL running (it only records the
side effects; the faults hit a PostgreSQL of the benchmark's own, started from pgserver's
bundled binaries or Debian's in a temporary directory):

    .venv/bin/python -m benchmarks.faults [--faults 200] [--kinds a,b] [--json out.json]

The same harness as ``tests/faults`` (``tests/faults/harness.py``), with many more faults.
Prints, per fault kind: faults injected, executions, lost, completed steps re-run,
duplicates against the in-flight bound, overwritten steps, recovery time p50/max. See
benchmarks/README.md, "Faults".
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file (python benchmarks/faults.py): make `benchmarks` and `tests` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from benchmarks.options import comma_separated
from benchmarks.workers import exit_on_termination_signals
from tests.faults.harness import (
    KINDS,
    Fault,
    FaultLab,
    OwnPostgres,
    Report,
    dump_json,
    format_table,
    run_cancel_race,
    run_fault_scenario,
    run_time_limit_scenario,
)

#: Every kind, in the order they run: the injected ones, then TimeLimit and cancel races.
ALL_KINDS = [*KINDS, "time-limit", "cancel-race"]
EFFECTS_DB = "zbench_faults"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--faults", type=int, default=200, help="faults in all, shared evenly by the kinds"
    )
    parser.add_argument(
        "--kinds",
        type=comma_separated(ALL_KINDS, "fault kind(s)"),
        default=ALL_KINDS,
        help=f"comma-separated subset of {','.join(ALL_KINDS)}",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--lease-timeout", type=float, default=3.0, help="broker lease, s")
    parser.add_argument("--outage-s", type=float, default=4.0, help="length of an outage")
    parser.add_argument("--step-ms", default="20-100", help="step duration range, ms")
    parser.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help=f"the shared server: the database {EFFECTS_DB} is created there for the effects",
    )
    parser.add_argument("--logs", type=Path, help="keep the worker logs here (default: a tmp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    return parser.parse_args(argv)


@contextlib.contextmanager
def effects_database(admin_url: str):  # type: ignore[no-untyped-def]
    """A database of the benchmark's own on the shared server, for the effects; dropped after."""
    name = sql.Identifier(EFFECTS_DB)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield psycopg.conninfo.make_conninfo(admin_url, dbname=EFFECTS_DB)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def run_kind(kind: str, faults: int, lab: FaultLab, args: argparse.Namespace) -> Report:
    def report_fault(fault: Fault) -> None:
        recovery = "never" if fault.recovery_s is None else f"{fault.recovery_s:.2f}s"
        progress(
            f"  {kind} #{len(lab.faults)}/{faults} {fault.target}: "
            f"{fault.duration_s:.1f}s, recovered in {recovery}"
        )

    if kind == "time-limit":
        # Steps of 1-10 ms under an 80 ms limit: about one interruption per execution.
        return run_time_limit_scenario(
            lab, max(faults, 1), workers=1, threads=args.workers * args.threads
        )
    if kind == "cancel-race":
        report, _ = run_cancel_race(lab, max(faults, 1), workers=args.workers, threads=args.threads)
        return report
    return run_fault_scenario(
        lab,
        kind,
        faults,
        workers=args.workers,
        threads=args.threads,
        outage_s=args.outage_s,
        on_fault=report_fault,
        stop_when_stuck=False,
    )


def lab_options(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    low, high = (float(ms) for ms in args.step_ms.split("-"))
    options: dict[str, Any] = {"lease_timeout": args.lease_timeout, "step_ms": (low, high)}
    if kind == "time-limit":
        options.update(step_ms=(1.0, 10.0), time_limit_ms=80)
    if kind == "cancel-race":
        options.update(step_ms=(5.0, 30.0))
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    # The driver's own pool sees every fault too; its warnings are expected noise here.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    exit_on_termination_signals()
    per_kind = max(1, args.faults // len(args.kinds))
    logs = args.logs or Path(tempfile.mkdtemp(prefix="zbench-faults-"))
    reports: list[Report] = []
    server = OwnPostgres()
    progress(f"own PostgreSQL: {server}; worker logs in {logs}")
    try:
        server.init()
        server.start()
        with effects_database(args.pg_url) as effects_url:
            for kind in args.kinds:
                progress(f"{kind}: {per_kind} fault(s)")
                started = time.monotonic()
                lab = FaultLab(server, effects_url, logs / kind, **lab_options(kind, args))
                try:
                    report = run_kind(kind, per_kind, lab, args)
                finally:
                    lab.close()
                reports.append(report)
                progress(f"  {report.summary()} ({time.monotonic() - started:.0f}s)")
    finally:
        server.close()
    print(format_table(reports))
    for report in reports:
        for problem in report.problems():
            print(f"  {report.name}: {problem}")
    print(
        "\nfaults: injected, TimeLimit interruptions counted, or cancels raced. "
        "re-run: completed steps run again (an effect more than 1 s after its step was "
        "recorded). dups/bound: step runs beyond the first, against the sum of the faults' "
        "in-flight threads (one per TimeLimit interruption). recovery: from a fault's end "
        "until every execution running then recorded a step or ended. redeliv: messages "
        "claimed again (handed back or over)."
    )
    if args.json:
        args.json.write_text(dump_json(reports))
        print(f"JSON written to {args.json}")
    return 0 if all(not r.problems() for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
