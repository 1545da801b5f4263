"""Durable values: evaluated on an execution's first run, replayed on every later one.

Code outside steps runs again at every replay, so anything that differs from
one run to the next (the time, a random id, a read of the environment) must be
taken once and recorded. ``now``, ``uuid`` and ``capture`` do that; each is a
step whose function cannot change under a running execution.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from .steps import step

T = TypeVar("T")


def now(name: str) -> datetime:
    """The current time (UTC), the same on every replay of this execution."""
    return step(name, _utc_now)


def uuid(name: str) -> UUID:
    """A random UUID, the same on every replay of this execution."""
    return step(name, _random_uuid)


def capture(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, called on the first run and replayed after.

    For a value that is not an effect (a random draw, a setting read from the
    environment): like ``zart.step``, typed by ``fn``'s return annotation.
    """
    return step(name, fn, *args, **kwargs)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _random_uuid() -> UUID:
    return uuid4()
