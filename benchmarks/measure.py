"""The measurements. Each returns plain numbers; the driver decides what to do with them."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Actor

from benchmarks import channel as ch
from benchmarks import samples
from benchmarks.workers import WorkerDied, WorkerProcess


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p99_ms: float
    max_ms: float
    samples: int

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, max {self.max_ms:.2f} ms"


@dataclass(frozen=True)
class Drain:
    rate: float  # messages / (last actor end - first actor start): boot excluded
    active_s: float
    wall_s: float  # worker spawn -> last actor end: boot included
    boot_s: float  # worker spawn -> first actor start
    processes_seen: int

    def __str__(self) -> str:
        return f"{self.rate:,.0f} msg/s over {self.active_s:.2f}s (boot {self.boot_s:.2f}s)"


@dataclass(frozen=True)
class Burst:
    lateness: Percentiles  # actor start - the common due time; max_ms: the last one to start
    first_ms: float  # the first one to start
    skew_ms: float  # bound on how much later than the common due time a message was due
    send_s: float

    @property
    def rate(self) -> float:
        """Messages started per second, first start to last: the drain rate of a burst."""
        return self.lateness.samples / max((self.lateness.max_ms - self.first_ms) / 1000, 1e-6)

    def __str__(self) -> str:
        late = self.lateness
        return (
            f"first {self.first_ms:.1f} ms, p50 {late.p50_ms:.1f} ms, p99 {late.p99_ms:.1f} ms, "
            f"last {late.max_ms:.1f} ms after the due time ({self.rate:,.0f} msg/s; sent in "
            f"{self.send_s:.2f}s, due-time skew <= {self.skew_ms:.1f} ms)"
        )


def percentile(sorted_values: list[float], pct: float) -> float:
    # Nearest rank: with 200 samples p99 is the 2nd worst, not an interpolation.
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(seconds: list[float]) -> Percentiles:
    values = sorted(value * 1000 for value in seconds)
    return Percentiles(
        p50_ms=percentile(values, 50),
        p99_ms=percentile(values, 99),
        max_ms=values[-1],
        samples=len(values),
    )


def timed_rate(count: int, action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return count / (time.perf_counter() - started)


def enqueue_single(actor: Actor, count: int) -> float:
    def send_each() -> None:
        for seq in range(count):
            actor.send(seq)

    return timed_rate(count, send_each)


def enqueue_threads(
    actor: Actor,
    count: int,
    threads: int,
    producer: Callable[[], AbstractContextManager[Any]],
    timeout: float = 600.0,
) -> float:
    """`threads` producer threads each send their share one at a time; count / wall time.

    Each thread enters `producer()` (its own client, if the broker needs one) before the
    clock starts and leaves it once every thread is done, so neither is timed.
    """
    shares = [count // threads + (i < count % threads) for i in range(threads)]
    start, done = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def produce(share: int) -> None:
        try:
            with producer():
                start.wait(timeout)
                for seq in range(share):
                    actor.send(seq)
                done.wait(timeout)
        except BaseException as exc:
            errors.append(exc)
            # Nobody waits for a thread that will never arrive.
            start.abort()
            done.abort()

    pool = [threading.Thread(target=produce, args=(share,), daemon=True) for share in shares]
    for thread in pool:
        thread.start()
    elapsed = between_barriers(start, done, timeout)
    for thread in pool:
        thread.join(timeout)
    if errors:
        raise errors[0]
    if elapsed is None:
        raise TimeoutError(f"producers not done in {timeout:.0f}s")
    return count / elapsed


def between_barriers(
    start: threading.Barrier, done: threading.Barrier, timeout: float
) -> float | None:
    """Seconds from `start`'s release to `done`'s, waiting at both; None if one broke."""
    try:
        start.wait(timeout)
        began = time.perf_counter()
        done.wait(timeout)
    except threading.BrokenBarrierError:
        return None
    return time.perf_counter() - began


def burst(
    client: redis.Redis,
    send: Callable[[float], float],
    count: int,
    lead_s: float,
    timeout: float = 120.0,
) -> Burst:
    """`count` messages due at one instant `lead_s` ahead; lateness = start - that instant.

    `send(due_at)` sends them all and returns a bound on their due-time skew. The actors
    report through `samples.BURST`.
    """
    client.delete(samples.BURST)
    sent_at = time.time()
    due_at = sent_at + lead_s
    skew = send(due_at)
    send_s = time.time() - sent_at
    if send_s >= lead_s:
        raise RuntimeError(f"sending took {send_s:.1f}s, longer than the {lead_s:.1f}s lead")
    late = samples.collect(client, samples.BURST, count, lead_s + timeout, stall=lead_s + 30)
    return Burst(
        lateness=summarize(late),
        first_ms=min(late) * 1000,
        skew_ms=skew * 1000,
        send_s=send_s,
    )


def burst_lead_s(count: int) -> float:
    """Time to send `count` messages one at a time on the slowest broker, with a margin.

    RedisBroker sends ~4,000 delayed messages/s on a quiet box, half that on a busy one.
    """
    return 2.0 + count / 1500


def wait_for_completions(
    channel: ch.Channel, worker: WorkerProcess, count: int, timeout: float, stall: float
) -> None:
    deadline = time.monotonic() + timeout
    done, progressed = 0, time.monotonic()
    while done < count:
        now = time.monotonic()
        if channel.done() > done:
            done, progressed = channel.done(), now
        elif now - progressed > stall:
            raise TimeoutError(f"stalled at {done:,}/{count:,} for {stall:.0f}s{worker.why()}")
        if now > deadline:
            raise TimeoutError(f"drained {done:,}/{count:,} in {timeout:.0f}s{worker.why()}")
        if not worker.alive():
            raise WorkerDied(f"worker exited after {done:,}/{count:,}{worker.why()}")
        # Polling granularity does not matter: the window comes from actor timestamps.
        time.sleep(0.02)


def drain(
    channel: ch.Channel, worker: WorkerProcess, count: int, timeout: float, stall: float = 30.0
) -> Drain:
    wait_for_completions(channel, worker, count, timeout, stall)
    window = channel.window()
    assert window.first_start is not None and window.last_end is not None
    active = window.last_end - window.first_start
    return Drain(
        rate=count / active,
        active_s=active,
        wall_s=window.last_end - worker.started,
        boot_s=window.first_start - worker.started,
        processes_seen=window.processes,
    )


def idle_latency(
    channel: ch.Channel, actor: Actor, count: int, gap_ms: float, timeout: float = 10.0
) -> Percentiles:
    """Send one message at a time to an idle worker, waiting for each to start."""
    rng = random.Random(1)
    samples: list[float] = []
    for _ in range(count):
        # A jittered pause lets the worker go idle and avoids phase-locking with pollers.
        time.sleep(gap_ms / 1000 * rng.uniform(0.5, 1.5))
        actor.send(time.time())
        latency = channel.pop(ch.LATENCY, timeout)
        if latency is None:
            raise TimeoutError(f"message {len(samples) + 1} did not start within {timeout:.0f}s")
        samples.append(latency)
    return summarize(samples)


def delay_lateness(
    channel: ch.Channel, actor: Actor, count: int, delay_ms: int, spread_s: float
) -> Percentiles:
    """Send delayed messages spread over `spread_s`; lateness = start - intended due time."""
    for _ in range(count):
        due = time.time() + delay_ms / 1000
        actor.send_with_options(args=(due,), delay=delay_ms)
        time.sleep(spread_s / count)
    samples: list[float] = []
    deadline = time.monotonic() + delay_ms / 1000 + 30
    while len(samples) < count:
        remaining = deadline - time.monotonic()
        value = channel.pop(ch.LATENESS, max(remaining, 0.01)) if remaining > 0 else None
        if value is None:
            raise TimeoutError(f"only {len(samples)}/{count} delayed messages started")
        samples.append(value)
    return summarize(samples)
