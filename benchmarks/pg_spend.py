"""What a benchmark database costs its PostgreSQL server: commits, WAL, rows; and the
server's commit ceiling, measured with pgbench.

Everything here is read from the server's own statistics, so it needs no extension
preloaded: ``pg_stat_database`` for commits, ``pg_stat_user_tables`` for rows, and
``pg_walinspect`` (a contrib extension created in the benchmark database, which is
dropped afterwards) to attribute WAL records to that database while other databases
of the same server write their own.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

#: Rows written per table: inserts, updates (of which HOT), deletes.
TableWrites = dict[str, tuple[int, int, int, int]]


def settle_stats() -> None:
    # Exiting backends flush their statistics at once; give them a moment to exit.
    time.sleep(0.5)


def xact_commits(admin_url: str, name: str) -> int:
    """Committed transactions of database `name`, read from another database.

    Backends publish their counts when idle (at most once a second) or when they exit,
    so callers close their connections to `name` and wait a moment before reading.
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None, f"no statistics for database {name}"
    return int(row[0])


def flushed_lsn(admin_url: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


@dataclass(frozen=True)
class Wal:
    """WAL written between two points, in bytes."""

    server_bytes: int  # the whole server's, other databases' sessions included
    #: The benchmark database's own records (pg_walinspect): those that touch its
    #: blocks, and the commit records of the transactions that did. None if unreadable.
    bytes: int | None = None
    fpi_bytes: int | None = None  # full-page images among them (first change after a checkpoint)
    records: int | None = None
    by_kind: dict[str, int] = field(default_factory=dict)  # bytes per resource manager


# Records of one database: those with a block of it (blkref "rel <tablespace>/<db>/<rel>"),
# plus the commit records of the transactions that wrote such blocks.
_WAL_OF_DATABASE = """
WITH r AS MATERIALIZED (
    SELECT resource_manager, record_length, fpi_length, xid, block_ref
      FROM pg_get_wal_records_info(%(start)s::pg_lsn,
                                   least(%(end)s::pg_lsn, pg_current_wal_flush_lsn()))
), mine AS (
    SELECT DISTINCT xid FROM r WHERE xid <> '0' AND block_ref LIKE %(pattern)s
)
SELECT resource_manager, count(*), sum(record_length), sum(fpi_length)
  FROM r
 WHERE block_ref LIKE %(pattern)s OR xid IN (SELECT xid FROM mine)
 GROUP BY resource_manager
"""


def wal_between(url: str, start: str, end: str) -> Wal:
    """WAL from `start` to `end`; the database's own share if pg_walinspect can read it."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT %s::pg_lsn - %s::pg_lsn, oid FROM pg_database"
            " WHERE datname = current_database()",
            (end, start),
        ).fetchone()
        assert row is not None
        server, oid = int(row[0]), int(row[1])
        try:
            rows = conn.execute(
                _WAL_OF_DATABASE, {"start": start, "end": end, "pattern": f"%/{oid}/%"}
            ).fetchall()
        except psycopg.Error:
            # No pg_walinspect, or the segments were recycled by a checkpoint meanwhile.
            return Wal(server)
    by_kind = {str(kind): int(size) for kind, _, size, _ in rows}
    return Wal(
        server,
        bytes=sum(by_kind.values()),
        fpi_bytes=sum(int(fpi) for *_, fpi in rows),
        records=sum(int(count) for _, count, _, _ in rows),
        by_kind=dict(sorted(by_kind.items(), key=lambda item: -item[1])),
    )


def table_writes(url: str, schema: str) -> TableWrites:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del"
            "  FROM pg_stat_user_tables WHERE schemaname = %s",
            (schema,),
        ).fetchall()
    return {str(name): (int(i), int(u), int(h), int(d)) for name, i, u, h, d in rows}


@dataclass(frozen=True)
class Spend:
    """What the benchmark database cost the server during one measured run."""

    commits: int
    wal: Wal
    rows: TableWrites  # deltas

    def rows_line(self, per: int) -> str:
        """Rows written per `per` units of work, table by table: `steps 10 ins`..."""
        parts = []
        for table, (ins, upd, hot, deleted) in sorted(self.rows.items()):
            cells = [f"{ins / per:.3g} ins"] if ins else []
            cells += [f"{upd / per:.3g} upd ({hot / upd:.0%} HOT)"] if upd else []
            cells += [f"{deleted / per:.3g} del"] if deleted else []
            if cells:
                parts.append(f"{table} " + " + ".join(cells))
        return ", ".join(parts) or "-"


class SpendMeter:
    """Commits, WAL and rows of one database between `begin()` and `end()`.

    The caller closes its own connections to the database before `begin()`, and
    tells `end()` how many commits its own polling cost in between.
    """

    def __init__(self, admin_url: str, url: str, database: str, schema: str) -> None:
        self.admin_url, self.url, self.database, self.schema = admin_url, url, database, schema
        # Without it, only the server-wide WAL figure.
        with psycopg.connect(url, autocommit=True) as conn, suppress(psycopg.Error):
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        self.rows0: TableWrites = {}
        self.commits0 = 0
        self.lsn0 = ""

    def begin(self) -> None:
        self.rows0 = table_writes(self.url, self.schema)
        settle_stats()
        self.commits0 = xact_commits(self.admin_url, self.database)
        self.lsn0 = flushed_lsn(self.admin_url)

    def end(self, own_commits: int) -> Spend:
        lsn1 = flushed_lsn(self.admin_url)
        settle_stats()
        commits = xact_commits(self.admin_url, self.database) - self.commits0 - own_commits
        rows1 = table_writes(self.url, self.schema)
        rows = {table: _minus(after, self.rows0.get(table)) for table, after in rows1.items()}
        return Spend(commits, wal_between(self.url, self.lsn0, lsn1), rows)


def _minus(
    after: tuple[int, int, int, int], before: tuple[int, int, int, int] | None
) -> tuple[int, int, int, int]:
    b = before or (0, 0, 0, 0)
    return (after[0] - b[0], after[1] - b[1], after[2] - b[2], after[3] - b[3])


# -- The commit ceiling ----------------------------------------------------------------


@dataclass(frozen=True)
class CommitCeiling:
    """pgbench, one single-row INSERT per transaction, `clients` sessions."""

    clients: int
    commits_per_s: float
    latency_ms: float  # average per transaction, as each client sees it


def pgbench_path() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    # Debian keeps it out of PATH when only the server package is installed.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), key=_version, reverse=True)
    return candidates[0] if candidates else None


def _version(path: str) -> float:
    match = re.search(r"/postgresql/([\d.]+)/", path)
    return float(match[1]) if match else 0.0


def commit_ceiling(url: str, clients: int, seconds: float) -> CommitCeiling:
    """Commits/s of one-INSERT transactions against a scratch table of database `url`."""
    pgbench = pgbench_path()
    if pgbench is None:
        raise RuntimeError("pgbench not found (Debian: apt-get install postgresql-client)")
    with psycopg.connect(url, autocommit=True) as conn:
        # Like a checkpoint row: a bigint key with its index, a small payload.
        conn.execute(
            "CREATE TABLE IF NOT EXISTS zbench_commit"
            " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, client int NOT NULL)"
        )
    with tempfile.TemporaryDirectory(prefix="zbench-pgbench-") as tmp:
        script = Path(tmp, "insert.sql")
        script.write_text("INSERT INTO zbench_commit (client) VALUES (:client_id);\n")
        threads = max(1, min(clients, os.cpu_count() or 1))
        argv = [pgbench, "-n", "-c", str(clients), "-j", str(threads), "-T", str(round(seconds))]
        done = subprocess.run(
            [*argv, "-f", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"pgbench exited with {done.returncode}: {done.stderr.strip()[-200:]}")
    tps = re.search(r"^tps = ([\d.]+)", done.stdout, re.MULTILINE)
    latency = re.search(r"^latency average = ([\d.]+) ms", done.stdout, re.MULTILINE)
    if tps is None or latency is None:
        raise RuntimeError(f"unexpected pgbench output: {done.stdout.strip()[-200:]}")
    return CommitCeiling(clients, float(tps[1]), float(latency[1]))
