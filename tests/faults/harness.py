"""The fault suite's machinery: ``tests/faults`` runs it short, ``benchmarks/faults.py`` long.

* ``OwnPostgres``: a PostgreSQL server of the suite's own, in a temporary directory, on
  ``127.0.0.1:<free port>`` (so its URL survives restarts): ``restart``, ``stop``,
  ``start``, ``terminate_backends``. Never the shared server.
* ``FaultLab``: one scenario's world: a freshly migrated schema on the own server (with
  audit triggers: every write of a step row, every message claimed a second time), an
  effects table on the shared test database, ``dramatiq tests.apps.fault_app`` worker
  processes (each logging in as a role of its own, so one can be locked out), a client
  broker that starts executions, and a feeder that keeps one ten-step workflow per worker
  thread in flight.
* Injectors (``restart_postgres``, ``outage``, ``cut_sessions``, ``sigstop``, ``sigkill``)
  each apply one fault while workflows run and return a ``Fault`` with its window and how
  many step runs it may repeat (its in-flight bound: the threads it touched).
* ``run_fault_scenario``, ``run_time_limit_scenario``, ``run_cancel_race``: the scenarios.
  Each ends with ``analyse``, whose ``Report`` says what was lost, re-run or overwritten,
  and how long each fault took to recover from; ``Report.problems()`` lists every broken
  promise in plain words.

What is measured, from the rows alone:

* lost: an execution that did not reach its expected end within the bounded wait (no
  worker is restarted unless the fault killed it);
* duplicates: for each (execution, step), effect rows minus one; allowed only for steps in
  flight at a fault: at most the sum of the faults' in-flight bounds, zero without faults;
* late re-runs: an effect row written more than ``LATE_RERUN_S`` after its step was
  recorded (a completed step run again), except the first step a SIGSTOPped thread started
  on waking up (it was in flight at the fault);
* overwritten: a completed step row whose result or status was later changed (audit
  trigger); a completed execution whose returned tokens differ from its recorded steps;
  a recorded result that is no effect's token;
* redeliveries: messages claimed a second time; none allowed where no worker may be
  presumed lost (a PostgreSQL restart, no fault, TimeLimit, cancel races);
* cancel races: the end is ``cancelled`` when cancel found the execution unfinished, else
  the state it had reached; no status read ever leaves a terminal state;
* no worker that was not killed exits, and no message is dead-lettered (but those of the
  actor that fails on purpose);
* recovery: for each fault, the time from its end until every execution that was running
  at that moment recorded another step or ended.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import zart_dramatiq as zart
from broker_pg import PostgresBroker, migrate
from tests.apps import fault_app
from tests.support import Processes, drop_schema, new_schema_name, wait_until

FAULT_APP = "tests.apps.fault_app"
TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out"})
#: What each actor of the fault app ends in, when nothing cancels it.
EXPECTED_END = {
    "ten_steps": "completed",
    "ten_steps_limited": "completed",
    "ten_steps_failing": "failed",
}
#: An effect this long after its step was recorded is a completed step run again.
LATE_RERUN_S = 1.0
READY_LINE = "Worker process is ready for action."
TIME_LIMIT_LINE = "Time limit exceeded"


class MissingPostgres(RuntimeError):
    """No PostgreSQL binaries to run a server of the suite's own."""


# --- A PostgreSQL server of the suite's own ----------------------------------------------------


def postgres_binaries() -> tuple[Path, str]:
    """Where initdb, pg_ctl and postgres are, and what they are.

    pgserver's bundled binaries first (``pip install 'zart-dramatiq[embedded]'``, part of
    what ``.ci/dev.py`` installs, so a machine with only Python has them), then Debian's
    ``/usr/lib/postgresql/<version>/bin``, then ``pg_config --bindir``.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled, f"pgserver's bundled PostgreSQL ({bundled})"
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(re.sub(r"\D", "", path.parent.parent.name) or 0),
    )
    if debian:
        return debian[-1].parent, f"Debian's PostgreSQL ({debian[-1].parent})"
    if pg_config := shutil.which("pg_config"):
        bindir = Path(
            subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        )
        if (bindir / "pg_ctl").exists():
            return bindir, f"PostgreSQL from pg_config ({bindir})"
    raise MissingPostgres(
        "no PostgreSQL binaries for a server of the fault suite's own: install pgserver "
        "(pip install 'zart-dramatiq[embedded]', which .ci/dev.py does) "
        "or apt-get install postgresql"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: then run it as an unprivileged user.

    ``postgres`` if it exists, else ``pgserver`` (created with useradd, as pgserver itself does).
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "-s", "/bin/sh", "pgserver"], check=True, capture_output=True)
    return "pgserver"


def new_own_postgres() -> OwnPostgres:
    """A new OwnPostgres. Missing binaries fail the test, never skip it: they are no
    external server, and the test command installs pgserver's itself."""
    try:
        return OwnPostgres()
    except MissingPostgres as missing:
        pytest.fail(str(missing), pytrace=False)


class OwnPostgres:
    """A throw-away PostgreSQL server on ``127.0.0.1:<port>``, in a temporary directory.

    Made for faults: ``restart`` (fast), ``stop``/``start`` (an outage), and
    ``terminate_backends`` (cut sessions by application name). ``fsync`` is off: a stop,
    even ``immediate``, kills processes, not the OS (``synchronous_commit`` stays on: off,
    an immediate stop would lose acknowledged commits),
    so nothing committed is lost.
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.bin_dir, self.binaries = postgres_binaries()
        self.user = _server_user()
        self.directory = Path(tempfile.mkdtemp(prefix="zart-faults-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = port or free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __repr__(self) -> str:
        return f"OwnPostgres(127.0.0.1:{self.port}, {self.binaries})"

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [str(self.bin_dir / program), *args],
            cwd=self.directory,
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={key: value for key, value in os.environ.items() if not key.startswith("PG")},
        )
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{tail}"
            )
        return done.stdout

    def init(self) -> None:
        """initdb, with settings for a server that lives a few minutes and is restarted often."""
        if self.user is not None:
            os.chown(self.directory, pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "fsync": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %a: '",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions terminated, transactions rolled back; ``immediate``: a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        done = subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"],
            cwd=self.directory,
            user=self.user,
            capture_output=True,
        )
        return done.returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def worker_role(self, name: str) -> str:
        """A superuser role for worker ``name`` (created once): ``lock_out`` refuses its logins."""
        role = f"fault_{name}"
        with psycopg.connect(self.url, autocommit=True, application_name="fault-harness") as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(role)))
        return role

    def lock_out(self, role: str, locked: bool = True) -> None:
        """Refuse (or allow again) new sessions of ``role``; its open sessions are not touched."""
        with psycopg.connect(self.url, autocommit=True, application_name="fault-harness") as conn:
            login = "NOLOGIN" if locked else "LOGIN"
            conn.execute(sql.SQL("ALTER ROLE {} " + login).format(sql.Identifier(role)))

    def terminate_backends(self, application_name_like: str) -> int:
        """``pg_terminate_backend`` every session whose application_name is LIKE the pattern."""
        with psycopg.connect(self.url, autocommit=True, application_name="fault-harness") as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (application_name_like,),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


# --- Reading the rows ----------------------------------------------------------------------------


class Db:
    """One autocommit connection that reconnects: for polling a server that faults come to."""

    def __init__(self, url: str, application_name: str = "fault-harness") -> None:
        self.url = url
        self.application_name = application_name
        self._conn: psycopg.Connection | None = None

    def rows(self, query: str, *params: Any, schema: str | None = None) -> list[tuple[Any, ...]]:
        statement = sql.SQL(query).format(s=sql.Identifier(schema)) if schema else sql.SQL(query)
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self.url,
                        autocommit=True,
                        connect_timeout=3,
                        application_name=self.application_name,
                    )
                cursor = self._conn.execute(statement, params)
                return cursor.fetchall() if cursor.description is not None else []
            except psycopg.OperationalError:
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def try_rows(
        self, query: str, *params: Any, schema: str | None = None
    ) -> list[tuple[Any, ...]] | None:
        """``rows``, or None while the server is unreachable."""
        try:
            return self.rows(query, *params, schema=schema)
        except psycopg.OperationalError:
            return None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


#: Triggers that log what the checks need to see happen: every write of a step row, and
#: every message claimed a second time. They write in the same transaction as the change.
AUDIT = """
CREATE TABLE {s}.fault_step_audit (
    execution_id text, step_key text, op text,
    old_status text, old_result jsonb, new_status text, new_result jsonb,
    at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION {s}.fault_audit_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.fault_step_audit
           (execution_id, step_key, op, old_status, old_result, new_status, new_result)
    VALUES (NEW.execution_id, NEW.step_key, TG_OP,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.result END,
            NEW.status, NEW.result);
    RETURN NULL;
END $$;
CREATE TRIGGER fault_audit AFTER INSERT OR UPDATE ON {s}.steps
    FOR EACH ROW WHEN (NEW.kind = 'step') EXECUTE FUNCTION {s}.fault_audit_step();

-- A message claimed again (its delivery counter moved past 1): it was handed back or over.
CREATE TABLE {s}.fault_redeliveries (
    message_row bigint, actor_name text, deliveries integer, lease_owner text,
    at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION {s}.fault_audit_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.fault_redeliveries (message_row, actor_name, deliveries, lease_owner)
    VALUES (NEW.id, NEW.actor_name, NEW.deliveries, NEW.lease_owner::text);
    RETURN NULL;
END $$;
CREATE TRIGGER fault_audit_delivery AFTER UPDATE ON {s}.messages
    FOR EACH ROW WHEN (NEW.deliveries > OLD.deliveries AND NEW.deliveries > 1)
    EXECUTE FUNCTION {s}.fault_audit_delivery();
"""


# --- Faults --------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    started: float
    ended: float
    #: How many step runs this fault may repeat: the threads that were running under it.
    in_flight_bound: int
    target: str = ""
    #: Seconds from ``ended`` until every execution running then moved again (None: never did).
    recovery_s: float | None = None
    stuck: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.ended - self.started


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    threads: int
    log: Path
    killed: bool = False


# --- The lab -------------------------------------------------------------------------------------


class FaultLab:
    """One scenario's world on the own server; see the module docstring. Close it at the end."""

    def __init__(
        self,
        server: OwnPostgres,
        effects_url: str,
        logs: Path,
        *,
        lease_timeout: float = 3.0,
        step_ms: tuple[float, float] = (20, 100),
        time_limit_ms: int = 400,
    ) -> None:
        self.server = server
        self.effects_url = effects_url
        self.lease_timeout = lease_timeout
        self.step_ms = step_ms
        self.time_limit_ms = time_limit_ms
        server.ensure_running()
        self.schema = new_schema_name()
        migrate(server.url, schema=self.schema)
        self.db = Db(server.url)
        self.db.rows(AUDIT, schema=self.schema)
        self.effects_schema = new_schema_name()
        with psycopg.connect(effects_url, autocommit=True) as conn:
            fault_app.create_effects_table(conn, self.effects_schema)
        self.effects_db = Db(effects_url)
        self.client = PostgresBroker(
            server.url, schema=self.schema, application_name="fault-client"
        )
        self.actors = fault_app.declare(self.client)
        logs.mkdir(parents=True, exist_ok=True)
        self.processes = Processes(server.url, self.schema, logs)
        self.workers: dict[str, Worker] = {}
        self.retired: list[Worker] = []
        #: Execution id -> its actor, for every execution zart.start returned for.
        self.started: dict[str, str] = {}
        #: Starts that raised (the database went away mid-call): they may exist or not.
        self.uncertain: dict[str, str] = {}
        self.faults: list[Fault] = []
        #: What a scenario observed beyond the figures, for the report.
        self.notes: list[str] = []
        self._serial = 0
        self._lock = threading.Lock()

    # -- Workers --------------------------------------------------------------------------------

    def start_worker(self, name: str, *, threads: int = 4) -> Worker:
        """Start ``dramatiq tests.apps.fault_app`` as worker ``name``.

        It logs in as a role of its own (``fault_<name>``), so a fault can lock it out:
        its sessions are named ``fault-<name>`` and ``fault-<name>-listener``.
        """
        role = self.server.worker_role(name)
        env = {
            "DATABASE_URL": psycopg.conninfo.make_conninfo(self.server.url, user=role),
            "EFFECTS_URL": self.effects_url,
            "EFFECTS_SCHEMA": self.effects_schema,
            "FAULT_WORKER": name,
            "LEASE_TIMEOUT": str(self.lease_timeout),
            "STEP_MS": f"{self.step_ms[0]}-{self.step_ms[1]}",
            "TIME_LIMIT_MS": str(self.time_limit_ms),
        }
        process = self.processes.dramatiq_worker(FAULT_APP, threads=threads, env=env)
        worker = Worker(name, process, threads, self.processes.log_of(process))
        self.workers[name] = worker
        return worker

    def wait_ready(self, *workers: Worker, timeout: float = 60) -> None:
        def ready() -> bool:
            for worker in workers:
                if worker.process.poll() is not None:
                    raise AssertionError(f"worker {worker.name} exited: {self.log_tail(worker)}")
            return all(READY_LINE in worker.log.read_text(errors="replace") for worker in workers)

        wait_until(ready, timeout=timeout, message="the workers to be ready")

    def start_workers(self, count: int, *, threads: int = 4) -> list[Worker]:
        workers = [self.start_worker(f"w{i + 1}", threads=threads) for i in range(count)]
        self.wait_ready(*workers)
        return workers

    @property
    def total_threads(self) -> int:
        return sum(worker.threads for worker in self.workers.values())

    def log_tail(self, worker: Worker, lines: int = 15) -> str:
        return "\n".join(worker.log.read_text(errors="replace").splitlines()[-lines:])

    def log_lines(self, needle: str) -> int:
        logs = [w.log for w in [*self.workers.values(), *self.retired]]
        return sum(log.read_text(errors="replace").count(needle) for log in set(logs))

    def worker_errors(self, limit: int = 8) -> list[str]:
        """The most frequent ERROR/CRITICAL/WARNING log lines of the workers, ids blurred."""
        counts: Counter[str] = Counter()
        for log in {w.log for w in [*self.workers.values(), *self.retired]}:
            for line in log.read_text(errors="replace").splitlines():
                for level in ("[CRITICAL]", "[ERROR]", "[WARNING]"):
                    if level in line:
                        message = line.split(level, 1)[1].strip()
                        message = re.sub(
                            r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{32}|\b\d+\b", "#", message
                        )
                        counts[f"{level} {message[:160]}"] += 1
        return [f"{n} x {line}" for line, n in counts.most_common(limit)]

    # -- Executions -----------------------------------------------------------------------------

    def new_id(self, prefix: str = "x") -> str:
        with self._lock:
            self._serial += 1
            return f"{prefix}{self._serial:05d}"

    def start(self, actor: str, execution_id: str | None = None) -> str | None:
        """Start one execution; None if the database refused (it may still exist: checked later)."""
        execution_id = execution_id or self.new_id()
        try:
            zart.start(self.actors[actor], execution_id, execution_id=execution_id)
        except Exception:
            self.uncertain[execution_id] = actor
            return None
        self.started[execution_id] = actor
        return execution_id

    def status_counts(self) -> Counter[str] | None:
        found = self.db.try_rows(
            "SELECT status, count(*) FROM {s}.executions GROUP BY 1", schema=self.schema
        )
        return None if found is None else Counter({status: n for status, n in found})

    @contextlib.contextmanager
    def feeding(self, actor: str = "ten_steps", *, in_flight: int | None = None) -> Iterator[None]:
        """Keep ``in_flight`` executions (default: one per worker thread) going in the block."""
        target = in_flight or self.total_threads
        stop = threading.Event()

        def feed() -> None:
            while not stop.is_set():
                counts = self.status_counts()
                if counts is not None:
                    active = sum(n for status, n in counts.items() if status not in TERMINAL)
                    for _ in range(max(0, target - active)):
                        if stop.is_set() or self.start(actor) is None:
                            break
                stop.wait(0.05)

        feeder = threading.Thread(target=feed, name="fault-feeder", daemon=True)
        feeder.start()
        try:
            yield
        finally:
            stop.set()
            feeder.join(30)

    def effect_count(self) -> int:
        found = self.effects_db.rows(
            "SELECT count(*) FROM {s}.fault_effects", schema=self.effects_schema
        )
        return int(found[0][0])

    def wait_for_work(self, steps: int | None = None, timeout: float = 60) -> None:
        """Wait until ``steps`` more step runs started (default: one per thread): mid-workflow."""
        goal = self.effect_count() + (steps or self.total_threads)
        wait_until(
            lambda: self.effect_count() >= goal,
            timeout=timeout,
            message=f"{goal} step runs to start",
        )

    def expected_end(self) -> dict[str, str]:
        """Every execution that exists, and the status it must end in."""
        existing = {
            execution_id
            for (execution_id,) in self.db.rows("SELECT id FROM {s}.executions", schema=self.schema)
        }
        expected = {i: EXPECTED_END[actor] for i, actor in self.uncertain.items() if i in existing}
        expected.update({i: EXPECTED_END[actor] for i, actor in self.started.items()})
        return expected

    def wait_all_ended(self, stall_s: float, cap_s: float = 300) -> dict[str, str]:
        """Wait until every execution ended, or nothing moved for ``stall_s`` seconds.

        Returns those that did not end, with their status. "Moved": a step recorded, an
        execution ended or a step run started; so a slow but live recovery is waited for,
        and a wedged one is reported without waiting for the whole cap.
        """
        give_up = time.monotonic() + cap_s
        last: tuple[Any, ...] | None = None
        last_change = time.monotonic()
        while True:
            found = self.db.try_rows(
                "SELECT id, status, runs FROM {s}.executions WHERE status <> ALL(%s)",
                list(TERMINAL),
                schema=self.schema,
            )
            if found == []:
                return {}
            progress = (
                self.db.try_rows(
                    "SELECT count(*), max(finished_at) FROM {s}.steps", schema=self.schema
                ),
                found and len(found),
                self.effect_count(),
            )
            if progress != last:
                last, last_change = progress, time.monotonic()
            now = time.monotonic()
            if now - last_change >= stall_s or now >= give_up:
                if found is None:
                    return {"*": "the own PostgreSQL is unreachable"}
                return {i: self.diagnose(i) for i, _status, _runs in found}
            time.sleep(0.05)

    def diagnose(self, execution_id: str) -> str:
        """Where an execution that did not end stands: its run, its owner, its messages."""
        found = self.db.try_rows(
            """
            SELECT e.status, e.runs, e.run_owner::text,
                   EXISTS (SELECT 1 FROM {s}.workers AS w WHERE w.id = e.run_owner),
                   (SELECT string_agg(m.state || ' delivery ' || m.deliveries
                                      || coalesce(' to ' || left(m.lease_owner::text, 8), ''), ', ')
                      FROM {s}.messages AS m
                     WHERE position(convert_to(%s, 'UTF8') IN m.payload) > 0)
              FROM {s}.executions AS e WHERE e.id = %s
            """,
            f'"{execution_id}"',
            execution_id,
            schema=self.schema,
        )
        if not found:
            return "unreadable (server down?)"
        status, runs, owner, owner_alive = found[0][:4]
        owner_text = (
            "no run owner"
            if owner is None
            else (
                f"run owner {owner[:8]} ({'live worker row' if owner_alive else 'no worker row'})"
            )
        )
        return (
            f"still {status} after {runs} run(s), {owner_text}, messages: {found[0][4] or 'none'}"
        )

    # -- Faults ---------------------------------------------------------------------------------

    def record(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def measure_recovery(self, fault: Fault, timeout: float) -> Fault:
        """Wait until every execution running at the fault's end moved again; note how long."""
        end = fault.ended
        query = """
            SELECT e.id,
                   least((SELECT min(extract(epoch FROM s.finished_at)) FROM {s}.steps AS s
                           WHERE s.execution_id = e.id AND s.kind = 'step'
                             AND s.finished_at > to_timestamp(%s)),
                         CASE WHEN e.finished_at > to_timestamp(%s)
                              THEN extract(epoch FROM e.finished_at) END)
              FROM {s}.executions AS e
             WHERE e.runs > 0 AND (e.finished_at IS NULL OR e.finished_at > to_timestamp(%s))
               AND e.created_at < to_timestamp(%s)
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.db.try_rows(query, end, end, end, end, schema=self.schema)
            if found is not None:
                # One stuck since an earlier fault is that fault's: counted once, there.
                earlier = {i for f in self.faults if f is not fault for i in f.stuck}
                found = [(i, moved) for i, moved in found if i not in earlier]
                waiting = [i for i, moved in found if moved is None]
                if not waiting:
                    fault.stuck = []
                    moved = [float(at) for _, at in found]
                    fault.recovery_s = max(0.0, max(moved) - end) if moved else 0.0
                    return fault
                fault.stuck = waiting
            if time.monotonic() >= deadline:
                return fault
            time.sleep(0.05)

    # -- Analysis -------------------------------------------------------------------------------

    def analyse(self, name: str, *, stall_s: float = 20.0, extra_faults: int = 0) -> Report:
        """Wait (bounded) for every execution to end, then check every promise on the rows.

        The wait ends when all ended or when nothing moved for ``stall_s`` seconds.
        """
        not_ended = self.wait_all_ended(stall_s)
        expected = self.expected_end()
        executions = {
            i: (status, result, runs)
            for i, status, result, runs in self.db.rows(
                "SELECT id, status, result, runs FROM {s}.executions", schema=self.schema
            )
        }
        recorded: dict[tuple[str, str], tuple[str, Any, float | None]] = {
            (i, step): (status, result, None if at is None else float(at))
            for i, step, status, result, at in self.db.rows(
                "SELECT execution_id, name, status, result, extract(epoch FROM finished_at)"
                " FROM {s}.steps WHERE kind = 'step'",
                schema=self.schema,
            )
        }
        overwrites = self.db.rows(
            "SELECT execution_id, step_key, old_status, old_result, new_status, new_result"
            "  FROM {s}.fault_step_audit"
            " WHERE op = 'UPDATE' AND old_status = 'completed'"
            "   AND (new_status <> 'completed' OR new_result IS DISTINCT FROM old_result)",
            schema=self.schema,
        )
        # A body that fails for good is dead-lettered by Dramatiq, as planned; others must not be.
        dead_letters = int(
            self.db.rows(
                "SELECT count(*) FROM {s}.dead_letters WHERE actor_name <> 'ten_steps_failing'",
                schema=self.schema,
            )[0][0]
        )
        effects = [
            Effect(i, step, token, worker, pid, thread, float(at))
            for i, step, token, worker, pid, thread, at in self.effects_db.rows(
                "SELECT execution_id, step, token, worker, pid, thread, extract(epoch FROM at)"
                "  FROM {s}.fault_effects ORDER BY id",
                schema=self.effects_schema,
            )
        ]
        redeliveries = int(
            self.db.rows("SELECT count(*) FROM {s}.fault_redeliveries", schema=self.schema)[0][0]
        )
        report = Report(
            name=name,
            redeliveries=redeliveries,
            faults=list(self.faults),
            executions=len(expected),
            extra_faults=extra_faults,
            dead_letters=dead_letters,
            worker_errors=self.worker_errors(),
            notes=list(self.notes),
        )
        for i, want in sorted(expected.items()):
            status = executions[i][0] if i in executions else "missing"
            if status != want:
                report.lost[i] = f"{status}, expected {want}" + (
                    f" ({not_ended[i]})" if i in not_ended else ""
                )
        report.check_effects(effects, recorded, self.excused_rows(effects))
        for i, (status, result, _runs) in executions.items():
            if status == "completed":
                report.check_result(i, result, recorded)
        report.overwritten += [
            f"{i} {key}: completed {old!r} became {new_status} {new!r}"
            for i, key, _old_status, old, new_status, new in overwrites
        ]
        report.dead_workers = [
            f"{w.name} exited with {w.process.returncode}: {self.log_tail(w, 5)}"
            for w in self.workers.values()
            if w.process.poll() is not None and not w.killed
        ]
        return report

    def excused_rows(self, effects: list[Effect]) -> set[int]:
        """Effects a SIGSTOPped thread wrote first on waking up: a step in flight at the fault."""
        excused: set[int] = set()
        for fault in self.faults:
            if fault.kind != "sigstop":
                continue
            seen: set[tuple[int, int]] = set()
            for n, effect in enumerate(effects):
                if effect.worker == fault.target and effect.at >= fault.ended:
                    if (effect.pid, effect.thread) not in seen:
                        excused.add(n)
                    seen.add((effect.pid, effect.thread))
        return excused

    # -- Cleaning up ----------------------------------------------------------------------------

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.ensure_running()
        running = [w.process for w in self.workers.values() if w.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGTERM)
        # A worker wedged by a fault may never finish its graceful shutdown: 10 s, then SIGKILL.
        deadline = time.monotonic() + 10
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                self.processes.kill(process)
        self.processes.close()
        self.client.close()
        self.db.close()
        self.effects_db.close()
        with contextlib.suppress(Exception):
            drop_schema(self.server.url, self.schema)
        with contextlib.suppress(Exception):
            drop_schema(self.effects_url, self.effects_schema)


@dataclass(frozen=True)
class Effect:
    execution_id: str
    step: str
    token: str
    worker: str
    pid: int
    thread: int
    at: float


@dataclass
class Report:
    name: str
    faults: list[Fault]
    executions: int
    #: Faults counted rather than injected (TimeLimit interruptions), each bounding one step.
    extra_faults: int = 0
    lost: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    duplicated: list[str] = field(default_factory=list)
    late_reruns: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    #: Cancel races whose end contradicts what cancel said, or a status that left a terminal state.
    cancel_violations: list[str] = field(default_factory=list)
    dead_letters: int = 0
    #: Cancels raced against executions (the cancel race's "faults": they bound nothing).
    cancels: int = 0
    #: Messages claimed again after a first delivery (handed back, or over to another worker).
    redeliveries: int = 0
    #: Whether the faults of this scenario may hand messages over (a lost worker's, a
    #: timed-out lease's); a PostgreSQL restart may not, nor may a scenario without faults.
    redeliveries_allowed: bool = True
    dead_workers: list[str] = field(default_factory=list)
    worker_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fault_count(self) -> int:
        return len(self.faults) + self.extra_faults

    @property
    def duplicate_bound(self) -> int:
        return sum(fault.in_flight_bound for fault in self.faults) + self.extra_faults

    @property
    def recoveries(self) -> list[float]:
        return [f.recovery_s for f in self.faults if f.recovery_s is not None]

    def check_effects(
        self,
        effects: list[Effect],
        recorded: dict[tuple[str, str], tuple[str, Any, float | None]],
        excused: set[int],
    ) -> None:
        by_step: dict[tuple[str, str], list[tuple[int, Effect]]] = defaultdict(list)
        for n, effect in enumerate(effects):
            by_step[effect.execution_id, effect.step].append((n, effect))
        for (i, step), runs in sorted(by_step.items()):
            if len(runs) > 1:
                self.duplicates += len(runs) - 1
                where = ", ".join(f"{e.worker}/{e.pid}@{e.at % 100:.2f}" for _, e in runs)
                self.duplicated.append(f"{i} {step} ran {len(runs)}x ({where})")
            status, result, finished = recorded.get((i, step), (None, None, None))
            if status == "completed":
                tokens = [e.token for _, e in runs]
                if result not in tokens:
                    self.overwritten.append(f"{i} {step}: recorded {result!r} is no effect's token")
            if finished is not None:
                for n, effect in runs:
                    if effect.at > finished + LATE_RERUN_S and n not in excused:
                        self.late_reruns.append(
                            f"{i} {step} ran again on {effect.worker} "
                            f"{effect.at - finished:.1f}s after it was recorded"
                        )

    def check_result(
        self,
        execution_id: str,
        result: Any,
        recorded: dict[tuple[str, str], tuple[str, Any, float | None]],
    ) -> None:
        steps = [
            recorded.get((execution_id, f"s{n}"), (None, None, None))
            for n in range(fault_app.STEPS)
        ]
        if result != [value for _, value, _ in steps] or any(s != "completed" for s, _, _ in steps):
            returned = result if isinstance(result, list) else [result]
            differ = [
                f"s{n}: returned {r!r}, recorded {steps[n][0]} {steps[n][1]!r}"
                for n, r in enumerate(returned + [None] * (fault_app.STEPS - len(returned)))
                if n < fault_app.STEPS and (steps[n][0] != "completed" or steps[n][1] != r)
            ]
            self.overwritten.append(
                f"{execution_id} returned tokens differ from its steps: {differ}"
            )

    def problems(self, *, faults_allow_duplicates: bool = True) -> list[str]:
        """Every broken promise, in words; empty when the scenario held."""
        bound = self.duplicate_bound if faults_allow_duplicates else 0
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} execution(s) lost: {_first(self.lost.items())}")
        if self.duplicates > bound:
            found.append(
                f"{self.duplicates} step re-runs against an in-flight bound of {bound} "
                f"({self.fault_count} fault(s)): {_first(self.duplicated)}"
            )
        if self.late_reruns:
            found.append(
                f"{len(self.late_reruns)} completed step(s) re-run: {_first(self.late_reruns)}"
            )
        if self.overwritten:
            found.append(f"{len(self.overwritten)} overwritten step(s): {_first(self.overwritten)}")
        for fault in self.faults:
            if fault.recovery_s is None:
                found.append(
                    f"no recovery after {fault.kind} {fault.target} at +{fault.ended % 1000:.1f}: "
                    f"{len(fault.stuck)} execution(s) never moved again ({_first(fault.stuck)})"
                )
        if self.cancel_violations:
            found.append(
                f"{len(self.cancel_violations)} cancel race(s) went wrong: "
                f"{_first(self.cancel_violations)}"
            )
        if self.redeliveries and not self.redeliveries_allowed:
            found.append(
                f"{self.redeliveries} message(s) delivered again: in-flight work was handed "
                "back or over, though no worker was lost"
            )
        if self.dead_letters:
            found.append(f"{self.dead_letters} message(s) dead-lettered")
        if self.dead_workers:
            found.append(f"worker(s) died without being killed: {self.dead_workers}")
        return found

    def explain(self) -> str:
        """The problems, the figures and the workers' most frequent complaints."""
        lines = [f"{self.name}: {problem}" for problem in self.problems()]
        lines.append(self.summary())
        if self.worker_errors:
            lines.append("worker log (most frequent warnings and errors):")
            lines += [f"  {line}" for line in self.worker_errors]
        return "\n".join(lines)

    def summary(self) -> str:
        recoveries = self.recoveries
        recovery = (
            f"recovery p50 {statistics.median(recoveries):.2f}s max {max(recoveries):.2f}s"
            if recoveries
            else "recovery -"
        )
        per_fault = ", ".join(
            f"{f.kind}{'/' + f.target if f.target else ''} {f.duration_s:.1f}s -> "
            + ("never" if f.recovery_s is None else f"{f.recovery_s:.2f}s")
            for f in self.faults
        )
        return (
            f"[{self.name}] faults {self.fault_count}, executions {self.executions}, "
            f"lost {len(self.lost)}, "
            f"duplicates {self.duplicates}/{self.duplicate_bound} in flight, "
            f"completed re-run {len(self.late_reruns)}, overwritten {len(self.overwritten)}, "
            f"redelivered {self.redeliveries}, "
            f"{recovery}"
            + (f"; per fault: {per_fault}" if per_fault and len(self.faults) <= 5 else "")
            + "".join(f"; {note}" for note in self.notes)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "faults": self.fault_count,
            "executions": self.executions,
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "duplicate_bound": self.duplicate_bound,
            "completed_reruns": len(self.late_reruns),
            "overwritten": len(self.overwritten),
            "redeliveries": self.redeliveries,
            "recovery_s": self.recoveries,
            "problems": self.problems(),
        }


def _first(items: Any, n: int = 3) -> str:
    items = list(items)
    shown = "; ".join(str(item) for item in items[:n])
    return shown + (f"; ... ({len(items) - n} more)" if len(items) > n else "")


# --- Injectors -----------------------------------------------------------------------------------
# Each applies one fault now, while workflows run, and returns it (recorded on the lab).


def restart_postgres(lab: FaultLab, mode: str = "fast") -> Fault:
    """Restart the own server: ``fast`` (sessions terminated) or ``immediate`` (a crash)."""
    started = time.time()
    lab.server.restart(mode)
    return lab.record(Fault("pg-restart", started, time.time(), lab.total_threads, target=mode))


def outage(lab: FaultLab, seconds: float) -> Fault:
    """Stop the own server, keep it down for ``seconds``, start it again."""
    started = time.time()
    lab.server.stop("fast")
    time.sleep(seconds)  # the outage itself
    lab.server.start()
    return lab.record(
        Fault("pg-outage", started, time.time(), lab.total_threads, target=f"{seconds:g}s")
    )


def cut_sessions(
    lab: FaultLab,
    worker: Worker,
    *,
    listener_only: bool = False,
    hold_s: float = 0,
    flapping: bool = False,
) -> Fault:
    """``pg_terminate_backend`` a worker's sessions: its LISTEN session only, or all of them.

    With ``hold_s``, the cut lasts that long: the worker's role may not log in meanwhile
    (cut off, alive, while the others carry on); or, ``flapping``, every session it opens is
    terminated again every 50 ms (a flapping network: each round that ends a session is a
    fault of its own, and counts in the in-flight bound).
    """
    # A leading %: a LISTEN session shared with result waiters puts their name first.
    name = fault_app.APPLICATION_NAME.format(worker.name)
    pattern = f"%{name}-listener" if listener_only else f"%{name}%"
    role = lab.server.worker_role(worker.name)
    locked = bool(hold_s) and not flapping
    started = time.time()
    if locked:
        lab.server.lock_out(role)
    rounds = 0
    try:
        rounds += lab.server.terminate_backends(pattern) > 0
        while flapping and time.time() - started < hold_s:
            time.sleep(0.05)  # the cut is held open
            rounds += lab.server.terminate_backends(pattern) > 0
        if not flapping:
            time.sleep(hold_s)  # the cut is held open
    finally:
        if locked:
            lab.server.lock_out(role, locked=False)
    kind = "cut-listener" if listener_only else ("cut-flapping" if flapping else "cut-sessions")
    bound = max(1, rounds) * worker.threads
    return lab.record(Fault(kind, started, time.time(), bound, target=worker.name))


def sigstop(lab: FaultLab, worker: Worker, seconds: float) -> Fault:
    """Freeze a worker (its whole process group) for ``seconds``, then let it go on."""
    started = time.time()
    os.killpg(worker.process.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the freeze itself
    finally:
        os.killpg(worker.process.pid, signal.SIGCONT)
    return lab.record(Fault("sigstop", started, time.time(), worker.threads, target=worker.name))


def sigkill(lab: FaultLab, worker: Worker) -> tuple[Fault, Worker]:
    """SIGKILL a worker and start a new one under the same name (the only restart allowed)."""
    started = time.time()
    lab.processes.kill(worker.process)
    worker.killed = True
    lab.retired.append(worker)
    replacement = lab.start_worker(worker.name, threads=worker.threads)
    fault = lab.record(Fault("sigkill", started, time.time(), worker.threads, target=worker.name))
    lab.wait_ready(replacement)
    return fault, replacement


# --- Scenarios -----------------------------------------------------------------------------------

#: Fault kinds run_fault_scenario knows, and what each one does.
KINDS = {
    "pg-restart": "PostgreSQL restarted (fast and immediate, alternately)",
    "pg-outage": "PostgreSQL stopped for several seconds, then started",
    "cut-sessions": "pg_terminate_backend of one worker's sessions, in turn: the listener "
    "alone; every session, then no login for longer than the lease; every session it "
    "opens, every 50 ms for longer than the lease",
    "sigstop": "one worker SIGSTOPped past the lease, then SIGCONTed",
    "sigkill": "one of two workers SIGKILLed, and started again",
}


#: Fault kinds that may hand in-flight messages to another worker (a worker lost, or presumed
#: lost past its lease). A PostgreSQL restart must not: it is a non-event. An outage longer
#: than the lease is left open (the figure is reported, not asserted).
HANDS_OVER = frozenset({"pg-outage", "cut-sessions", "sigstop", "sigkill"})


def inject(lab: FaultLab, kind: str, n: int, *, outage_s: float = 4.0) -> Fault:
    """The ``n``-th fault of ``kind`` (0-based), on the first worker where it targets one."""
    target = lab.workers["w1"] if n % 2 == 0 or "w2" not in lab.workers else lab.workers["w2"]
    if kind == "pg-restart":
        return restart_postgres(lab, "fast" if n % 2 == 0 else "immediate")
    if kind == "pg-outage":
        return outage(lab, outage_s)
    if kind == "cut-sessions":
        if n % 3 == 0:
            return cut_sessions(lab, target, listener_only=True)
        if n % 3 == 1:
            return cut_sessions(lab, target, hold_s=lab.lease_timeout + 1)
        return cut_sessions(lab, target, hold_s=lab.lease_timeout + 1, flapping=True)
    if kind == "sigstop":
        return sigstop(lab, target, lab.lease_timeout + 1.5)
    if kind == "sigkill":
        return sigkill(lab, lab.workers["w2"])[0]
    raise ValueError(f"unknown fault kind {kind!r}; choose from {sorted(KINDS)}")


def recovery_timeout(lab: FaultLab) -> float:
    """How long executions may take to move again after a fault: a lease, and then some."""
    return 2 * lab.lease_timeout + 10


def run_fault_scenario(
    lab: FaultLab,
    kind: str | None,
    faults: int,
    *,
    workers: int = 2,
    threads: int = 4,
    outage_s: float = 4.0,
    quiet_steps: int | None = None,
    on_fault: Callable[[Fault], None] | None = None,
    stop_when_stuck: bool = True,
) -> Report:
    """Ten-step workflows on ``workers`` workers; ``faults`` faults of ``kind`` (None: none).

    Between faults, ``quiet_steps`` step runs (default: one per thread) start first, so
    each fault hits workflows mid-way. After a fault from which some execution never moved
    again, no more faults are injected unless ``stop_when_stuck`` is false.
    """
    lab.start_workers(workers, threads=threads)
    with lab.feeding("ten_steps"):
        lab.wait_for_work(quiet_steps)
        for n in range(faults if kind else 0):
            fault = inject(lab, kind, n, outage_s=outage_s)  # type: ignore[arg-type]
            lab.measure_recovery(fault, recovery_timeout(lab))
            if on_fault is not None:
                on_fault(fault)
            if fault.recovery_s is None and stop_when_stuck:
                break  # more faults would only blur what went wrong
            try:
                lab.wait_for_work(quiet_steps, timeout=recovery_timeout(lab) + 30)
            except AssertionError as stalled:
                lab.notes.append(f"after {n + 1} fault(s), no new step ran: {stalled}")
                break
    report = lab.analyse(kind or "no-fault", stall_s=recovery_timeout(lab))
    report.redeliveries_allowed = kind in HANDS_OVER
    return report


def run_time_limit_scenario(
    lab: FaultLab, executions: int, *, workers: int = 2, threads: int = 4
) -> Report:
    """Ten-step workflows whose every run TimeLimit cuts after a few steps (mid-step or
    mid-checkpoint); Retries runs the body again at once, until all ten steps are recorded.
    """
    lab.start_workers(workers, threads=threads)
    for _ in range(executions):
        lab.start("ten_steps_limited")
    report = lab.analyse("time-limit", stall_s=recovery_timeout(lab))
    report.redeliveries_allowed = False
    interrupted = lab.log_lines(TIME_LIMIT_LINE)
    report.extra_faults = interrupted
    runs = lab.db.rows("SELECT coalesce(sum(runs), 0) FROM {s}.executions", schema=lab.schema)[0][0]
    report.notes.append(f"{interrupted} TimeLimit interruptions over {runs} runs")
    return report


@dataclass
class CancelRace:
    """One cancel against an execution that is finishing (or failing)."""

    execution_id: str
    actor: str
    #: What cancel returned (the status before it), or the error it raised.
    before: str = ""
    final: str = ""
    seen: list[str] = field(default_factory=list)


def run_cancel_race(
    lab: FaultLab, executions: int, *, workers: int = 2, threads: int = 4, seed: int | None = None
) -> tuple[Report, list[CancelRace]]:
    """Cancel each execution at a random moment around its last steps.

    Half the executions complete, half fail after their last step. The end state must be
    ``cancelled`` when cancel found the execution unfinished, else the state it had already
    reached; and no status read (``zart.get_execution``) ever leaves a terminal state.
    """
    rng = random.Random(seed)
    lab.start_workers(workers, threads=threads)
    races: list[CancelRace] = []
    stop_watching = threading.Event()

    def read_status(race: CancelRace) -> None:
        with contextlib.suppress(Exception):
            status = zart.get_execution(race.execution_id, broker=lab.client).status
            if not race.seen or race.seen[-1] != status:
                race.seen.append(status)

    def watch() -> None:
        while not stop_watching.is_set():
            for race in list(races):
                read_status(race)
            stop_watching.wait(0.005)

    def cancel_later(race: CancelRace, trigger: str, delay_s: float) -> None:
        effects = Db(lab.effects_url, "fault-canceller")
        try:
            wait_until(
                lambda: effects.rows(
                    "SELECT 1 FROM {s}.fault_effects WHERE execution_id = %s AND step = %s",
                    race.execution_id,
                    trigger,
                    schema=lab.effects_schema,
                ),
                timeout=60,
                message=f"{race.execution_id} to reach {trigger}",
            )
            time.sleep(delay_s)  # where the cancel lands: the fault's timing
            race.before = zart.cancel(race.execution_id, broker=lab.client)
        except Exception as error:
            race.before = f"error: {error!r}"
        finally:
            effects.close()

    watcher = threading.Thread(target=watch, name="fault-status-watch", daemon=True)
    watcher.start()
    wave = lab.total_threads
    try:
        for first in range(0, executions, wave):
            cancellers = []
            for n in range(first, min(first + wave, executions)):
                actor = "ten_steps" if n % 2 == 0 else "ten_steps_failing"
                execution_id = lab.start(actor)
                assert execution_id is not None, (
                    "the own PostgreSQL refused a start without a fault"
                )
                race = CancelRace(execution_id, actor)
                races.append(race)
                trigger = f"s{rng.choice([7, 8, 9, 9])}"
                delay = rng.uniform(0, 2.5 * lab.step_ms[1] / 1000)
                thread = threading.Thread(
                    target=cancel_later, args=(race, trigger, delay), daemon=True
                )
                thread.start()
                cancellers.append(thread)
            for thread in cancellers:
                thread.join(90)
        report = lab.analyse("cancel-race", stall_s=recovery_timeout(lab))
        report.redeliveries_allowed = False
        # Once every delivery is settled nothing can change a status any more: read them all
        # one last time, so a late change (a body finishing after the cancel) is seen.
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: lab.db.rows("SELECT count(*) = 0 FROM {s}.messages", schema=lab.schema)[0][
                    0
                ],
                timeout=20,
                message="every message to be settled",
            )
    finally:
        stop_watching.set()
        watcher.join(30)
    for race in races:
        read_status(race)
    for race in races:
        race.final = race.seen[-1] if race.seen else "never read"
    cancelled_first = {r.execution_id for r in races if r.before and r.before not in TERMINAL}
    # A cancelled execution is not lost: what it must end in depends on when cancel came.
    for race in races:
        problem = cancel_problem(race)
        if problem:
            report.cancel_violations.append(problem)
        report.lost.pop(race.execution_id, None)
    report.cancels = len(races)
    outcomes = Counter(race.final for race in races)
    report.notes.append(
        f"{len(cancelled_first)} cancels came first; ends: "
        + ", ".join(f"{status} {n}" for status, n in sorted(outcomes.items()))
    )
    return report, races


def cancel_problem(race: CancelRace) -> str | None:
    """What is wrong with one cancel race's history, if anything."""
    expected_body_end = EXPECTED_END[race.actor]
    terminal_seen = [n for n, status in enumerate(race.seen) if status in TERMINAL]
    if terminal_seen and race.seen[terminal_seen[0] :] != [race.seen[terminal_seen[0]]]:
        return f"{race.execution_id} left a terminal state: {' -> '.join(race.seen)}"
    if race.before.startswith("error"):
        return f"{race.execution_id}: cancel raised {race.before}"
    if race.before in TERMINAL:
        if race.final != race.before:
            return f"{race.execution_id} was {race.before} when cancelled, ended {race.final}"
        if race.before != expected_body_end:
            return f"{race.execution_id} ({race.actor}) ended {race.before} before the cancel"
        return None
    if race.final != "cancelled":
        return (
            f"{race.execution_id} was cancelled while {race.before} but ended {race.final} "
            f"(seen: {' -> '.join(race.seen)})"
        )
    return None


def format_table(reports: list[Report]) -> str:
    """One row per fault kind: the figures benchmarks/faults.py prints."""
    header = (
        f"{'fault kind':<14} {'faults':>6} {'execs':>6} {'lost':>5} {'re-run':>7} "
        f"{'dups/bound':>11} {'overwr':>7} {'redeliv':>7} {'rec p50 s':>9} {'rec max s':>9}"
        "  verdict"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        rec = r.recoveries
        stuck = sum(1 for f in r.faults if f.recovery_s is None)
        p50 = f"{statistics.median(rec):.2f}" if rec else "-"
        worst = "never" if stuck else (f"{max(rec):.2f}" if rec else "-")
        lines.append(
            f"{r.name:<14} {r.fault_count + r.cancels:>6} {r.executions:>6} {len(r.lost):>5} "
            f"{len(r.late_reruns):>7} {f'{r.duplicates}/{r.duplicate_bound}':>11} "
            f"{len(r.overwritten):>7} {r.redeliveries:>7} {p50:>9} {worst:>9}  "
            + ("held" if not r.problems() else "BROKEN")
        )
    return "\n".join(lines)


def dump_json(reports: list[Report]) -> str:
    return json.dumps([r.as_dict() for r in reports], indent=2)
