"""Durable workflows side by side: zart-dramatiq, DBOS, and a non-durable Dramatiq ceiling.

Run from the repository root, with PostgreSQL, Redis and RabbitMQ running locally:

    .venv/bin/python -m benchmarks.durable [--workflows N] [--only a,b] [--json out.json]

Sections: zart, zart-rabbitmq, dbos, redis, pgbench, zart-sleep, dbos-sleep. See
benchmarks/README.md, "Durable workflows".
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

if __package__ in (None, ""):
    # Run as a file (python benchmarks/durable.py): make `benchmarks` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks import measure, workers
from benchmarks.measure import Percentiles
from benchmarks.options import comma_separated
from benchmarks.pg_spend import CommitCeiling, Spend, SpendMeter, commit_ceiling

T = TypeVar("T")
SECTIONS = ["zart", "zart-rabbitmq", "dbos", "redis", "pgbench", "zart-sleep", "dbos-sleep"]
STEPS = 10
ZART_DB = "zbench_durable_zart"
DBOS_DB = "zbench_durable_dbos"
PGBENCH_DB = "zbench_durable_pgbench"
ZART_SCHEMA = "bench_durable"
ZART_APP = "benchmarks.apps.durable_zart"
ZART_RABBITMQ_APP = "benchmarks.apps.durable_zart_rabbitmq"
REDIS_APP = "benchmarks.apps.durable_redis"
#: pgbench client counts: one session's commit rate, and the server's with commits shared.
PGBENCH_CLIENTS = (1, 8)

TARGETS = {
    "zart / DBOS workflows/s": (">=", 10.0, "x"),
    "zart / non-durable ceiling": (">=", 0.25, "%"),
    "DBOS / zart CPU per workflow": ("", 0.0, "x"),
    "zart commits per step": ("<=", 1.5, ""),
    "zart sleep lateness p50 ms": ("<=", 20.0, ""),
    "zart sleep lateness p99 ms": ("<=", 50.0, ""),
}


# -- Results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    workflows: int
    active_s: float  # first step start -> last workflow end
    wall_s: float  # worker spawn -> last workflow end
    start_rate: float | None = None  # workflows started (enqueued) per second by the driver
    spend: Spend | None = None  # what the database cost the server, driver's own commits excluded
    cpu: CpuShare | None = None  # CPU per workflow, mid-drain

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.active_s

    @property
    def steps_per_s(self) -> float:
        return self.workflows * STEPS / self.active_s

    @property
    def commits_per_step(self) -> float | None:
        return None if self.spend is None else self.spend.commits / (self.workflows * STEPS)


@dataclass(frozen=True)
class CpuShare:
    """CPU seconds spent per workflow between 10% and 90% of the drain, by side."""

    worker_ms: float  # the worker processes (Python)
    postgres_ms: float  # their PostgreSQL backends
    transport_ms: float = 0.0  # a message broker's own server (RabbitMQ), if any

    @property
    def total_ms(self) -> float:
        return self.worker_ms + self.postgres_ms + self.transport_ms


@dataclass
class Results:
    throughput: dict[str, Throughput] = field(default_factory=dict)
    lateness: dict[str, Percentiles] = field(default_factory=dict)
    ceilings: list[CommitCeiling] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    #: 1-minute load averages before and after: the machine is shared with other work.
    load: list[float] = field(default_factory=list)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


@dataclass(frozen=True)
class Settings:
    workflows: int
    sleepers: int
    processes: int
    threads: int
    dbos_poll: float
    pgbench_s: float
    admin_url: str
    redis_url: str
    amqp_url: str
    channel_url: str
    timeout: float
    keep: bool

    def db_url(self, name: str) -> str:
        return urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()


class Server(Protocol):
    """What the database helpers need of a benchmark's settings (also benchmarks/fanout.py's)."""

    @property
    def admin_url(self) -> str: ...

    def db_url(self, name: str) -> str: ...


# -- PostgreSQL helpers ----------------------------------------------------------------


def recreate_database(settings: Server, name: str) -> str:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return settings.db_url(name)


def drop_database(settings: Server, name: str) -> None:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Poller:
    """A connection to the benchmark database that counts its own commits (one per query)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.queries = 0

    def scalar(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        self.queries += 1
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self.conn.close()


def wait_until(
    poller: Poller,
    count_query: str,
    params: tuple[Any, ...],
    target: int,
    timeout: float,
    alive: Callable[[], str | None],
    on_progress: Callable[[int], None] = lambda done: None,
) -> None:
    """Poll `count_query` until it reaches `target`; raise on timeout or a dead worker."""
    deadline = time.monotonic() + timeout
    while (done := int(poller.scalar(count_query, params))) < target:
        on_progress(done)
        if (death := alive()) is not None:
            raise workers.WorkerDied(f"{death} after {done}/{target}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{target} finished in {timeout:.0f}s")
        # The window comes from timestamps in the database; this only paces the CPU samples.
        time.sleep(0.02)


# -- CPU accounting (Linux /proc) ------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may contain spaces: state is [0], ppid [1].
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU of each live process in `pids`."""
    found = {}
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            found[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            yield int(entry.name), fields


def with_descendants(root: int) -> list[int]:
    parents = {pid: int(fields[1]) for pid, fields in _processes()}
    family, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        family += frontier
    return family


def rabbitmq_server() -> list[int]:
    """The local RabbitMQ server: its Erlang VM does all the work."""
    found = []
    for pid, _ in _processes():
        with suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp":
                found.append(pid)
    return found


class CpuSampler:
    """Samples the CPU of worker processes and their backends at 10% and 90% of a drain.

    The mid-drain window leaves out worker boot and the tail, and CPU seconds, unlike
    rates, hardly depend on what else the (shared) machine is running. ``total`` is the
    number of units of work (workflows) the drain runs; ``mark`` takes a sample at once,
    for callers that choose their own window (benchmarks/fanout.py: start to result).
    """

    def __init__(
        self,
        admin_url: str,
        total: int,
        database: str,
        workers_of: Callable[[], list[int]],
        poller: Poller,
        transport_of: Callable[[], list[int]] = list,
    ) -> None:
        self.admin_url = admin_url
        self.total = total
        self.database = database
        self.workers_of = workers_of
        self.transport_of = transport_of
        self.exclude = poller.conn.info.backend_pid
        #: (workflows done, CPU seconds of the workers, of their backends, of the transport)
        self.marks: list[tuple[int, list[dict[int, float]]]] = []

    def backends(self) -> list[int]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                (self.database, self.exclude),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def observe(self, done: int) -> None:
        thresholds = (0.1 * self.total, 0.9 * self.total)
        if len(self.marks) < 2 and done >= thresholds[len(self.marks)]:
            self.mark(done)

    def mark(self, done: int) -> None:
        groups = (self.workers_of(), self.backends(), self.transport_of())
        self.marks.append((done, [cpu_seconds(pids) for pids in groups]))

    def share(self) -> CpuShare | None:
        if len(self.marks) < 2 or self.marks[1][0] <= self.marks[0][0]:
            return None
        (done0, before), (done1, after) = self.marks
        count = done1 - done0

        def per_workflow(before: dict[int, float], after: dict[int, float]) -> float:
            spent = sum(t - before.get(pid, 0.0) for pid, t in after.items())
            return 1000 * spent / count

        return CpuShare(*(per_workflow(b, a) for b, a in zip(before, after, strict=True)))


# -- Subprocesses that are not `dramatiq` workers (DBOS) -------------------------------

_spawned: set[subprocess.Popen[str]] = set()


def _stop_spawned() -> None:
    for proc in list(_spawned):
        workers.stop(proc, grace=10.0)
        _spawned.discard(proc)


atexit.register(_stop_spawned)


def spawn_python(args: list[str], log: Path, *, capture: bool = False) -> subprocess.Popen[str]:
    """Start `python -m args` in its own session; stderr (and stdout unless captured) to `log`."""
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=workers.REPO,
            env=workers.worker_env({}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else sink,
            stderr=sink,
            text=True,
            start_new_session=True,
        )
    _spawned.add(proc)
    return proc


def dbos_worker_log(k: int) -> Path:
    return Path(f"/tmp/zbench-dbos-worker-{k}.log")


@contextmanager
def dbos_workers(
    url: str, processes: int, extra: Sequence[str], module: str = "benchmarks.dbos_workflow"
) -> Iterator[list[subprocess.Popen[str]]]:
    """`processes` DBOS workers: `python -m module worker --url URL --executor-id ID *extra`."""
    procs = []
    try:
        for k in range(processes):
            argv = [module, "worker", "--url", url, "--executor-id", f"zbench-w{k}", *extra]
            procs.append(spawn_python(argv, dbos_worker_log(k)))
        yield procs
    finally:
        for proc in procs:
            workers.stop(proc, grace=15.0)
            _spawned.discard(proc)


def dead_dbos_worker(procs: list[subprocess.Popen[str]]) -> str | None:
    for k, proc in enumerate(procs):
        if proc.poll() is not None:
            return f"DBOS worker {k} exited with {proc.returncode} (see {dbos_worker_log(k)})"
    return None


def wait_dbos_ready(procs: list[subprocess.Popen[str]], timeout: float = 60.0) -> None:
    """Wait until every DBOS worker printed its ready line (after DBOS.launch)."""
    from benchmarks.dbos_workflow import READY_LINE

    deadline = time.monotonic() + timeout
    while not all(
        READY_LINE in dbos_worker_log(k).read_text(errors="replace") for k in range(len(procs))
    ):
        if (death := dead_dbos_worker(procs)) is not None:
            raise workers.WorkerDied(death)
        if time.monotonic() > deadline:
            raise TimeoutError(f"DBOS workers not ready after {timeout:.0f}s")
        time.sleep(0.02)


def dramatiq_death(worker: workers.WorkerProcess) -> str | None:
    return None if worker.alive() else f"worker exited with {worker.proc.returncode}{worker.why()}"


# -- A. zart-dramatiq ------------------------------------------------------------------


@dataclass(frozen=True)
class ZartTransport:
    """How zart's messages travel; the executions and steps are in PostgreSQL (ZART_DB)."""

    app: str  # the worker module, also imported by the driver
    server: Callable[[], list[int]]  # the transport's own server, whose CPU is counted apart


ZART_TRANSPORTS = {
    # broker_pg's work is in the PostgreSQL figures: it has no server of its own.
    "zart": ZartTransport(ZART_APP, list),
    "zart-rabbitmq": ZartTransport(ZART_RABBITMQ_APP, rabbitmq_server),
}


def zart_env(settings: Settings) -> dict[str, str]:
    return {
        "ZDURABLE_PG_URL": settings.db_url(ZART_DB),
        "ZDURABLE_SCHEMA": ZART_SCHEMA,
        "ZDURABLE_AMQP_URL": settings.amqp_url,
    }


def zart_app(settings: Settings, module: str = ZART_APP) -> Any:
    """Import the worker app in the driver too (it declares the actors zart.start needs)."""
    os.environ.update(zart_env(settings))
    return importlib.import_module(module)


def close_pg_connections(app: Any) -> None:
    """The driver's, so that their commits are published before a baseline is read."""
    from zart_dramatiq.middleware import middleware_for

    # On broker_pg the broker's own pool; on RabbitMQ the middleware's (AMQP stays open).
    middleware_for(app.broker).store.db.close()


def setup_zart(settings: Settings) -> str:
    from broker_pg import migrate

    url = recreate_database(settings, ZART_DB)
    migrate(url, schema=ZART_SCHEMA)
    return url


def start_zart(app: Any, actor: Any, prefix: str, count: int) -> float:
    import zart_dramatiq as zart

    started = time.perf_counter()
    for seq in range(count):
        zart.start(actor, seq, execution_id=f"{prefix}-{seq}")
    return count / (time.perf_counter() - started)


def zart_window(poller: Poller, prefix: str) -> float:
    query = f"""
        SELECT extract(epoch FROM max(e.finished_at) - min(s.started_at))
          FROM {ZART_SCHEMA}.executions AS e JOIN {ZART_SCHEMA}.steps AS s ON s.execution_id = e.id
         WHERE e.id LIKE %s"""
    return float(poller.scalar(query, (f"{prefix}-%",)))


def bench_zart(settings: Settings, key: str = "zart") -> Throughput:
    transport = ZART_TRANSPORTS[key]
    url = setup_zart(settings)
    meter = SpendMeter(settings.admin_url, url, ZART_DB, ZART_SCHEMA)
    app = zart_app(settings, transport.app)
    n = settings.workflows
    app.broker.flush_all()  # RabbitMQ keeps the queue of an interrupted run
    try:
        start_rate = start_zart(app, app.ten_steps, "wf", n)
        close_pg_connections(app)
        meter.begin()
        poller = Poller(url)
        try:
            with workers.running(
                transport.app, settings.processes, settings.threads, zart_env(settings)
            ) as worker:
                sampler = CpuSampler(
                    settings.admin_url,
                    n,
                    ZART_DB,
                    lambda: with_descendants(worker.proc.pid),
                    poller,
                    transport.server,
                )
                query = f"SELECT count(*) FROM {ZART_SCHEMA}.executions WHERE status = 'completed'"
                died = lambda: dramatiq_death(worker)  # noqa: E731
                wait_until(poller, query, (), n, settings.timeout, died, sampler.observe)
                active = zart_window(poller, "wf")
                wall = time.time() - worker.started
                check_zart_steps(poller, n)
        finally:
            polls = poller.queries
            poller.close()
        spend = meter.end(polls)
    finally:
        app.broker.flush_all()
        close_pg_connections(app)
    return Throughput(n, active, wall, start_rate, spend, sampler.share())


def check_zart_steps(poller: Poller, n: int) -> None:
    query = f"SELECT count(*) FROM {ZART_SCHEMA}.steps WHERE status = 'completed' AND kind = 'step'"
    found = int(poller.scalar(query))
    if found != n * STEPS:
        raise AssertionError(f"expected {n * STEPS} completed steps, found {found}")


def bench_zart_sleep(settings: Settings) -> Percentiles:
    url = ensure_zart(settings)
    app = zart_app(settings)
    env = zart_env(settings)
    # Unique per run, so a kept database never hands back an earlier run's executions.
    prefix = f"nap{time.time_ns()}"
    poller = Poller(url)
    try:
        with workers.running(ZART_APP, settings.processes, settings.threads, env) as worker:
            worker.wait_ready()
            time.sleep(0.5)
            start_zart(app, app.nap, prefix, settings.sleepers)
            query = f"""SELECT count(*) FROM {ZART_SCHEMA}.executions
                         WHERE id LIKE %s AND status = 'completed'"""
            died = lambda: dramatiq_death(worker)  # noqa: E731
            wait_until(poller, query, (f"{prefix}-%",), settings.sleepers, settings.timeout, died)
        return measure.summarize(zart_lateness(poller, prefix))
    finally:
        poller.close()
        app.broker.close()


def ensure_zart(settings: Settings) -> str:
    if not database_exists(settings, ZART_DB):
        return setup_zart(settings)
    from broker_pg import migrate

    url = settings.db_url(ZART_DB)
    migrate(url, schema=ZART_SCHEMA)
    return url


def zart_lateness(poller: Poller, prefix: str) -> list[float]:
    """Resume time recorded by the step after the sleep, minus the sleep's recorded wake_at."""
    rows = poller.conn.execute(
        f"""SELECT (w.result #>> '{{}}')::float8 - extract(epoch FROM n.wake_at)::float8
              FROM {ZART_SCHEMA}.steps AS n
              JOIN {ZART_SCHEMA}.steps AS w
                ON w.execution_id = n.execution_id AND w.step_key = 'step:woke'
             WHERE n.step_key = 'sleep:nap' AND n.execution_id LIKE %s""",
        (f"{prefix}-%",),
    ).fetchall()
    return [float(row[0]) for row in rows]


def database_exists(settings: Server, name: str) -> bool:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return found is not None


# -- B. DBOS ---------------------------------------------------------------------------


def setup_dbos(settings: Settings) -> str:
    from dbos import DBOS

    url = recreate_database(settings, DBOS_DB)
    DBOS.migrate(url)
    return url


def enqueue_dbos(url: str, settings: Settings) -> float:
    from dbos import DBOSClient

    from benchmarks import dbos_workflow as wf

    client = DBOSClient(system_database_url=url, application_name=wf.APP_NAME)
    try:
        client.register_queue(
            wf.QUEUE,
            worker_concurrency=settings.threads,
            polling_interval_sec=settings.dbos_poll,
            application_name=wf.APP_NAME,
        )
        options = {
            "queue_name": wf.QUEUE,
            "workflow_name": wf.WORKFLOW,
            # The workers' fixed version: they run only workflows of their own version.
            "app_version": wf.APP_VERSION,
        }
        started = time.perf_counter()
        for seq in range(settings.workflows):
            workflow_options = {
                **options,
                "workflow_id": f"wf-{seq}",
                "app_version": wf.APP_VERSION,
            }
            client.enqueue(workflow_options, seq)  # type: ignore[arg-type]
        return settings.workflows / (time.perf_counter() - started)
    finally:
        # Closes the client's connections: their commits are published before the baseline.
        client.destroy()


def bench_dbos(settings: Settings) -> Throughput:
    url = setup_dbos(settings)
    meter = SpendMeter(settings.admin_url, url, DBOS_DB, "dbos")
    n = settings.workflows
    start_rate = enqueue_dbos(url, settings)
    meter.begin()
    poller = Poller(url)
    spawned = time.time()
    try:
        extra = ["--concurrency", str(settings.threads), "--poll", str(settings.dbos_poll)]
        with dbos_workers(url, settings.processes, extra) as procs:
            pids = lambda: [p.pid for p in procs]  # noqa: E731
            sampler = CpuSampler(settings.admin_url, n, DBOS_DB, pids, poller)
            query = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"
            died = lambda: dead_dbos_worker(procs)  # noqa: E731
            wait_until(poller, query, (), n, settings.timeout, died, sampler.observe)
            window = poller.scalar(
                "SELECT (max(completed_at) - min(started_at_epoch_ms)) / 1000.0"
                "  FROM dbos.workflow_status WHERE status = 'SUCCESS'"
            )
            wall = time.time() - spawned
    finally:
        polls = poller.queries
        poller.close()
    spend = meter.end(polls)
    return Throughput(n, float(window), wall, start_rate, spend, sampler.share())


# -- The server's commit ceiling -------------------------------------------------------


def bench_pgbench(settings: Settings) -> list[CommitCeiling]:
    """One-INSERT transactions, alone and with sessions sharing the commits (group commit)."""
    url = recreate_database(settings, PGBENCH_DB)
    try:
        return [commit_ceiling(url, clients, settings.pgbench_s) for clients in PGBENCH_CLIENTS]
    finally:
        drop_database(settings, PGBENCH_DB)


def bench_dbos_sleep(settings: Settings) -> Percentiles:
    url = settings.db_url(DBOS_DB) if database_exists(settings, DBOS_DB) else setup_dbos(settings)
    log = Path("/tmp/zbench-dbos-sleep.log")
    argv = ["benchmarks.dbos_workflow", "sleep", "--url", url, "--count", str(settings.sleepers)]
    proc = spawn_python(argv, log, capture=True)
    try:
        out, _ = proc.communicate(timeout=settings.timeout)
    finally:
        workers.stop(proc, grace=5.0)
        _spawned.discard(proc)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"DBOS sleep run exited with {proc.returncode} (see {log})")
    return measure.summarize(json.loads(out.strip().splitlines()[-1]))


# -- C. Non-durable ceiling: plain Dramatiq on Redis ------------------------------------


def bench_redis(settings: Settings) -> Throughput:
    os.environ["ZDURABLE_REDIS_URL"] = settings.redis_url
    os.environ["ZBENCH_CHANNEL_URL"] = settings.channel_url
    from benchmarks.apps import durable_redis as app
    from benchmarks.channel import Channel

    channel = Channel(settings.channel_url)
    channel.reset()
    app.broker.flush_all()
    try:
        started = time.perf_counter()
        for seq in range(settings.workflows):
            app.ten_calls.send(seq)
        start_rate = settings.workflows / (time.perf_counter() - started)
        with workers.running(REDIS_APP, settings.processes, settings.threads, {}) as worker:
            drain = measure.drain(channel, worker, settings.workflows, settings.timeout)
        return Throughput(settings.workflows, drain.active_s, drain.wall_s, start_rate)
    finally:
        app.broker.flush_all()
        # Also the worker heartbeats key, and anything else under the namespace.
        for key in app.broker.client.scan_iter(f"{app.NAMESPACE}:*"):
            app.broker.client.delete(key)
        channel.reset()


# -- Report ----------------------------------------------------------------------------

LABELS = {
    "zart": "zart-dramatiq (broker_pg)",
    "zart-rabbitmq": "zart-dramatiq (RabbitMQ + PG)",
    "dbos": "DBOS (queue)",
    "redis": "Dramatiq on Redis, not durable",
}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        padded = (c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        return "  ".join([first.ljust(widths[0]), *padded])

    return "\n".join([line(header), "-" * len(line(header)), *map(line, rows)])


def throughput_table(results: Results) -> str:
    header = ["system", "workflows/s", "steps/s", "commits/step", "CPU ms/wf"]
    header += ["(worker+pg[+mq])", "drain s", "wall s", "start/s"]
    rows = []
    for key, label in LABELS.items():
        t = results.throughput.get(key)
        if t is None:
            rows.append([label, *(["err" if key in results.errors else "-"] * 8)])
            continue
        cpu = t.cpu
        rows.append(
            [
                label,
                fmt(t.workflows_per_s, "{:,.0f}"),
                fmt(t.steps_per_s, "{:,.0f}"),
                fmt(t.commits_per_step, "{:.2f}"),
                fmt(cpu.total_ms if cpu else None, "{:.2f}"),
                cpu_parts(cpu),
                fmt(t.active_s, "{:.2f}"),
                fmt(t.wall_s, "{:.2f}"),
                fmt(t.start_rate, "{:,.0f}"),
            ]
        )
    return grid(header, rows)


def cpu_parts(cpu: CpuShare | None) -> str:
    if cpu is None:
        return "-"
    parts = [cpu.worker_ms, cpu.postgres_ms] + ([cpu.transport_ms] if cpu.transport_ms else [])
    return "+".join(f"{ms:.2f}" for ms in parts)


#: The systems whose database cost is shown: zart on both transports, and DBOS.
SPENDERS = ("zart", "zart-rabbitmq", "dbos")


def spend_table(results: Results) -> str:
    """What one step cost the PostgreSQL server, and how much of it the drain's rate used."""
    header = ["one PostgreSQL, per step", "commits", "WAL bytes", "(full pages)", "PG CPU us"]
    header += ["commits/s", "WAL MB/s", "PG cores"]
    rows = []
    for key in SPENDERS:
        t = results.throughput.get(key)
        if t is None or t.spend is None:
            continue
        steps, wal = t.workflows * STEPS, t.spend.wal
        wal_step = (wal.bytes if wal.bytes is not None else wal.server_bytes) / steps
        pg_ms = t.cpu.postgres_ms if t.cpu else None
        rows.append(
            [
                LABELS[key],
                fmt(t.commits_per_step, "{:.2f}"),
                fmt(wal_step, "{:,.0f}") + ("" if wal.bytes is not None else " (server)"),
                fmt(
                    wal.fpi_bytes / wal.bytes if wal.bytes and wal.fpi_bytes is not None else None,
                    "{:.0%}",
                ),
                fmt(pg_ms * 1000 / STEPS if pg_ms is not None else None, "{:.0f}"),
                fmt((t.commits_per_step or 0) * t.steps_per_s, "{:,.0f}"),
                fmt(wal_step * t.steps_per_s / 1e6, "{:.1f}"),
                fmt(pg_ms * t.workflows_per_s / 1000 if pg_ms is not None else None, "{:.2f}"),
            ]
        )
    return grid(header, rows)


def ceiling_table(results: Results) -> str:
    header = ["pgbench, one INSERT per transaction", "commits/s", "ms/commit"]
    rows = [
        [
            f"{c.clients} client{'s' if c.clients > 1 else ''}",
            f"{c.commits_per_s:,.0f}",
            f"{c.latency_ms:.2f}",
        ]
        for c in results.ceilings
    ]
    return grid(header, rows)


def bounds_table(results: Results) -> str:
    """Workflows/s measured, against what commits alone or PostgreSQL CPU alone would allow."""
    shared = max((c.commits_per_s for c in results.ceilings), default=None)
    cores = os.cpu_count() or 1
    header = [
        "one PostgreSQL bounds, workflows/s",
        "measured",
        "commit ceiling",
        f"PG CPU, {cores} cores",
    ]
    rows = []
    for key in SPENDERS:
        t = results.throughput.get(key)
        if t is None or t.spend is None:
            continue
        commits_wf = t.spend.commits / t.workflows
        rows.append(
            [
                LABELS[key],
                fmt(t.workflows_per_s, "{:,.0f}"),
                fmt(shared / commits_wf if shared and commits_wf > 0 else None, "{:,.0f}"),
                fmt(
                    cores * 1000 / t.cpu.postgres_ms if t.cpu and t.cpu.postgres_ms else None,
                    "{:,.0f}",
                ),
            ]
        )
    return grid(header, rows)


def spend_details(results: Results) -> list[str]:
    """Per system, WAL by record kind and rows written, to see where a step's cost goes."""
    lines = []
    for key in SPENDERS:
        t = results.throughput.get(key)
        if t is None or t.spend is None:
            continue
        steps, wal = t.workflows * STEPS, t.spend.wal
        kinds = ", ".join(f"{kind} {size / steps:,.0f}" for kind, size in wal.by_kind.items())
        lines.append(f"{LABELS[key]}, WAL bytes per step: {kinds or 'n/a (pg_walinspect)'}")
        lines.append(f"{LABELS[key]}, rows per workflow: {t.spend.rows_line(t.workflows)}")
    return lines


def lateness_table(results: Results) -> str:
    header = ["durable sleep 1 s, lateness", "p50 ms", "p99 ms", "max ms", "samples"]
    rows = []
    for key, label in (("zart-sleep", "zart.sleep"), ("dbos-sleep", "DBOS.sleep")):
        p = results.lateness.get(key)
        if p is None:
            rows.append([label, *(["err" if key in results.errors else "-"] * 4)])
            continue
        cells = [fmt(p.p50_ms, "{:.1f}"), fmt(p.p99_ms, "{:.1f}"), fmt(p.max_ms, "{:.1f}")]
        rows.append([label, *cells, str(p.samples)])
    return grid(header, rows)


def ratios(results: Results) -> dict[str, float | None]:
    t, late = results.throughput, results.lateness
    zart, dbos, redis = t.get("zart"), t.get("dbos"), t.get("redis")
    rabbit = t.get("zart-rabbitmq")
    zart_sleep = late.get("zart-sleep")
    return {
        "zart / DBOS workflows/s": (
            zart.workflows_per_s / dbos.workflows_per_s if zart and dbos else None
        ),
        "zart / non-durable ceiling": (
            zart.workflows_per_s / redis.workflows_per_s if zart and redis else None
        ),
        "DBOS / zart CPU per workflow": (
            dbos.cpu.total_ms / zart.cpu.total_ms
            if zart and dbos and zart.cpu and dbos.cpu
            else None
        ),
        "zart commits per step": zart.commits_per_step if zart else None,
        "zart-rabbitmq / zart workflows/s": (
            rabbit.workflows_per_s / zart.workflows_per_s if zart and rabbit else None
        ),
        "zart-rabbitmq / zart PG CPU per workflow": (
            rabbit.cpu.postgres_ms / zart.cpu.postgres_ms
            if zart and rabbit and zart.cpu and rabbit.cpu
            else None
        ),
        "zart-rabbitmq commits per step": rabbit.commits_per_step if rabbit else None,
        "DBOS commits per step": dbos.commits_per_step if dbos else None,
        "zart sleep lateness p50 ms": zart_sleep.p50_ms if zart_sleep else None,
        "zart sleep lateness p99 ms": zart_sleep.p99_ms if zart_sleep else None,
    }


def verdict(name: str, value: float | None) -> str:
    if not TARGETS.get(name, ("",))[0]:
        return ""
    op, bound, unit = TARGETS[name]
    shown = f"{bound:.0%}" if unit == "%" else f"{bound:g}{unit}"
    if value is None:
        return f"target {op} {shown}: n/a"
    met = value >= bound if op == ">=" else value <= bound
    return f"target {op} {shown}: {'met' if met else 'MISSED'}"


def ratios_table(values: dict[str, float | None]) -> str:
    rows = []
    for name, value in values.items():
        unit = TARGETS.get(name, ("", 0, ""))[2]
        shown = fmt(value, "{:.0%}") if unit == "%" else fmt(value, "{:.2f}") + unit
        rows.append([name, shown if value is not None else "-", verdict(name, value)])
    return grid(["ratio", "value", ""], rows)


def render(results: Results, settings: Settings) -> str:
    parts = [
        f"Durable workflows: {settings.workflows} workflows x {STEPS} no-op steps, "
        f"{settings.processes} processes x {settings.threads} threads each; "
        f"{os.cpu_count()} CPUs, 1-min load average "
        + " -> ".join(f"{x:.1f}" for x in results.load),
        "",
        throughput_table(results),
    ]
    if any(t.spend for t in results.throughput.values()):
        parts += ["", spend_table(results), *spend_details(results)]
    if results.ceilings:
        parts += ["", ceiling_table(results), "", bounds_table(results)]
    parts += ["", lateness_table(results), "", ratios_table(ratios(results))]
    if results.errors:
        parts += ["", "Errors:", *(f"  {k}: {v}" for k, v in results.errors.items())]
    return "\n".join(parts)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_json(path: Path, results: Results, settings: Settings) -> None:
    data = {
        "meta": {
            "started": results.started,
            "settings": asdict(settings),
            "cpus": os.cpu_count(),
            "load_average_1min": results.load,
            "python": platform.python_version(),
            "versions": {
                n: package_version(n) for n in ("dramatiq", "dbos", "psycopg", "redis", "pika")
            },
        },
        "throughput": {
            k: {
                **asdict(t),
                "cpu_total_ms": t.cpu.total_ms if t.cpu else None,
                "workflows_per_s": t.workflows_per_s,
                "steps_per_s": t.steps_per_s,
                "commits_per_step": t.commits_per_step,
            }
            for k, t in results.throughput.items()
        },
        "lateness_ms": {k: asdict(p) for k, p in results.lateness.items()},
        "commit_ceilings": [asdict(c) for c in results.ceilings],
        "ratios": ratios(results),
        "targets": {k: f"{op} {bound}" for k, (op, bound, _) in TARGETS.items() if op},
        "errors": results.errors,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- Orchestration ---------------------------------------------------------------------


sections = comma_separated(SECTIONS, "section(s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=500, help="workflows per system")
    parser.add_argument("--sleepers", type=int, default=50, help="concurrent durable sleeps")
    parser.add_argument("--only", type=sections, help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--json", type=Path, help="also write machine-readable results here")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--dbos-poll", type=float, default=0.01, help="DBOS queue polling_interval_sec"
    )
    parser.add_argument(
        "--pgbench-seconds", type=float, default=5.0, help="per pgbench commit-ceiling run"
    )
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--channel-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--timeout", type=float, default=180.0, help="per measurement, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        workflows=args.workflows,
        sleepers=args.sleepers,
        processes=args.processes,
        threads=args.threads,
        dbos_poll=args.dbos_poll,
        pgbench_s=args.pgbench_seconds,
        admin_url=args.admin_url,
        redis_url=args.redis_url,
        amqp_url=args.amqp_url,
        channel_url=args.channel_url,
        timeout=args.timeout,
        keep=args.keep,
    )


class Failures(Protocol):
    """Where `attempt` records a failed measurement (also benchmarks/fanout.py's results)."""

    @property
    def errors(self) -> dict[str, str]: ...


def attempt(results: Failures, key: str, action: Callable[[], T]) -> T | None:
    print(f"[{key}] running...", file=sys.stderr, flush=True)
    try:
        return action()
    except Exception as exc:
        results.errors[key] = f"{type(exc).__name__}: {exc}"
        print(f"[{key}] failed: {results.errors[key]}", file=sys.stderr, flush=True)
        return None


def run(settings: Settings, chosen: list[str]) -> Results:
    results = Results(load=[os.getloadavg()[0]])
    throughput: dict[str, Callable[[Settings], Throughput]] = {
        **{key: functools.partial(bench_zart, key=key) for key in ZART_TRANSPORTS},
        "dbos": bench_dbos,
        "redis": bench_redis,
    }
    lateness = {"zart-sleep": bench_zart_sleep, "dbos-sleep": bench_dbos_sleep}
    for key in SECTIONS:
        if key not in chosen:
            continue
        if key in throughput:
            if (
                t := attempt(results, key, functools.partial(throughput[key], settings))
            ) is not None:
                results.throughput[key] = t
        elif key in lateness:
            if (p := attempt(results, key, functools.partial(lateness[key], settings))) is not None:
                results.lateness[key] = p
        elif (c := attempt(results, key, functools.partial(bench_pgbench, settings))) is not None:
            results.ceilings = c
    results.load.append(os.getloadavg()[0])
    return results


def cleanup(settings: Settings) -> None:
    _stop_spawned()
    if settings.keep:
        return
    for name in (ZART_DB, DBOS_DB, PGBENCH_DB):
        with suppress(Exception):
            drop_database(settings, name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("psycopg.pool", "dbos"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    workers.exit_on_termination_signals()
    settings = settings_from(args)
    try:
        results = run(settings, args.only or SECTIONS)
    finally:
        cleanup(settings)
    print(render(results, settings))
    if args.json:
        write_json(args.json, results, settings)
        print(f"\nJSON written to {args.json}")
    return 0 if not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
