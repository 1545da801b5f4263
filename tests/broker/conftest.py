"""Helpers for the broker tests: brokers and workers built to order, and waiting on conditions."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Worker
from psycopg import sql

from broker_pg import PostgresBroker


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 10.0, message: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {message}")
        time.sleep(0.01)


def scalar(conn: psycopg.Connection, schema: str, query: str, *params: Any) -> Any:
    """Run ``query`` with ``{s}`` bound to the test schema; return the first column of its row."""
    row = conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params).fetchone()
    return None if row is None else row[0]


def rows(conn: psycopg.Connection, schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params).fetchall()


def own_tcp_ports() -> list[int]:
    """Local ports of this process's TCP sockets (Linux /proc): its sessions' client ports."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def make_broker(database_url: str, schema: str) -> Iterator[Callable[..., PostgresBroker]]:
    """Build extra brokers on the test schema (each one is a separate worker); closed at the end."""
    made: list[PostgresBroker] = []

    def make(**kwargs: Any) -> PostgresBroker:
        broker = PostgresBroker(database_url, schema=schema, **kwargs)
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        broker.close()


@pytest.fixture
def start_worker(
    broker: PostgresBroker, make_broker: Callable[..., PostgresBroker]
) -> Iterator[Callable[..., Worker]]:
    """Start Dramatiq workers in this process; stopped (before any broker closes) at the end."""
    started: list[Worker] = []

    def start(
        broker: dramatiq.Broker,
        *,
        threads: int = 4,
        timeout: int = 100,
        prefetch: int | None = None,
    ) -> Worker:
        worker = Worker(broker, worker_timeout=timeout, worker_threads=threads)
        if prefetch is not None:
            worker.queue_prefetch = prefetch
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop()
