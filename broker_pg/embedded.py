"""The embedded PostgreSQL: one pgserver instance per user, for running without DATABASE_URL.

Its data lives in one per-user directory (``$ZART_EMBEDDED_PGDATA`` overrides
it), so every process of the user finds the same server wherever it runs. The
server keeps running after the process that started it exits, for the worker
processes that follow; ``zart-dramatiq embedded stop`` stops it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dramatiq.errors import BrokerError

from .errors import ConfigurationError

#: Overrides where the embedded server keeps its data.
DATA_DIR_ENV = "ZART_EMBEDDED_PGDATA"
#: The per-user application directory that holds ``pgdata``.
APP_NAME = "zart-dramatiq"
#: pgserver runs the server as this system user when started by root (PostgreSQL refuses root).
ROOT_SERVER_USER = "pgserver"


class NotInstalled(ConfigurationError):
    """The ``embedded`` extra (pgserver) is not installed."""


class EmbeddedServerError(BrokerError):
    """pg_ctl failed on the embedded server; the message says where its log is."""


@dataclass(frozen=True)
class Running:
    """A running embedded server."""

    pid: int
    url: str


def data_dir() -> Path:
    """Where the embedded server keeps its data: ``$ZART_EMBEDDED_PGDATA``, else a per-user one."""
    if override := os.environ.get(DATA_DIR_ENV):
        return Path(override).expanduser().resolve()
    platformdirs = _require("platformdirs")
    return Path(platformdirs.user_data_dir(APP_NAME)) / "pgdata"


def url() -> str:
    """The URL of the embedded server, started first (and said so on stderr) if it is down."""
    pgserver = _require("pgserver")
    pgdata = data_dir()
    was_down = running(pgdata) is None
    pgdata.mkdir(parents=True, exist_ok=True)
    with _quiet_platformdirs():
        # cleanup_mode=None leaves the server running for the worker processes that follow.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    if was_down:
        print(
            f"{APP_NAME}: started an embedded PostgreSQL with its data in {pgdata}; it keeps "
            f"running for the processes that follow. Stop it with: {APP_NAME} embedded stop",
            file=sys.stderr,
        )
    return str(server.get_uri())


def running(pgdata: Path) -> Running | None:
    """The server running on ``pgdata``, or None."""
    info = _require("pgserver").utils.PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    return Running(pid=info.pid, url=info.get_uri())


def stop(pgdata: Path) -> Running | None:
    """Stop the server running on ``pgdata`` and return what it was, or None if it was down.

    pg_ctl's fast shutdown: open sessions (workers) are disconnected, the data is kept.
    """
    server = running(pgdata)
    if server is None:
        return None
    pgserver = _require("pgserver")
    user = ROOT_SERVER_USER if os.name == "posix" and os.geteuid() == 0 else None
    try:
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError as e:
        raise EmbeddedServerError(
            f"pg_ctl could not stop the embedded PostgreSQL (pid {server.pid}, exit status "
            f"{e.returncode}); see its log in {pgdata / 'log'}"
        ) from e
    return server


def _require(module: str) -> Any:
    try:
        with _quiet_platformdirs():
            return importlib.import_module(module)
    except ImportError:
        raise NotInstalled(
            "The embedded PostgreSQL needs the pgserver package: "
            "pip install 'zart-dramatiq[embedded]'"
        ) from None


@contextmanager
def _quiet_platformdirs() -> Iterator[None]:
    # platformdirs warns about a missing XDG_RUNTIME_DIR; pgserver copes.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="platformdirs")
        yield
