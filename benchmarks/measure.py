"""The four measurements. Each returns plain numbers; the driver decides what to do with them."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from dramatiq import Actor

from benchmarks import channel as ch
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
