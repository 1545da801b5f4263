"""Durable workflows side by side: zart-dramatiq, DBOS, and a non-durable Dramatiq ceiling.

Run from the repository root, with PostgreSQL and Redis running locally:

    .venv/bin/python -m benchmarks.durable [--workflows N] [--only a,b] [--json out.json]

Sections: zart, dbos, redis, zart-sleep, dbos-sleep. See benchmarks/README.md,
"Durable workflows".
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

if __package__ in (None, ""):
    # Run as a file (python benchmarks/durable.py): make `benchmarks` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks import measure, workers
from benchmarks.measure import Percentiles
from benchmarks.options import comma_separated

T = TypeVar("T")
SECTIONS = ["zart", "dbos", "redis", "zart-sleep", "dbos-sleep"]
STEPS = 10
ZART_DB = "zbench_durable_zart"
DBOS_DB = "zbench_durable_dbos"
ZART_SCHEMA = "bench_durable"
ZART_APP = "benchmarks.apps.durable_zart"
REDIS_APP = "benchmarks.apps.durable_redis"

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
    commits: int | None = None  # pg_stat_database.xact_commit delta, driver's own excluded
    cpu: CpuShare | None = None  # CPU per workflow, mid-drain

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.active_s

    @property
    def steps_per_s(self) -> float:
        return self.workflows * STEPS / self.active_s

    @property
    def commits_per_step(self) -> float | None:
        return None if self.commits is None else self.commits / (self.workflows * STEPS)


@dataclass(frozen=True)
class CpuShare:
    """CPU seconds spent per workflow between 10% and 90% of the drain, by side."""

    worker_ms: float  # the worker processes (Python)
    postgres_ms: float  # their PostgreSQL backends

    @property
    def total_ms(self) -> float:
        return self.worker_ms + self.postgres_ms


@dataclass
class Results:
    throughput: dict[str, Throughput] = field(default_factory=dict)
    lateness: dict[str, Percentiles] = field(default_factory=dict)
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
    admin_url: str
    redis_url: str
    channel_url: str
    timeout: float
    keep: bool

    def db_url(self, name: str) -> str:
        return urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()


# -- PostgreSQL helpers ----------------------------------------------------------------


def recreate_database(settings: Settings, name: str) -> str:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return settings.db_url(name)


def drop_database(settings: Settings, name: str) -> None:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def xact_commits(settings: Settings, name: str) -> int:
    """Committed transactions of database `name`, read from another database.

    Backends publish their counts when idle (at most once a second) or when they exit,
    so callers close their connections to `name` and wait a moment before reading.
    """
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None, f"no statistics for database {name}"
    return int(row[0])


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


def settle_stats() -> None:
    # Exiting backends flush their statistics at once; give them a moment to exit.
    time.sleep(0.5)


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


def with_descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    family, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        family += frontier
    return family


class CpuSampler:
    """Samples the CPU of worker processes and their backends at 10% and 90% of a drain.

    The mid-drain window leaves out worker boot and the tail, and CPU seconds, unlike
    rates, hardly depend on what else the (shared) machine is running.
    """

    def __init__(
        self, settings: Settings, database: str, workers_of: Callable[[], list[int]], poller: Poller
    ) -> None:
        self.settings = settings
        self.database = database
        self.workers_of = workers_of
        self.exclude = poller.conn.info.backend_pid
        self.marks: list[tuple[int, dict[int, float], dict[int, float]]] = []

    def backends(self) -> list[int]:
        with psycopg.connect(self.settings.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                (self.database, self.exclude),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def observe(self, done: int) -> None:
        thresholds = (0.1 * self.settings.workflows, 0.9 * self.settings.workflows)
        if len(self.marks) < 2 and done >= thresholds[len(self.marks)]:
            self.marks.append((done, cpu_seconds(self.workers_of()), cpu_seconds(self.backends())))

    def share(self) -> CpuShare | None:
        if len(self.marks) < 2 or self.marks[1][0] <= self.marks[0][0]:
            return None
        (done0, workers0, pg0), (done1, workers1, pg1) = self.marks
        count = done1 - done0

        def per_workflow(before: dict[int, float], after: dict[int, float]) -> float:
            spent = sum(t - before.get(pid, 0.0) for pid, t in after.items())
            return 1000 * spent / count

        return CpuShare(per_workflow(workers0, workers1), per_workflow(pg0, pg1))


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


@contextmanager
def dbos_workers(url: str, settings: Settings) -> Iterator[list[subprocess.Popen[str]]]:
    procs = []
    try:
        for k in range(settings.processes):
            log = Path(f"/tmp/zbench-dbos-worker-{k}.log")
            argv = ["benchmarks.dbos_workflow", "worker", "--url", url]
            argv += ["--executor-id", f"zbench-w{k}", "--concurrency", str(settings.threads)]
            argv += ["--poll", str(settings.dbos_poll)]
            procs.append(spawn_python(argv, log))
        yield procs
    finally:
        for proc in procs:
            workers.stop(proc, grace=15.0)
            _spawned.discard(proc)


def dead_dbos_worker(procs: list[subprocess.Popen[str]]) -> str | None:
    for k, proc in enumerate(procs):
        if proc.poll() is not None:
            log = f"/tmp/zbench-dbos-worker-{k}.log"
            return f"DBOS worker {k} exited with {proc.returncode} (see {log})"
    return None


def dramatiq_death(worker: workers.WorkerProcess) -> str | None:
    return None if worker.alive() else f"worker exited with {worker.proc.returncode}{worker.why()}"


# -- A. zart-dramatiq ------------------------------------------------------------------


def zart_app(settings: Settings) -> Any:
    """Import the worker app in the driver too (it declares the actors zart.start needs)."""
    os.environ["ZDURABLE_PG_URL"] = settings.db_url(ZART_DB)
    os.environ["ZDURABLE_SCHEMA"] = ZART_SCHEMA
    from benchmarks.apps import durable_zart

    return durable_zart


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


def bench_zart(settings: Settings) -> Throughput:
    url = setup_zart(settings)
    app = zart_app(settings)
    n = settings.workflows
    start_rate = start_zart(app, app.ten_steps, "wf", n)
    # The driver's connections close now, so their commits are published before the baseline.
    app.broker.close()
    settle_stats()
    before = xact_commits(settings, ZART_DB)
    poller = Poller(url)
    env = {"ZDURABLE_PG_URL": url, "ZDURABLE_SCHEMA": ZART_SCHEMA}
    try:
        with workers.running(ZART_APP, settings.processes, settings.threads, env) as worker:
            sampler = CpuSampler(
                settings, ZART_DB, lambda: with_descendants(worker.proc.pid), poller
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
    settle_stats()
    commits = xact_commits(settings, ZART_DB) - before - polls
    return Throughput(n, active, wall, start_rate, commits, sampler.share())


def check_zart_steps(poller: Poller, n: int) -> None:
    query = f"SELECT count(*) FROM {ZART_SCHEMA}.steps WHERE status = 'completed' AND kind = 'step'"
    found = int(poller.scalar(query))
    if found != n * STEPS:
        raise AssertionError(f"expected {n * STEPS} completed steps, found {found}")


def bench_zart_sleep(settings: Settings) -> Percentiles:
    url = ensure_zart(settings)
    app = zart_app(settings)
    env = {"ZDURABLE_PG_URL": url, "ZDURABLE_SCHEMA": ZART_SCHEMA}
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


def database_exists(settings: Settings, name: str) -> bool:
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
    n = settings.workflows
    start_rate = enqueue_dbos(url, settings)
    settle_stats()
    before = xact_commits(settings, DBOS_DB)
    poller = Poller(url)
    spawned = time.time()
    try:
        with dbos_workers(url, settings) as procs:
            sampler = CpuSampler(settings, DBOS_DB, lambda: [p.pid for p in procs], poller)
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
    settle_stats()
    commits = xact_commits(settings, DBOS_DB) - before - polls
    return Throughput(n, float(window), wall, start_rate, commits, sampler.share())


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
    header += ["(worker+pg)", "drain s", "wall s", "start/s"]
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
                f"{cpu.worker_ms:.2f}+{cpu.postgres_ms:.2f}" if cpu else "-",
                fmt(t.active_s, "{:.2f}"),
                fmt(t.wall_s, "{:.2f}"),
                fmt(t.start_rate, "{:,.0f}"),
            ]
        )
    return grid(header, rows)


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
        "",
        lateness_table(results),
        "",
        ratios_table(ratios(results)),
    ]
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
            "versions": {n: package_version(n) for n in ("dramatiq", "dbos", "psycopg", "redis")},
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
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
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
        admin_url=args.admin_url,
        redis_url=args.redis_url,
        channel_url=args.channel_url,
        timeout=args.timeout,
        keep=args.keep,
    )


def attempt(results: Results, key: str, action: Callable[[], T]) -> T | None:
    print(f"[{key}] running...", file=sys.stderr, flush=True)
    try:
        return action()
    except Exception as exc:
        results.errors[key] = f"{type(exc).__name__}: {exc}"
        print(f"[{key}] failed: {results.errors[key]}", file=sys.stderr, flush=True)
        return None


def run(settings: Settings, chosen: list[str]) -> Results:
    results = Results(load=[os.getloadavg()[0]])
    throughput = {"zart": bench_zart, "dbos": bench_dbos, "redis": bench_redis}
    lateness = {"zart-sleep": bench_zart_sleep, "dbos-sleep": bench_dbos_sleep}
    for key in SECTIONS:
        if key not in chosen:
            continue
        if key in throughput:
            if (
                t := attempt(results, key, functools.partial(throughput[key], settings))
            ) is not None:
                results.throughput[key] = t
        elif (p := attempt(results, key, functools.partial(lateness[key], settings))) is not None:
            results.lateness[key] = p
    results.load.append(os.getloadavg()[0])
    return results


def cleanup(settings: Settings) -> None:
    _stop_spawned()
    if settings.keep:
        return
    for name in (ZART_DB, DBOS_DB):
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
