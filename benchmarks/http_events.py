"""HTTP events load check: events posted over the HTTP API to waiting durable executions.

Run from the repository root (PostgreSQL: DATABASE_URL, else the embedded one):

    .venv/bin/python -m benchmarks.http_events [--quick] [--rate R] [--seconds S]
        [--executions N] [--json out.json]

Issue 9's load check: 10,000 executions wait for events; `zart-dramatiq serve` (one
uvicorn process) takes `POST /api/v1/executions/{id}/events/go?key=K` at 1,000 requests/s
for 60 s, open loop; then the database must show every event consumed exactly once. See
benchmarks/README.md, "HTTP events".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import platform
import random
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

if __package__ in (None, ""):
    # Run as a file (python benchmarks/http_events.py): make `benchmarks` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from benchmarks import durable, measure, workers
from benchmarks.durable import (
    Poller,
    close_pg_connections,
    cpu_seconds,
    dramatiq_death,
    drop_database,
    fmt,
    grid,
    package_version,
    recreate_database,
    spawn_python,
    with_descendants,
)
from benchmarks.measure import Percentiles
from benchmarks.options import non_negative_int
from benchmarks.pg_spend import Spend, SpendMeter
from benchmarks.report import Target, target, verdict

T = TypeVar("T")
DB = "zbench_http_events"
SCHEMA = "bench_http"
APP = "benchmarks.apps.http_events_zart"
#: application_name of the sessions, per side: the CPU of PostgreSQL is split by it.
API_NAME, WORKER_NAME = "zbench-api", "zbench-worker"
PREFIX = "ev"
#: The issue's size, and --quick's smoke run.
SIZES = {"executions": 10_000, "rate": 1_000.0, "seconds": 60.0}
QUICK_SIZES = {"executions": 1_000, "rate": 200.0, "seconds": 10.0}
#: Stop waiting for the executions to end when none ended for this long.
STALL_S = 60.0
PROGRESS_EVERY_S = 5.0
#: The rate counts as kept when the last answer comes at most this long after the last
#: request was due (the achieved rate then is within ~2% of the target over 60 s).
KEPT_S = 1.0


def progress(text: str) -> None:
    print(f"[http-events] {text}", file=sys.stderr, flush=True)


# -- Settings and the plan of requests ---------------------------------------------------


@dataclass(frozen=True)
class Settings:
    executions: int
    rate: float  # requests per second, open loop
    seconds: float
    duplicates: float  # share of the requests that re-send an event already sent
    connections: int  # the client's, at most
    client: str  # "http11" (lean, the default) or "httpx"
    processes: int
    threads: int
    admin_url: str
    server: str  # where admin_url leads, for the report (no password)
    request_timeout: float
    timeout: float  # for the executions to park, and to end after the load
    profile: Path | None
    no_auth: bool  # serve --no-auth: what checking the API key costs
    keep: bool
    seed: int

    @property
    def requests(self) -> int:
        return round(self.rate * self.seconds)

    def db_url(self, name: str) -> str:
        return urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()


@dataclass(frozen=True)
class Plan:
    """Which event each request carries, in the order they are sent.

    Execution ``i`` waits for ``counts[i]`` events ``go``, keys ``go-0``, ``go-1``...,
    sent round by round (all executions' first event, then all second ones...), so an
    execution's next event comes one round (~executions / rate seconds) after the one
    before. A duplicate re-sends an event (same key, same payload) halfway between it and
    the next event of its execution: that execution cannot have ended yet, so the answer
    must be 202 with ``stored: false``.
    """

    counts: list[int]
    nonces: list[list[str]]
    requests: list[tuple[int, int, bool]]  # (execution, seq, duplicate)

    @property
    def events(self) -> int:
        return sum(self.counts)

    @property
    def duplicates(self) -> int:
        return len(self.requests) - self.events

    def payload(self, i: int, seq: int) -> dict[str, Any]:
        return {"execution": i, "seq": seq, "nonce": self.nonces[i][seq]}


def execution_id(i: int) -> str:
    return f"{PREFIX}-{i}"


def event_key(seq: int) -> str:
    return f"go-{seq}"


def wait_key(seq: int) -> str:
    """The journal key of an execution's wait number ``seq`` (zart numbers repeats)."""
    return "event:go" if seq == 0 else f"event:go#{seq + 1}"


def make_plan(executions: int, total: int, share: float, rng: random.Random) -> Plan:
    duplicates = int(total * share)
    events = total - duplicates
    if events < executions:
        raise ValueError(
            f"{total:,} requests leave {events:,} events for {executions:,} executions: "
            "each needs at least one (raise --rate or --seconds, or lower --executions)"
        )
    counts = [events // executions + (i < events % executions) for i in range(executions)]
    order = [(i, k) for k in range(max(counts)) for i in range(executions) if k < counts[i]]
    position = {event: p for p, event in enumerate(order)}
    # Only an event followed by another to the same execution can be re-sent safely.
    eligible = [(i, k) for i, k in order if k < counts[i] - 1]
    if duplicates > len(eligible):
        raise ValueError(
            f"{duplicates:,} duplicates need as many events followed by another one to the "
            f"same execution; this plan has {len(eligible):,}: lower --duplicates"
        )
    keyed = [(float(p), i, k, False) for p, (i, k) in enumerate(order)]
    for j in range(duplicates):
        i, k = eligible[j * len(eligible) // duplicates]
        keyed.append(((position[i, k] + position[i, k + 1]) / 2, i, k, True))
    keyed.sort(key=lambda item: (item[0], item[3]))
    nonces = [[f"{rng.getrandbits(32):08x}" for _ in range(c)] for c in counts]
    return Plan(counts, nonces, [(i, k, dup) for _, i, k, dup in keyed])


# -- The load: an open-loop async client -------------------------------------------------


@dataclass(frozen=True)
class Answer:
    due: float  # when the schedule said to send it (loop clock)
    started: float  # when it got a connection and went out
    ended: float
    status: str  # "202", "409"..., or the client's error ("timeout", "ConnectError")
    code: str | None  # the error's code from the JSON body
    stored: bool | None  # 202's "stored"


@dataclass(frozen=True)
class Load:
    t0: float
    answers: list[Answer]


Outcome = tuple[str, str | None, bool | None]  # status, error code, stored


def outcome(status: int, body: bytes) -> Outcome:
    """What an answer says: 202 with ``stored``, or the status with the error's code."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if status == 202 and isinstance(document, dict):
        return "202", None, document.get("stored") is True
    code = None
    with suppress(KeyError, TypeError):
        code = str(document["error"]["code"])  # type: ignore[index]
    return str(status), code, None


class Slots(Generic[T]):
    """Items lent first come, first served: a request waiting for a connection keeps its place.

    asyncio.Queue is not fair: a ``get`` that finds an item returned a moment ago takes it
    ahead of the waiters it was meant for, which go to the back. Under overload, the
    requests scheduled last would then overtake those waiting longest, by minutes, and the
    events of one execution would arrive out of the order they were sent.
    """

    def __init__(self, items: Iterable[T]) -> None:
        self.free = deque(items)
        self.waiters: deque[asyncio.Future[T]] = deque()

    async def take(self) -> T:
        if self.free and not self.waiters:
            return self.free.popleft()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def give_back(self, item: T) -> None:
        if self.waiters:
            self.waiters.popleft().set_result(item)
        else:
            self.free.append(item)


class Http11:
    """A lean HTTP/1.1 client for the load: ``size`` keep-alive connections, one request each
    at a time, opened before the clock starts (a broken one is opened again on next use).

    httpx's AsyncClient costs this machine ~1 ms of CPU per request with 8 connections and
    ~3 ms with 32 (its connection pool): a half to a whole core of the two at 1,000/s, taken
    from the server it measures. This one writes the request in one piece and reads the
    status line, the headers and a Content-Length body.
    """

    def __init__(self, base_url: str, token: str, size: int, timeout: float) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"Host: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.size, self.timeout = size, timeout
        self.idle: Slots[list[Any]] = Slots([])

    async def __aenter__(self) -> Http11:
        opened = [asyncio.open_connection(self.host, self.port) for _ in range(self.size)]
        self.idle = Slots([list(pair) for pair in await asyncio.gather(*opened)])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer in self.idle.free:
            if writer is not None:
                writer.close()

    async def send(self, path: str, body: bytes) -> tuple[float, Outcome]:
        """When it got a connection (loop clock), and the answer."""
        connection = await self.idle.take()
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.timeout):
                if connection[1] is None:
                    connection[:] = await asyncio.open_connection(self.host, self.port)
                reader, writer = connection
                writer.write(
                    b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (path.encode(), self.head, len(body), body)
                )
                status = int((await reader.readline()).split(b" ", 2)[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                return started, outcome(status, await reader.readexactly(length))
        except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
            if connection[1] is not None:
                connection[1].close()
            connection[:] = [None, None]
            failure = "timeout" if isinstance(e, TimeoutError) else type(e).__name__
            return started, (failure, None, None)
        finally:
            self.idle.give_back(connection)


class Httpx:
    """The same through ``httpx.AsyncClient`` (``--client httpx``), for comparison."""

    def __init__(self, base_url: str, token: str, size: int, timeout: float) -> None:
        import httpx

        self.size = size
        self.slots = Slots(range(size))
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            timeout=httpx.Timeout(timeout),
        )

    async def __aenter__(self) -> Httpx:
        await self.client.__aenter__()
        # Every connection opened before the clock starts: connecting is not measured.
        await asyncio.gather(*(self.client.get("/healthz") for _ in range(self.size)))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.__aexit__(*exc)

    async def send(self, path: str, body: bytes) -> tuple[float, Outcome]:
        import httpx

        slot = await self.slots.take()
        started = asyncio.get_running_loop().time()
        try:
            response = await self.client.post(path, content=body)
        except httpx.TimeoutException:
            return started, ("timeout", None, None)
        except httpx.HTTPError as error:
            return started, (type(error).__name__, None, None)
        finally:
            self.slots.give_back(slot)
        return started, outcome(response.status_code, response.content)


CLIENTS: dict[str, type[Http11 | Httpx]] = {"http11": Http11, "httpx": Httpx}


async def post_events(base_url: str, token: str, plan: Plan, settings: Settings) -> Load:
    """Send ``plan.requests`` at ``settings.rate``, whatever the answers take (open loop).

    At most ``settings.connections`` requests are in flight; a request due while all are
    busy waits for one, and that wait counts in its latency from the schedule.
    """
    prepared = [
        (
            f"/api/v1/executions/{execution_id(i)}/events/go?key={event_key(k)}",
            json.dumps(plan.payload(i, k)).encode(),
        )
        for i, k, _ in plan.requests
    ]
    answers: list[Answer | None] = [None] * len(prepared)
    client_class = CLIENTS[settings.client]
    async with client_class(
        base_url, token, settings.connections, settings.request_timeout
    ) as client:
        loop = asyncio.get_running_loop()

        async def post(j: int, due: float) -> None:
            started, (status, code, stored) = await client.send(*prepared[j])
            answers[j] = Answer(due, started, loop.time(), status, code, stored)

        t0 = loop.time() + 0.05
        tasks = []
        for j in range(len(prepared)):
            due = t0 + j / settings.rate
            # sleep(0) when late still lets the requests in flight go on.
            await asyncio.sleep(max(due - loop.time(), 0.0))
            tasks.append(loop.create_task(post(j, due)))
            if j % 5_000 == 4_999:
                done = sum(a is not None for a in answers)
                progress(f"{j + 1:,} requests due, {done:,} answered")
        await asyncio.gather(*tasks)
    return Load(t0, [a for a in answers if a is not None])


# -- Processes: the workers, the API, and what their CPU cost ----------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_env(settings: Settings, name: str) -> dict[str, str]:
    return {"ZHTTP_PG_URL": settings.db_url(DB), "ZHTTP_SCHEMA": SCHEMA, "ZHTTP_APP_NAME": name}


@contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in os.environ for the block (spawn_python passes os.environ on)."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Api:
    proc: Any  # subprocess.Popen
    log: Path
    base_url: str

    def why(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return f"API exited with {self.proc.returncode}: {' | '.join(lines[-3:])} (see {self.log})"


@contextmanager
def serving(settings: Settings) -> Iterator[Api]:
    """`zart-dramatiq --broker APP:broker serve` in a process of its own, until ready."""
    import httpx

    port = free_port()
    command = ["--broker", f"{APP}:broker", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--no-auth"] if settings.no_auth else []
    args = (
        ["benchmarks.profiled", str(settings.profile), "--", *command]
        if settings.profile
        else ["zart_dramatiq.cli", *command]
    )
    log = Path(f"/tmp/zbench-http-api-{port}.log")
    with environment(app_env(settings, API_NAME)):
        proc = spawn_python(args, log)
    api = Api(proc, log, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise workers.WorkerDied(api.why())
            with suppress(httpx.TransportError):
                if httpx.get(f"{api.base_url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not answer /readyz within 60 s (see {log})")
            time.sleep(0.1)
        yield api
    except BaseException:
        progress(f"the API's log is kept: {log}")
        raise
    else:
        log.unlink(missing_ok=True)  # one access-log line per request
    finally:
        # SIGTERM: uvicorn shuts down gracefully (and a profiled run writes its profile).
        workers.stop(proc, grace=30.0)
        durable._spawned.discard(proc)


#: The sides whose CPU is read: processes, and the PostgreSQL backends serving them.
SIDES = ["api", "api_pg", "workers", "workers_pg", "driver"]
SIDE_LABELS = {
    "api": "API process (uvicorn)",
    "api_pg": "  its PostgreSQL backends",
    "workers": "worker processes",
    "workers_pg": "  their PostgreSQL backends",
    "driver": "driver (the load's client)",
    "other": "rest of the machine",
    "machine": "machine, all CPUs",
}


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / durable._TICK


@dataclass(frozen=True)
class CpuMark:
    at: float  # time.monotonic()
    seconds: dict[str, dict[int, float]]  # side -> pid -> CPU seconds
    machine: float


class CpuMeter:
    """CPU of each side at chosen moments; PostgreSQL backends told apart by application_name."""

    def __init__(self, admin_url: str, api: Api, worker: workers.WorkerProcess, poller: Poller):
        self.admin_url, self.api, self.worker = admin_url, api, worker
        self.exclude = poller.conn.info.backend_pid

    def backends(self) -> dict[str, list[int]]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> %s",
                (DB, self.exclude),
            ).fetchall()
        found: dict[str, list[int]] = {"api_pg": [], "workers_pg": []}
        for pid, name in rows:
            found["api_pg" if str(name).startswith(API_NAME) else "workers_pg"].append(int(pid))
        return found

    def mark(self) -> CpuMark:
        pids = {
            "api": with_descendants(self.api.proc.pid),
            "workers": with_descendants(self.worker.proc.pid),
            "driver": [os.getpid()],
            **self.backends(),
        }
        return CpuMark(
            time.monotonic(), {side: cpu_seconds(p) for side, p in pids.items()}, machine_busy_s()
        )


@dataclass(frozen=True)
class CpuSpan:
    seconds: float  # wall
    cpu: dict[str, float]  # side -> CPU seconds, with "other" and "machine"

    def cores(self, side: str) -> float:
        return self.cpu[side] / self.seconds


def span(a: CpuMark, b: CpuMark) -> CpuSpan:
    cpu = {
        side: sum(t - a.seconds[side].get(pid, 0.0) for pid, t in b.seconds[side].items())
        for side in SIDES
    }
    cpu["machine"] = b.machine - a.machine
    cpu["other"] = max(cpu["machine"] - sum(cpu[s] for s in SIDES), 0.0)
    return CpuSpan(b.at - a.at, cpu)


# -- Verification: what the database says ------------------------------------------------


@dataclass
class Verification:
    executions: int = 0
    completed: int = 0
    #: Completed with the tags of the events their waits consumed, which are the ones sent.
    results_match: int = 0
    #: Each wait consumed the oldest event left: the k-th wait, the k-th event stored.
    arrival_order: int = 0
    #: Events stored in the order they were sent (the client's doing, for information).
    send_order: int = 0
    events_expected: int = 0  # distinct keys sent
    event_rows: int = 0
    consumed: int = 0  # rows consumed by a wait
    consumed_twice: int = 0  # waits that consumed two events
    stored_answers: Counter[int] = field(default_factory=Counter)  # stored=true answers per key
    duplicates_sent: int = 0
    unstored_answers: int = 0  # answered 202 stored=false
    problems: list[str] = field(default_factory=list)

    @property
    def keys_stored_once(self) -> int:
        return self.stored_answers[1]

    @property
    def ok(self) -> bool:
        return (
            self.completed == self.executions
            and self.results_match == self.executions
            and self.arrival_order == self.executions
            and self.event_rows == self.events_expected
            and self.consumed == self.events_expected
            and self.consumed_twice == 0
            and self.keys_stored_once == self.events_expected
            and self.unstored_answers == self.duplicates_sent
        )

    def problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)


def verify(url: str, plan: Plan, load: Load, tag: Callable[[Any], str]) -> Verification:
    """Every execution completed with its events' tags; every event stored and consumed once."""
    v = Verification(executions=len(plan.counts), events_expected=plan.events)
    stored: Counter[tuple[int, int]] = Counter()
    for (i, k, dup), a in zip(plan.requests, load.answers, strict=True):
        stored[i, k] += a.stored is True
        v.duplicates_sent += dup
        v.unstored_answers += a.status == "202" and a.stored is False
    v.stored_answers = Counter(stored.values())
    for (i, k), n in stored.items():
        if n != 1:
            v.problem(f"{execution_id(i)} {event_key(k)}: answered stored=true {n} times")
    with psycopg.connect(url, autocommit=True) as conn:
        executions = {
            eid: (status, result)
            for eid, status, result in conn.execute(
                f"SELECT id, status, result FROM {SCHEMA}.executions WHERE id LIKE %s",
                (f"{PREFIX}-%",),
            )
        }
        rows = conn.execute(
            f"SELECT execution_id, key, payload, consumed_by FROM {SCHEMA}.events"
            " WHERE name = 'go' ORDER BY id"
        ).fetchall()
    v.event_rows = len(rows)
    # Per execution, its events in the order they were stored.
    inbox: dict[str, list[tuple[str, Any, str | None]]] = {}
    for execution, key, payload, consumed_by in rows:
        inbox.setdefault(execution, []).append((key, payload, consumed_by))
        v.consumed += consumed_by is not None
    for i, count in enumerate(plan.counts):
        eid = execution_id(i)
        status, result = executions.get(eid, ("missing", None))
        v.completed += status == "completed"
        if status != "completed":
            v.problem(f"{eid}: {status}")
        events = inbox.get(eid, [])
        keys = [key for key, _, _ in events]
        v.send_order += keys == [event_key(k) for k in range(count)]
        if sorted(keys) != sorted(event_key(k) for k in range(count)):
            v.problem(f"{eid}: events {keys}, expected {count}")
        by_wait: dict[str, Any] = {}
        for key, payload, consumed_by in events:
            if consumed_by is None:
                v.problem(f"{eid} {key}: never consumed")
            elif consumed_by in by_wait:
                v.consumed_twice += 1
                v.problem(f"{eid}: {consumed_by} consumed two events")
            else:
                by_wait[consumed_by] = payload
            if payload != plan.payload(i, int(key.removeprefix("go-"))):
                v.problem(f"{eid} {key}: stored payload {payload!r} is not the one sent")
        waits = [consumed_by for _, _, consumed_by in events]
        if waits == [wait_key(k) for k in range(count)]:
            v.arrival_order += 1
        else:
            v.problem(f"{eid}: events stored {keys} were consumed by {waits}")
        consumed = [by_wait.get(wait_key(k)) for k in range(count)]
        sent = sorted(tag(plan.payload(i, k)) for k in range(count))
        if None in consumed:
            continue
        tags = [tag(p) for p in consumed]
        if result == " ".join(tags) and sorted(tags) == sent:
            v.results_match += 1
        elif status == "completed":
            v.problem(f"{eid}: result {result!r}, consumed {tags}")
    return v


def consumption_lags(url: str) -> list[float]:
    """Seconds from an event's commit to the commit of the wait that consumed it."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"""SELECT extract(epoch FROM s.finished_at - e.sent_at)::float8
                  FROM {SCHEMA}.events AS e
                  JOIN {SCHEMA}.steps AS s
                    ON s.execution_id = e.execution_id AND s.step_key = e.consumed_by"""
        ).fetchall()
    return [float(row[0]) for row in rows]


def consumed_window(url: str) -> float:
    """First event stored -> last execution ended, from the database's clock."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            f"""SELECT extract(epoch FROM
                       (SELECT max(finished_at) FROM {SCHEMA}.executions)
                     - (SELECT min(sent_at) FROM {SCHEMA}.events))::float8"""
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else float("nan")


# -- One run ------------------------------------------------------------------------------


@dataclass
class Results:
    plan_events: int = 0
    plan_duplicates: int = 0
    counts: tuple[int, int] = (0, 0)  # fewest and most events per execution
    start_rate: float | None = None  # executions started per second by the driver
    park_s: float | None = None  # worker spawn -> every execution waiting
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # "202 stored", "409 ..."
    accepted: int = 0
    achieved_rate: float | None = None  # 202s / (last answer - first due time)
    sent_rate: float | None = None  # requests put on the wire per second
    last_answer_s: float | None = None  # first due time -> last answer
    latency: Percentiles | None = None  # on the wire
    from_schedule: Percentiles | None = None  # from the due time: includes waiting for a slot
    consumption: Percentiles | None = None  # event stored -> consumed
    consumed_rate: float | None = None  # events / (first stored -> last execution ended)
    drain_s: float | None = None  # last answer -> last execution ended
    load_cpu: CpuSpan | None = None  # first due time -> last answer
    total_cpu: CpuSpan | None = None  # first due time -> last execution ended
    spend: Spend | None = None
    verification: Verification | None = None
    errors: dict[str, str] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def status_of(a: Answer) -> str:
    if a.status == "202":
        return "202 stored" if a.stored else "202 duplicate (stored: false)"
    return f"{a.status} {a.code}" if a.code else a.status


def start_executions(app: Any, plan: Plan) -> float:
    import zart_dramatiq as zart

    started = time.perf_counter()
    for i, count in enumerate(plan.counts):
        zart.start(app.waits_for_go, i, count, execution_id=execution_id(i))
        if i % 2_000 == 1_999:
            progress(f"{i + 1:,} executions started")
    return len(plan.counts) / (time.perf_counter() - started)


def wait_parked(poller: Poller, worker: workers.WorkerProcess, n: int, timeout: float) -> float:
    query = f"SELECT count(*) FROM {SCHEMA}.executions WHERE status = 'waiting'"
    shown = [time.monotonic()]

    def report(done: int) -> None:
        if time.monotonic() - shown[0] > PROGRESS_EVERY_S:
            shown[0] = time.monotonic()
            progress(f"{done:,}/{n:,} executions waiting")

    died = lambda: dramatiq_death(worker)  # noqa: E731
    durable.wait_until(poller, query, (), n, timeout, died, report)
    return time.time() - worker.started


def wait_ended(poller: Poller, worker: workers.WorkerProcess, n: int, timeout: float) -> int:
    """Until all ``n`` completed, nothing moved for STALL_S, or ``timeout``; the count."""
    query = f"SELECT count(*) FROM {SCHEMA}.executions WHERE status = 'completed'"
    deadline = time.monotonic() + timeout
    last, moved, shown = -1, time.monotonic(), time.monotonic()
    while (done := int(poller.scalar(query))) < n:
        now = time.monotonic()
        if done != last:
            last, moved = done, now
        if (death := dramatiq_death(worker)) is not None:
            raise workers.WorkerDied(f"{death} after {done:,}/{n:,} completed")
        if now - moved > STALL_S or now > deadline:
            progress(f"stopped waiting: {done:,}/{n:,} completed")
            return done
        if now - shown > PROGRESS_EVERY_S:
            shown = now
            progress(f"{done:,}/{n:,} executions completed")
        time.sleep(0.2)
    return done


def run(settings: Settings) -> Results:
    from broker_pg import migrate
    from zart_dramatiq.api_keys import ApiKeys
    from zart_dramatiq.middleware import middleware_for

    results = Results(load=[os.getloadavg()[0]])
    plan = make_plan(
        settings.executions, settings.requests, settings.duplicates, random.Random(settings.seed)
    )
    results.plan_events, results.plan_duplicates = plan.events, plan.duplicates
    results.counts = (min(plan.counts), max(plan.counts))
    results.requests = len(plan.requests)
    url = recreate_database(settings, DB)
    migrate(url, schema=SCHEMA)
    os.environ.update(app_env(settings, "zbench-driver"))
    app = importlib.import_module(APP)
    _, token = ApiKeys(middleware_for(app.broker).store).create(["events"], name="zbench")
    progress(
        f"starting {settings.executions:,} executions ({plan.events:,} events, "
        f"{results.counts[0]}-{results.counts[1]} each)"
    )
    results.start_rate = start_executions(app, plan)
    close_pg_connections(app)
    env = app_env(settings, WORKER_NAME)
    with workers.running(APP, settings.processes, settings.threads, env) as worker:
        poller = Poller(url)
        try:
            results.park_s = wait_parked(poller, worker, settings.executions, settings.timeout)
        finally:
            poller.close()
        progress(f"all {settings.executions:,} executions waiting after {results.park_s:.1f} s")
        meter = SpendMeter(settings.admin_url, url, DB, SCHEMA)
        with serving(settings) as api:
            meter.begin()
            poller = Poller(url)
            try:
                cpu = CpuMeter(settings.admin_url, api, worker, poller)
                progress(
                    f"posting {len(plan.requests):,} events at {settings.rate:,.0f}/s "
                    f"for {settings.seconds:g} s to {api.base_url}"
                )
                before = cpu.mark()
                load = asyncio.run(post_events(api.base_url, token, plan, settings))
                after_load = cpu.mark()
                progress("all answered; waiting for the executions to end")
                wait_ended(poller, worker, settings.executions, settings.timeout)
                ended = cpu.mark()
            finally:
                polls = poller.queries
                poller.close()
    # The API and the workers have stopped: their backends published their statistics.
    results.spend = meter.end(polls)
    results.load_cpu = span(before, after_load)
    results.total_cpu = span(before, ended)
    results.drain_s = ended.at - after_load.at
    summarize_load(results, load)
    results.consumption = measure.summarize(consumption_lags(url)) if plan.events else None
    window = consumed_window(url)
    results.consumed_rate = plan.events / window if window > 0 else None
    results.verification = verify(url, plan, load, app.tag)
    close_pg_connections(app)
    results.load.append(os.getloadavg()[0])
    return results


def summarize_load(results: Results, load: Load) -> None:
    answers = load.answers
    results.statuses = dict(Counter(status_of(a) for a in answers).most_common())
    results.accepted = sum(a.status == "202" for a in answers)
    last = max(a.ended for a in answers)
    results.last_answer_s = last - load.t0
    results.achieved_rate = results.accepted / results.last_answer_s
    results.sent_rate = len(answers) / max(max(a.started for a in answers) - load.t0, 1e-9)
    results.latency = measure.summarize([a.ended - a.started for a in answers])
    results.from_schedule = measure.summarize([a.ended - a.due for a in answers])


# -- Report -------------------------------------------------------------------------------


def targets(results: Results, settings: Settings) -> list[Target]:
    v = results.verification
    errors = results.requests - results.accepted if results.requests else None
    return [
        target(
            f"{settings.rate:,.0f}/s kept: last answer <= {settings.seconds:g} s + {KEPT_S:g} s",
            results.last_answer_s,
            settings.seconds + KEPT_S,
            False,
            "{:.2f} s",
        ),
        target("requests not answered 202", errors, 0, False, "{:,.0f}"),
        target(
            "events consumed exactly once",
            v.consumed - v.consumed_twice if v else None,
            float(v.events_expected) if v else None,
            True,
            "{:,.0f}",
        ),
        target(
            "executions completed with their payloads",
            float(v.results_match) if v else None,
            float(v.executions) if v else None,
            True,
            "{:,.0f}",
        ),
    ]


def answers_table(results: Results) -> str:
    rows = [
        [status, f"{count:,}", f"{count / max(results.requests, 1):.1%}"]
        for status, count in results.statuses.items()
    ]
    return grid(["answers", "requests", "share"], rows)


def latency_table(results: Results) -> str:
    rows = []
    for label, p in (
        ("request, on the wire", results.latency),
        ("request, from its scheduled time", results.from_schedule),
        ("event stored -> consumed (database)", results.consumption),
    ):
        if p is None:
            rows.append([label, "-", "-", "-"])
            continue
        cells = [fmt(p.p50_ms, "{:,.1f}"), fmt(p.p99_ms, "{:,.1f}"), fmt(p.max_ms, "{:,.1f}")]
        rows.append([label, *cells])
    return grid(["latency", "p50 ms", "p99 ms", "max ms"], rows)


def verification_lines(v: Verification) -> list[str]:
    def row(text: str, found: int, wanted: int) -> list[str]:
        return [text, f"{found:,} / {wanted:,}", "✓" if found == wanted else "✗"]

    rows = [
        row("executions completed", v.completed, v.executions),
        row("  with the payloads of the events they consumed", v.results_match, v.executions),
        row("  each wait took the oldest event left", v.arrival_order, v.executions),
        row("event rows / distinct keys sent", v.event_rows, v.events_expected),
        row("events consumed exactly once", v.consumed - v.consumed_twice, v.events_expected),
        row("keys answered stored=true once", v.keys_stored_once, v.events_expected),
        row("answers 202 stored=false / duplicates sent", v.unstored_answers, v.duplicates_sent),
    ]
    lines = grid(["verification (database and answers)", "found", ""], rows).splitlines()
    lines.append(
        f"(events stored in the order sent: {v.send_order:,} of {v.executions:,} executions)"
    )
    return lines + [f"  problem: {p}" for p in v.problems]


def cpu_table(results: Results) -> str:
    load, total = results.load_cpu, results.total_cpu
    assert load is not None and total is not None
    n = max(results.requests, 1)
    header = ["CPU", "load: cores", "load+drain: CPU s", "ms/request"]
    rows = [
        [
            SIDE_LABELS[side],
            f"{load.cores(side):.2f}",
            f"{total.cpu[side]:.1f}",
            f"{1000 * total.cpu[side] / n:.2f}",
        ]
        for side in [*SIDES, "other", "machine"]
    ]
    return grid(header, rows)


def bound_lines(results: Results) -> list[str]:
    total = results.total_cpu
    if total is None or not results.requests:
        return []
    per = {side: 1000 * total.cpu[side] / results.requests for side in total.cpu}
    cores = os.cpu_count() or 1
    ours = sum(per[s] for s in SIDES)
    return [
        f"one API process, its own CPU {per['api']:.2f} ms/request: at most "
        f"{1000 / per['api']:,.0f} requests/s on one core (its Python runs under one GIL)"
        if per["api"]
        else "one API process: no CPU measured",
        f"API + its backends {per['api'] + per['api_pg']:.2f} ms/request; with the workers, "
        f"their backends and the driver {ours:.2f} ms: at most {cores * 1000 / ours:,.0f} "
        f"requests/s on {cores} CPUs if nothing else ran",
    ]


def spend_lines(results: Results) -> list[str]:
    spend = results.spend
    if spend is None or not results.requests:
        return []
    wal = spend.wal
    wal_bytes = wal.bytes if wal.bytes is not None else wal.server_bytes
    return [
        f"database, per request: {spend.commits / results.requests:.2f} commits, "
        f"{wal_bytes / results.requests:,.0f} WAL bytes"
        + ("" if wal.bytes is not None else " (whole server)")
        + f"; rows per request: {spend.rows_line(results.requests)}"
    ]


def render(results: Results, settings: Settings) -> str:
    load = " -> ".join(f"{x:.1f}" for x in results.load)
    api = "one `zart-dramatiq serve` process (uvicorn)"
    api += ", --no-auth" if settings.no_auth else ""
    api += ", under yappi: rates NOT comparable" if settings.profile else ""
    parts = [
        f"HTTP events: {results.requests:,} requests at {settings.rate:,.0f}/s for "
        f"{settings.seconds:g} s ({results.plan_events:,} events + {results.plan_duplicates:,} "
        f"re-sent duplicates) to {settings.executions:,} executions waiting for "
        f"{results.counts[0]}-{results.counts[1]} events each; API: {api}; client: "
        f"{settings.client}, at most {settings.connections} connections; workers "
        f"{settings.processes} processes x {settings.threads} threads; PostgreSQL "
        f"{settings.server}; {os.cpu_count()} CPUs, 1-min load average {load}",
        "",
        f"started {settings.executions:,} executions at {fmt(results.start_rate, '{:,.0f}')}/s; "
        f"all waiting {fmt(results.park_s, '{:.1f}')} s after the workers were spawned",
    ]
    if results.statuses:
        parts += [
            "",
            answers_table(results),
            "",
            f"accepted {results.accepted:,} of {results.requests:,}: "
            f"{fmt(results.achieved_rate, '{:,.0f}')}/s accepted (target "
            f"{settings.rate:,.0f}/s), sent at {fmt(results.sent_rate, '{:,.0f}')}/s; "
            f"last answer {fmt(results.last_answer_s, '{:.2f}')} s after the first due time",
            f"consumed {results.plan_events:,} events at {fmt(results.consumed_rate, '{:,.0f}')}/s "
            f"(first stored -> last execution ended); the last execution ended "
            f"{fmt(results.drain_s, '{:.1f}')} s after the last answer",
            "",
            latency_table(results),
        ]
    if results.verification:
        parts += ["", *verification_lines(results.verification)]
    if results.total_cpu:
        parts += ["", cpu_table(results), *bound_lines(results), *spend_lines(results)]
    rows = [[t.text, t.shown, verdict(t)] for t in targets(results, settings)]
    parts += ["", grid(["target", "actual", ""], rows)]
    if results.errors:
        parts += ["", "Errors:", *(f"  {k}: {v}" for k, v in results.errors.items())]
    return "\n".join(parts)


def write_json(path: Path, results: Results, settings: Settings) -> None:
    v = results.verification
    data = {
        "meta": {
            "started": results.started,
            "settings": {
                **asdict(settings),
                "admin_url": settings.server,
                "profile": str(settings.profile) if settings.profile else None,
            },
            "cpus": os.cpu_count(),
            "load_average_1min": results.load,
            "python": platform.python_version(),
            "versions": {
                n: package_version(n)
                for n in ("dramatiq", "psycopg", "fastapi", "uvicorn", "httpx", "starlette")
            },
        },
        "results": {
            **{
                k: value
                for k, value in asdict(results).items()
                if k not in ("verification", "load_cpu", "total_cpu", "spend")
            },
            "cpu_seconds": {
                "load": asdict(results.load_cpu) if results.load_cpu else None,
                "load_and_drain": asdict(results.total_cpu) if results.total_cpu else None,
            },
            "spend": asdict(results.spend) if results.spend else None,
        },
        "verification": (
            {**asdict(v), "stored_answers": dict(v.stored_answers), "ok": v.ok} if v else None
        ),
        "targets": [asdict(t) for t in targets(results, settings)],
        "errors": results.errors,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# -- Command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke-run sizes: {QUICK_SIZES} instead of {SIZES}"
    )
    parser.add_argument("--executions", type=int, help="executions waiting for events")
    parser.add_argument("--rate", type=float, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, help="how long to send")
    parser.add_argument(
        "--duplicates",
        type=float,
        default=0.1,
        help="share of the requests that re-send an event already sent (same key): 0.1",
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="the client's connections, at most (64)"
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="http11",
        help="http11: a lean asyncio HTTP/1.1 client (default); httpx: httpx.AsyncClient",
    )
    parser.add_argument("--json", type=Path, help="also write machine-readable results here")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--admin-url",
        help="a database of the server to create the benchmark database from "
        "(default: DATABASE_URL, else the embedded PostgreSQL)",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=30.0, help="per request, seconds (30)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="for the executions to park, and to end after the load, seconds (900)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the API under yappi and write PATH.txt and PATH.pstat (slows it down)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve --no-auth: no API key checked (to measure what the check costs)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=1, help="for the payloads' nonces")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    from broker_pg.database import describe, resolve_url

    admin_url = resolve_url(args.admin_url)  # DATABASE_URL, else the embedded server
    if args.admin_url or os.environ.get("DATABASE_URL"):
        server = describe(admin_url)
    else:
        server = f"embedded (pgserver, {urlsplit(admin_url).query.removeprefix('host=')})"
    sizes = QUICK_SIZES if args.quick else SIZES
    return Settings(
        executions=args.executions or int(sizes["executions"]),
        rate=args.rate or sizes["rate"],
        seconds=args.seconds or sizes["seconds"],
        duplicates=args.duplicates,
        connections=args.connections,
        client=args.client,
        processes=args.processes,
        threads=args.threads,
        admin_url=admin_url,
        server=server,
        request_timeout=args.request_timeout,
        timeout=args.timeout,
        profile=args.profile.resolve() if args.profile else None,
        no_auth=args.no_auth,
        keep=args.keep,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workers.exit_on_termination_signals()
    settings = settings_from(args)
    results = Results()
    try:
        results = run(settings)
    except Exception as exc:
        results.errors["run"] = f"{type(exc).__name__}: {exc}"
        progress(f"failed: {results.errors['run']}")
    finally:
        if not settings.keep:
            with suppress(Exception):
                drop_database(settings, DB)
    print(render(results, settings))
    if args.json:
        write_json(args.json, results, settings)
        print(f"\nJSON written to {args.json}")
    # Missing the rate is a figure to report; a refused request or a lost event is a failure.
    v = results.verification
    ok = not results.errors and v is not None and v.ok and results.accepted == results.requests
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
