"""Parallel steps and durable map: branches as messages, joined once, in call order."""

from __future__ import annotations

import threading
from datetime import date

import pytest

import zart_dramatiq as zart
from tests.support import Effects

EFFECTS = Effects()


def double(x: int) -> int:
    EFFECTS(f"double:{x}")
    return 2 * x


def as_date(day: int) -> date:
    return date(2026, 11, day)


def test_parallel_runs_branches_and_returns_results_in_call_order(broker, worker) -> None:
    @zart.durable
    def flow() -> list[object]:
        a, b = zart.parallel(zart.call("double", double, 21), zart.call("day", as_date, 29))
        return [a, b.isoformat()]

    assert zart.start(flow).result(timeout=20) == [42, "2026-11-29"]

