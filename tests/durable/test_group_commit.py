"""Group commit: concurrent checkpoints share a write, each caller gets its own outcome."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from zart_dramatiq.group_commit import GroupCommit


class Writer:
    """Doubles items; the first write holds until ``release``, so others queue up behind it."""

    def __init__(self, poison: int | None = None) -> None:
        self.poison = poison
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, items: Sequence[int]) -> list[int]:
        if not self.batches:
            self.release.wait(10)
        self.batches.append(list(items))
        if self.poison in items:
            raise ValueError("unlucky")
        return [item * 2 for item in items]


def test_callers_queued_behind_a_write_share_the_next_one() -> None:
    writer = Writer()
    group = GroupCommit(writer)
    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(group.submit, 0)
        others = [pool.submit(group.submit, n) for n in range(1, 16)]
        writer.release.set()
        assert first.result(10) == 0
        assert [f.result(10) for f in others] == [n * 2 for n in range(1, 16)]
    assert sorted(n for batch in writer.batches for n in batch) == list(range(16))
    assert len(writer.batches) < 16  # some callers shared a write


def test_a_failing_item_fails_only_its_own_caller() -> None:
    writer = Writer(poison=13)
    group = GroupCommit(writer)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(group.submit, 1)
        futures = {n: pool.submit(group.submit, n) for n in (12, 13, 14)}
        writer.release.set()
        assert first.result(10) == 2
        assert futures[12].result(10) == 24
        assert futures[14].result(10) == 28
        with pytest.raises(ValueError, match="unlucky"):
            futures[13].result(10)
