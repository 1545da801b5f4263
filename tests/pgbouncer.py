"""A private pgbouncer for the tests: Debian's binary, a generated ini, a free port.

``PgBouncer(binary, server_url, pool_mode=...)`` fronts the server of ``server_url``
(every database on it, with trust authentication) on ``127.0.0.1:<free port>``;
``url(database_url)`` is that URL through the pgbouncer. ``require_pgbouncer`` finds
the binary, or skips the test outside CI (fails it in CI) saying how to install it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import conninfo

from tests.faults.harness import free_port
from tests.support import server_answers, unavailable, wait_until

PGBOUNCER_HOW_TO = "install it with `apt-get install pgbouncer` (Debian's package)"

#: pgbouncer refuses to run as root: it then switches to one of these users.
_UNPRIVILEGED = ("postgres", "nobody")


def require_pgbouncer() -> str:
    """The pgbouncer binary; outside CI a missing one skips the test, in CI it fails it."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found:
        return found
    unavailable("pgbouncer", f"pgbouncer is not installed: {PGBOUNCER_HOW_TO}")


class PgBouncer:
    """A pgbouncer in ``pool_mode`` (session or transaction) in front of ``server_url``'s server.

    It opens at most ``server_connections`` connections to the server per database and
    user; clients beyond that wait in pgbouncer for one to come free.
    """

    def __init__(
        self,
        binary: str,
        server_url: str,
        *,
        pool_mode: str,
        server_connections: int,
    ) -> None:
        self.binary = binary
        # Not under pytest's tmp_path: its parents are closed to the user pgbouncer runs as.
        self.directory = Path(tempfile.mkdtemp(prefix="zart-pgbouncer-"))
        self.pool_mode = pool_mode
        self.port = free_port()
        self.server = conninfo.conninfo_to_dict(server_url)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.directory / "pgbouncer.log"
        self.user = self._run_as()
        self._write_config(server_connections)

    def __repr__(self) -> str:
        return f"PgBouncer(127.0.0.1:{self.port}, pool_mode={self.pool_mode})"

    def url(self, database_url: str) -> str:
        """``database_url`` (same user and database) through this pgbouncer."""
        return conninfo.make_conninfo(database_url, host="127.0.0.1", port=self.port)

    def clients(self, database_url: str) -> list[str]:
        """The application names of this pgbouncer's clients (its admin console's SHOW CLIENTS)."""
        admin = conninfo.make_conninfo(self.url(database_url), dbname="pgbouncer")
        # The admin console speaks only the simple query protocol: a ClientCursor's.
        with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute("SHOW CLIENTS")
            assert cursor.description is not None
            column = [c.name for c in cursor.description].index("application_name")
            return [row[column] for row in cursor.fetchall()]

    def start(self) -> None:
        """Start it and wait until it listens."""
        self.process = subprocess.Popen(
            [self.binary, str(self.directory / "pgbouncer.ini")],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: (
                self.process is not None
                and (self.process.poll() is not None or server_answers("127.0.0.1", self.port))
            ),
            message=f"{self} to listen",
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"{self} exited at start:\n{self.log_text()}")

    def close(self) -> None:
        """Shut down at once (closing every client and server connection); remove its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        for name in _UNPRIVILEGED:
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                os.chown(self.directory, entry.pw_uid, entry.pw_gid)
                return name
        raise RuntimeError(f"pgbouncer refuses to run as root and none of {_UNPRIVILEGED} exists")

    def _write_config(self, server_connections: int) -> None:
        host = self.server.get("host") or "127.0.0.1"
        port = self.server.get("port") or "5432"
        password = self.server.get("password")
        target = f"host={host} port={port}" + (f" password={password}" if password else "")
        user = self.server.get("user") or "postgres"
        (self.directory / "users.txt").write_text(f'"{user}" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.directory / "users.txt"),
            "pool_mode": self.pool_mode,
            "default_pool_size": str(server_connections),
            "max_client_conn": "500",
            "logfile": str(self.log),
            "pidfile": str(self.directory / "pgbouncer.pid"),
            "admin_users": user,
            **({"user": self.user} if self.user else {}),
        }
        lines = ["[databases]", f"* = {target}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        (self.directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in self.directory.iterdir():
                os.chown(path, entry.pw_uid, entry.pw_gid)
