"""The benchmark actors, declared identically on every broker under test."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import dramatiq
from dramatiq import Actor, Broker

from benchmarks import channel, samples

QUEUE = "zbench"

# Created at import, connected on first use: in `dramatiq` worker processes the import
# happens after the fork, so each process gets its own connection pool.
_client = channel.connect()
_tally = channel.Tally(_client)
_bursts = samples.SampleBuffer(_client, samples.BURST)


def noop(seq: int) -> None:
    started = time.time()
    # Deliberately no work: the drain measures the broker and Dramatiq's worker only.
    _tally.hit(started, time.time())


def stamp(sent_at: float) -> None:
    # The clock is read first so the Redis round trip below is not part of the latency.
    channel.push(_client, channel.LATENCY, time.time() - sent_at)


def late(due_at: float) -> None:
    channel.push(_client, channel.LATENESS, time.time() - due_at)


def burst(due_at: float) -> None:
    # Thousands start at once: buffered, so no start waits on a Redis round trip.
    _bursts.add(time.time() - due_at)


@dataclass(frozen=True)
class BenchActors:
    noop: Actor
    stamp: Actor
    late: Actor
    burst: Actor


def declare_actors(broker: Broker) -> BenchActors:
    """Declare the four actors on `broker`; names and options are the same for all brokers."""

    def declare(fn: Callable[..., None]) -> Actor:
        name = f"zbench_{fn.__name__}"
        return dramatiq.actor(broker=broker, actor_name=name, queue_name=QUEUE)(fn)

    return BenchActors(
        noop=declare(noop), stamp=declare(stamp), late=declare(late), burst=declare(burst)
    )
