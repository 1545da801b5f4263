"""Benchmark broker_pg's PostgresBroker side by side with Dramatiq's other brokers.

Run from the repository root:

    .venv/bin/python -m benchmarks.brokers [--count N] [--only a,b] [--skip a,b] [--json out.json]

Brokers: postgres, rabbitmq, redis, dramatiq-pg, stub; with --parked N, postgres again with
N parked rows in its queue; and pgbench's commit ceiling. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):
    # Run as a file (python benchmarks/brokers.py): make `benchmarks` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import measure, samples
from benchmarks.apps.actors import BenchActors, declare_actors
from benchmarks.apps.factories import setting
from benchmarks.channel import Channel, channel_url
from benchmarks.options import comma_separated, non_negative_int
from benchmarks.pg_spend import commit_ceiling
from benchmarks.report import PG, BrokerResult, Pgbench, render, write_json
from benchmarks.targets import (
    ALL_TARGETS,
    ParkedPostgresTarget,
    Settings,
    Target,
    Unavailable,
    short,
    sql,
)
from benchmarks.workers import exit_on_termination_signals

T = TypeVar("T")
NAMES = [t.name for t in ALL_TARGETS]


names = comma_separated(NAMES, "broker(s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages for enqueue/drain")
    parser.add_argument("--only", type=names, help=f"comma-separated subset of {NAMES}")
    parser.add_argument("--skip", type=names, default=[], help="comma-separated brokers to skip")
    parser.add_argument("--json", type=Path, help="also write machine-readable results here")
    parser.add_argument("--processes", type=int, default=2, help="dramatiq --processes")
    parser.add_argument("--threads", type=int, default=8, help="dramatiq --threads")
    parser.add_argument("--latency-count", type=int, default=200)
    parser.add_argument(
        "--latency-gap-ms", type=float, default=20.0, help="mean idle pause before each send"
    )
    parser.add_argument("--delay-count", type=int, default=100)
    parser.add_argument("--delay-ms", type=int, default=1000)
    parser.add_argument("--delay-spread-s", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument(
        "--send-threads", type=int, default=8, help="producer threads of `enq threads`"
    )
    parser.add_argument(
        "--burst",
        type=non_negative_int,
        default=10_000,
        help="messages due at one instant (0: skip the burst)",
    )
    parser.add_argument(
        "--parked",
        type=non_negative_int,
        default=0,
        help="rows parked in postgres's queue for a second pass postgres+parked (0: no pass)",
    )
    parser.add_argument(
        "--pgbench-seconds",
        type=float,
        default=5.0,
        help="per pgbench commit-ceiling run, with postgres (0: skip)",
    )
    parser.add_argument(
        "--dramatiq-pg-backlog",
        type=int,
        default=5000,
        help="cap on dramatiq-pg's drain backlog (0: no cap); see README",
    )
    parser.add_argument("--pg-url", help="PostgreSQL URL (broker_pg and dramatiq-pg)")
    parser.add_argument("--pg-schema", help="schema for broker_pg (default zart_bench)")
    parser.add_argument("--redis-url", help="Redis URL of the RedisBroker")
    parser.add_argument("--amqp-url", help="RabbitMQ URL")
    parser.add_argument("--channel-url", help="Redis URL of the measurement channel")
    return parser.parse_args(argv)


def export_settings(args: argparse.Namespace) -> None:
    # Environment, not arguments: the worker subprocesses read the same variables.
    flags = {
        "ZBENCH_PG_URL": args.pg_url,
        "ZBENCH_PG_SCHEMA": args.pg_schema,
        "ZBENCH_REDIS_URL": args.redis_url,
        "ZBENCH_AMQP_URL": args.amqp_url,
        "ZBENCH_CHANNEL_URL": args.channel_url,
    }
    os.environ.update({key: value for key, value in flags.items() if value})


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        count=args.count,
        processes=args.processes,
        threads=args.threads,
        latency_count=args.latency_count,
        latency_gap_ms=args.latency_gap_ms,
        delay_count=args.delay_count,
        delay_ms=args.delay_ms,
        delay_spread_s=args.delay_spread_s,
        drain_timeout=args.drain_timeout,
        dramatiq_pg_backlog=args.dramatiq_pg_backlog,
        send_threads=args.send_threads,
        burst=args.burst,
    )


def selected(only: list[str] | None, skip: list[str], parked: int) -> list[Target]:
    """The chosen targets; with `parked`, postgres's second pass right after postgres."""
    chosen: list[Target] = []
    for t in ALL_TARGETS:
        if (only is None or t.name in only) and t.name not in skip:
            chosen.append(t)
            if t.name == PG and parked:
                chosen.append(ParkedPostgresTarget(parked))
    return chosen


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(target: Target, message: str) -> None:
    log(f"{target.name}: {message}")


def attempt(result: BrokerResult, metric: str, action: Callable[[], T]) -> T | None:
    """Run one measurement; a failure is recorded against that metric, not fatal."""
    try:
        value = action()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        result.errors[metric] = short(exc, limit=400)
        print(f"    {metric} failed: {result.errors[metric]}", file=sys.stderr, flush=True)
        return None
    if value is not None:
        shown = f"{value:,.0f} msg/s" if isinstance(value, float) else str(value)
        print(f"    {metric}: {shown}", file=sys.stderr, flush=True)
    return value


def run_drain(target: Target, broker: Any, settings: Settings, channel: Channel) -> measure.Drain:
    with target.drain_worker(settings) as worker:
        drained = measure.drain(
            channel, worker, target.drain_count(settings), settings.drain_timeout
        )
        # Not timed: only checks that acks landed and nothing is left queued or claimed.
        target.join(broker, timeout_ms=60_000)
    return drained


def run_idle(
    target: Target,
    broker: Any,
    actors: BenchActors,
    settings: Settings,
    channel: Channel,
    result: BrokerResult,
) -> None:
    with target.idle_worker(broker, settings):
        # Let every consumer finish its start-up and sit in its idle wait.
        time.sleep(1.0)
        progress(target, f"idle latency, {settings.latency_count} sends")
        result.latency = attempt(
            result,
            "latency",
            lambda: measure.idle_latency(
                channel, actors.stamp, settings.latency_count, settings.latency_gap_ms
            ),
        )
        progress(target, f"delay lateness, {settings.delay_count} x {settings.delay_ms} ms")
        result.lateness = attempt(
            result,
            "lateness",
            lambda: measure.delay_lateness(
                channel,
                actors.late,
                settings.delay_count,
                settings.delay_ms,
                settings.delay_spread_s,
            ),
        )
        if settings.burst:
            run_burst(target, broker, actors, settings, channel, result)


def run_burst(
    target: Target,
    broker: Any,
    actors: BenchActors,
    settings: Settings,
    channel: Channel,
    result: BrokerResult,
) -> None:
    count, lead = settings.burst, measure.burst_lead_s(settings.burst)
    progress(target, f"burst: {count} messages due at one instant {lead:.1f}s ahead")
    result.burst = attempt(
        result,
        "burst",
        lambda: measure.burst(
            channel.client,
            lambda due_at: target.send_burst(broker, actors.burst, due_at, count),
            count,
            lead,
        ),
    )


def with_retries(action: Callable[[], None], attempts: int = 10, pause: float = 1.0) -> None:
    """Retry housekeeping that may briefly fail, e.g. while a killed worker's sessions end."""
    for remaining in range(attempts - 1, -1, -1):
        try:
            return action()
        except Exception:
            if not remaining:
                raise
            time.sleep(pause)


def fill_backlog(
    target: Target, broker: Any, actors: BenchActors, settings: Settings, bulk_failed: bool
) -> None:
    """Leave exactly `drain_count` no-op messages queued for the drain."""
    wanted = target.drain_count(settings)
    if not target.keeps_backlog:
        target.flush(broker)
    elif bulk_failed or wanted != settings.count:
        # Unknown or wrong-sized backlog: start over (untimed, so any enqueue path will do).
        target.flush(broker)
        for seq in range(wanted):
            actors.noop.send(seq)


def measure_target(
    target: Target,
    broker: Any,
    actors: BenchActors,
    settings: Settings,
    channel: Channel,
    result: BrokerResult,
) -> None:
    count = settings.count
    target.setup(broker, actors, lambda message: progress(target, message))
    target.flush(broker)
    channel.reset()

    progress(target, f"enqueue {count} one send() at a time")
    result.enqueue_single = attempt(
        result, "enqueue_single", lambda: measure.enqueue_single(actors.noop, count)
    )
    target.flush(broker)

    threads = settings.send_threads
    progress(target, f"enqueue {count} from {threads} threads, one send() at a time each")
    result.enqueue_threads = attempt(
        result,
        "enqueue_threads",
        lambda: measure.enqueue_threads(
            actors.noop, count, threads, lambda: target.producer(broker)
        ),
    )
    target.flush(broker)

    progress(target, f"enqueue {count} in bulk")
    result.enqueue_bulk = attempt(
        result,
        "enqueue_bulk",
        lambda: measure.timed_rate(count, lambda: target.bulk_enqueue(broker, actors.noop, count)),
    )
    fill_backlog(target, broker, actors, settings, result.enqueue_bulk is None)

    progress(target, f"drain {target.drain_count(settings)} with a fresh worker")
    channel.reset()
    result.drain = attempt(result, "drain", lambda: run_drain(target, broker, settings, channel))
    # A failed drain may leave messages behind; the idle tests need an empty queue.
    with_retries(lambda: target.flush(broker))
    channel.reset()

    progress(target, "start worker for the idle tests")
    attempt(
        result, "idle_worker", lambda: run_idle(target, broker, actors, settings, channel, result)
    )


def bench(target: Target, settings: Settings, channel: Channel) -> BrokerResult:
    result = BrokerResult(target.name, target.label, target.baseline)
    progress(target, "connecting")
    try:
        broker = target.connect()
    except Unavailable as exc:
        result.unavailable = str(exc)
        progress(target, f"n/a ({exc})")
        return result
    try:
        actors = declare_actors(broker)
        measure_target(target, broker, actors, settings, channel, result)
    except Exception as exc:
        # An unexpected failure ends this broker's turn, not the whole run.
        result.errors["aborted"] = short(exc, limit=400)
    finally:
        # Never leave a queue full, whatever happened above.
        attempt(result, "cleanup", lambda: with_retries(lambda: target.flush(broker)))
        attempt(result, "teardown", lambda: target.teardown(broker))
        channel.reset()
        channel.client.delete(samples.BURST)
        attempt(result, "close", lambda: target.close(broker))
    return result


PGBENCH_CLIENTS = (1, 8)


def bench_pgbench(seconds: float) -> Pgbench:
    """The server's commit ceiling, on a scratch table of the benchmark database."""
    result = Pgbench(seconds)
    try:
        for clients in PGBENCH_CLIENTS:
            log(f"pgbench -c {clients}, {seconds:g} s")
            result.ceilings.append(commit_ceiling(setting("ZBENCH_PG_URL"), clients, seconds))
    except Exception as exc:
        result.unavailable = short(exc, limit=200)
    finally:
        with suppress(Exception):
            sql("DROP TABLE IF EXISTS zbench_commit")
    return result


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def meta(settings: Settings, targets: list[Target], load: tuple[float, float]) -> dict[str, Any]:
    return {
        "load_average_1min": {"start": load[0], "end": load[1]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings.__dict__,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            n: package_version(n) for n in ("dramatiq", "redis", "pika", "dramatiq-pg", "psycopg")
        },
        "notes": notes(settings, targets, load),
    }


def load_note(before: float, after: float) -> str:
    # Other work on a 2-CPU machine moves every number; say how busy it was. Only the
    # load at start tells about others: the one at end includes this benchmark's workers.
    busy = before > 0.5 * (os.cpu_count() or 1)
    verdict = "busy before the run: numbers are noisy" if busy else "quiet before the run"
    return f"1-min load average {before:.2f} at start ({verdict}), {after:.2f} at end"


def notes(settings: Settings, targets: list[Target], load: tuple[float, float]) -> list[str]:
    lines = [
        load_note(*load),
        f"workers: dramatiq --processes {settings.processes} --threads {settings.threads}, "
        f"default middleware, on {os.cpu_count()} CPUs shared with the servers and this driver",
        "drain msg/s = count / (last actor end - first actor start): worker boot excluded; "
        "drain wall s and boot s are measured from worker spawn",
        f"idle latency: {settings.latency_count} sends, one at a time, "
        f"~{settings.latency_gap_ms:g} ms idle before each",
        "bulk enqueue: group(...).run() for peers (one enqueue per message underneath), "
        "broker.batch() for PostgresBroker",
        f"enq threads: {settings.send_threads} producer threads, each sending "
        f"{settings.count // settings.send_threads:,} one at a time (RabbitmqBroker: a "
        "connection per thread, opened before the clock starts; publishes without "
        "confirms, Dramatiq's default)",
    ]
    if settings.burst:
        lines.append(
            f"burst: {settings.burst:,} messages with delays that make them all due at one "
            f"instant T, {measure.burst_lead_s(settings.burst):.1f}s after the first send "
            "to the idle worker; first/p50/p99/last "
            "= actor start - T; due skew = bound on how late after T a message was due "
            "(the longest send, or batch, between computing a delay and the due time "
            "being fixed)"
        )
    lines += [t.note(settings) for t in targets if t.note(settings)]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    export_settings(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Client libraries log every refused connection; the n/a row already says it once.
    for noisy in ("pika", "psycopg.pool", "dramatiq_pg"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    exit_on_termination_signals()
    settings = settings_from(args)
    targets = selected(args.only, args.skip, args.parked)
    channel = Channel()
    try:
        channel.ping()
    except Exception as exc:
        print(f"measurement channel {channel_url()} unreachable: {short(exc)}", file=sys.stderr)
        return 2

    load_before = os.getloadavg()[0]
    with_pg = any(t.name == PG for t in targets) and args.pgbench_seconds > 0
    pgbench = bench_pgbench(args.pgbench_seconds) if with_pg else None
    results = [bench(target, settings, channel) for target in targets]
    load = (load_before, os.getloadavg()[0])
    print(render(results, pgbench, notes(settings, targets, load)))
    if args.json:
        write_json(args.json, meta(settings, targets, load), results, pgbench)
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
