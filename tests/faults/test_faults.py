"""Faults against real ``dramatiq`` workers on a PostgreSQL of the suite's own.

Each scenario keeps ten-step workflows in flight on two worker processes (4 threads each),
injects its faults mid-workflow and checks, on the rows (see ``harness``): no execution
lost (each reaches its end within a bounded wait, no worker restarted unless killed), no
completed step run again, step re-runs only for steps in flight at a fault (at most the
faults' in-flight bound, zero without faults), no recorded step overwritten, no worker
dead that was not killed, no dead letter. Recovery time per fault is printed, not asserted.

The long version, with hundreds of faults: ``python -m benchmarks.faults``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.harness import FaultLab, Report, run_cancel_race, run_fault_scenario
from tests.faults.harness import run_time_limit_scenario as time_limited


def check(report: Report) -> None:
    print(f"\n{report.summary()}")
    assert report.problems() == [], report.explain()


def test_without_faults_nothing_runs_twice(lab: FaultLab) -> None:
    report = run_fault_scenario(lab, None, 0, quiet_steps=150)
    assert report.executions >= 15
    assert report.duplicate_bound == 0
    check(report)


def test_postgres_restarts(lab: FaultLab) -> None:
    """Fast, immediate (a crash), fast: workers reconnect on their own, nothing handed over."""
    check(run_fault_scenario(lab, "pg-restart", 3))


def test_postgres_outage(lab: FaultLab) -> None:
    """PostgreSQL down for 4 s mid-workflow, longer than the lease."""
    check(run_fault_scenario(lab, "pg-outage", 1, outage_s=4))


def test_cut_sessions_of_a_live_worker(lab: FaultLab) -> None:
    """Its LISTEN session terminated; then all its sessions, and no login, for longer than
    the lease; then every session it opens terminated every 50 ms, as long."""
    check(run_fault_scenario(lab, "cut-sessions", 3))


def test_sigstop_past_the_lease(lab: FaultLab) -> None:
    """One worker frozen for lease + 1.5 s: the other takes over; the frozen one's late writes
    are refused when it wakes up."""
    check(run_fault_scenario(lab, "sigstop", 1))


def test_repeated_sigkills(lab: FaultLab) -> None:
    """One of two workers SIGKILLed three times, started again after each kill."""
    check(run_fault_scenario(lab, "sigkill", 3))


@pytest.mark.parametrize(
    ("step_ms", "time_limit_ms", "workers", "threads", "executions"),
    [
        # A run records ~3-6 steps of 20-120 ms before its limit: cut mid-step mostly.
        ((20, 120), 350, 2, 4, 12),
        # Steps of 1-10 ms, 8 threads checkpointing at once in one process: cut mid-checkpoint.
        ((1, 10), 80, 1, 8, 30),
    ],
    ids=["mid-step", "mid-checkpoint"],
)
def test_time_limit_interrupts_steps_and_checkpoints(
    make_lab: Callable[..., FaultLab],
    step_ms: tuple[float, float],
    time_limit_ms: int,
    workers: int,
    threads: int,
    executions: int,
) -> None:
    """TimeLimit cuts runs wherever its limit falls; Retries runs the body again at once."""
    lab = make_lab(step_ms=step_ms, time_limit_ms=time_limit_ms)
    report = time_limited(lab, executions, workers=workers, threads=threads)
    assert report.extra_faults > 0, "TimeLimit never interrupted a run: the scenario tests nothing"
    check(report)


def test_cancel_races_completion_and_failure(make_lab: Callable[..., FaultLab]) -> None:
    """Cancels around the last steps of executions that complete or fail after them."""
    lab = make_lab(step_ms=(5, 30))
    report, races = run_cancel_race(lab, 24)
    assert len(races) == 24
    check(report)
