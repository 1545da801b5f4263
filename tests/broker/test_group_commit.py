"""Group commit: concurrent writes share a transaction, each caller gets its own outcome.

The writer is a thread of its own, so an asynchronous exception in a caller
(Dramatiq's TimeLimit) cannot wedge the others, and no caller waits forever.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker_pg import DatabaseUnavailable
from broker_pg.group_commit import GroupCommit
from tests.support import wait_until


class Writer:
    """Doubles items; the first write holds until ``release``, so others queue up behind it."""

    def __init__(self, poison: int | None = None) -> None:
        self.poison = poison
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.holding = threading.Event()

    def __call__(self, items: Sequence[int]) -> list[int]:
        if not self.batches:
            self.holding.set()
            self.release.wait(10)
        self.batches.append(list(items))
        if self.poison in items:
            raise ValueError("unlucky")
        return [item * 2 for item in items]


def shared(writer: Writer, *, timeout: float) -> GroupCommit[int, int]:
    return GroupCommit(writer, timeout=timeout, what="an item", then="try again")


def test_callers_queued_behind_a_write_share_the_next_one() -> None:
    writer = Writer()
    group = shared(writer, timeout=10)
    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(group.submit, 0)
        writer.holding.wait(10)
        others = [pool.submit(group.submit, n) for n in range(1, 16)]
        writer.release.set()
        assert first.result(10) == 0
        assert [f.result(10) for f in others] == [n * 2 for n in range(1, 16)]
    assert sorted(n for batch in writer.batches for n in batch) == list(range(16))
    assert len(writer.batches) < 16  # some callers shared a write


def test_a_failing_item_fails_only_its_own_caller() -> None:
    writer = Writer(poison=13)
    group = shared(writer, timeout=10)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(group.submit, 1)
        writer.holding.wait(10)
        futures = {n: pool.submit(group.submit, n) for n in (12, 13, 14)}
        writer.release.set()
        assert first.result(10) == 2
        assert futures[12].result(10) == 24
        assert futures[14].result(10) == 28
        with pytest.raises(ValueError, match="unlucky"):
            futures[13].result(10)


class Interrupted(BaseException):
    """Stands for Dramatiq's TimeLimitExceeded: raised into a thread from outside."""


def raise_in(thread: threading.Thread) -> None:
    ident = ctypes.c_ulong(thread.ident or 0)
    assert ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, ctypes.py_object(Interrupted)) == 1


def caller(group: GroupCommit[int, int], n: int, outcomes: dict[int, object]) -> threading.Thread:
    """A thread submitting ``n``; its outcome, or what it raised, lands in ``outcomes``."""

    def call() -> None:
        try:
            outcomes[n] = group.submit(n)
        except BaseException as e:
            outcomes[n] = e

    return threading.Thread(target=call)


def test_a_caller_interrupted_while_waiting_wedges_nobody() -> None:
    writer = Writer()
    group = shared(writer, timeout=10)
    outcomes: dict[int, object] = {}
    threads = {n: caller(group, n, outcomes) for n in range(4)}
    threads[0].start()
    writer.holding.wait(10)
    for n in (1, 2, 3):
        threads[n].start()
    wait_until(lambda: len(group._line) == 3, message="three callers in line")
    # Pending while it waits for the writer; it lands as soon as the wait returns.
    raise_in(threads[1])
    writer.release.set()
    for thread in threads.values():
        thread.join(10)
    assert isinstance(outcomes[1], Interrupted)
    assert {n: outcomes[n] for n in (0, 2, 3)} == {0: 0, 2: 4, 3: 6}
    # The process goes on writing afterwards.
    assert group.submit(21) == 42


def test_a_caller_waits_a_bounded_time() -> None:
    writer = Writer()  # holds its first write until released: a database that hangs
    group = shared(writer, timeout=0.2)
    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(group.submit, 1)
        writer.holding.wait(10)
        with pytest.raises(DatabaseUnavailable, match="not written within"):
            group.submit(2)
        writer.release.set()
        assert stuck.result(10) == 2


def test_an_interrupted_writer_passes_its_role_and_its_batch_on() -> None:
    writer = Writer()
    group = shared(writer, timeout=10)
    outcomes: dict[int, object] = {}
    leader = caller(group, 0, outcomes)
    leader.start()
    writer.holding.wait(10)
    followers = [caller(group, n, outcomes) for n in (1, 2)]
    for thread in followers:
        thread.start()
    wait_until(lambda: len(group._line) == 2, message="two callers in line")
    raise_in(leader)  # lands in the writer as soon as its write returns
    writer.release.set()
    for thread in (leader, *followers):
        thread.join(10)
    assert isinstance(outcomes[0], Interrupted)
    assert (outcomes[1], outcomes[2]) == (2, 4)
    assert group.submit(5) == 10
