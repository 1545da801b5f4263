"""Fixtures of the fault suite: a PostgreSQL server of its own, and a fault lab per test.

The own server runs pgserver's bundled PostgreSQL binaries (or Debian's, see
``harness.postgres_binaries``) on ``127.0.0.1:<free port>`` in a temporary directory; tests
restart it, stop it and cut its sessions. The shared test server only holds the effects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FaultLab, OwnPostgres, new_own_postgres


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server for this session alone, which tests may restart and stop."""
    server = new_own_postgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def make_lab(
    own_postgres: OwnPostgres, database_url: str, tmp_path: Path
) -> Iterator[Callable[..., FaultLab]]:
    """Build fault labs (options: lease_timeout, step_ms, time_limit_ms); closed at the end."""
    made: list[FaultLab] = []

    def make(**options: Any) -> FaultLab:
        lab = FaultLab(own_postgres, database_url, tmp_path / f"lab{len(made)}", **options)
        made.append(lab)
        return lab

    yield make
    for lab in made:
        lab.close()


@pytest.fixture
def lab(make_lab: Callable[..., FaultLab]) -> FaultLab:
    """A fault lab with the defaults: 3 s lease, steps of 20-100 ms."""
    return make_lab()
