"""The embedded PostgreSQL: one data directory per user, said when started, stopped by the CLI."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from broker_pg import ConfigurationError, embedded, resolve_url
from tests.support import Cli, wait_until


@pytest.fixture
def pgdata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throwaway data directory (through ZART_EMBEDDED_PGDATA), its server stopped at the end."""
    path = tmp_path / "pgdata"
    monkeypatch.setenv(embedded.DATA_DIR_ENV, str(path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ZART_SCHEMA", raising=False)
    yield path
    embedded.stop(path)


def test_the_data_directory_is_the_same_wherever_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(embedded.DATA_DIR_ENV, raising=False)
    seen = set()
    for name in ("project", "elsewhere"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        seen.add(embedded.data_dir())
    [path] = seen
    assert path.is_absolute()
    assert tmp_path not in path.parents


def test_started_once_with_a_word_on_stderr_then_status_and_stop(
    pgdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(capsys)  # no --url and no DATABASE_URL: the embedded server
    down = cli("embedded", "status")
    assert (down.code, down.err) == (3, "")
    assert down.out == f"the embedded PostgreSQL is not running; its data directory is {pgdata}\n"

    started = cli("migrate")
    assert started.code == 0, started
    assert "applied 0001_broker" in started.out
    # One line on stderr: where the data lives and how to stop it.
    assert started.err.count("\n") == 1
    assert str(pgdata) in started.err
    assert "Stop it with: zart-dramatiq embedded stop" in started.err
    # Already running: nothing more is said.
    assert cli.ok("migrate") == "schema 'zart' is up to date\n"

    status = cli.ok("embedded", "status")
    match = re.search(r"running \(pid (\d+)\).*\nurl: (\S+)\n", status)
    assert match is not None, status
    pid, url = int(match[1]), match[2]
    psycopg.connect(url).close()

    stopped = cli.ok("embedded", "stop")
    assert stopped == f"stopped the embedded PostgreSQL (pid {pid}); its data stays in {pgdata}\n"
    wait_until(lambda: not psutil.pid_exists(pid), message=f"postgres (pid {pid}) to exit")
    assert cli("embedded", "status").code == 3
    assert "not running" in cli.ok("embedded", "stop")
    assert (pgdata / "PG_VERSION").exists()


def test_without_pgserver_the_error_says_how_to_configure_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(embedded.DATA_DIR_ENV, str(tmp_path / "pgdata"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setitem(sys.modules, "pgserver", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match=r"set DATABASE_URL.*\[embedded\]"):
        resolve_url()
    assert "pip install 'zart-dramatiq[embedded]'" in Cli(capsys).fails("embedded", "status")
