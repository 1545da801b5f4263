"""What the dashboard reads beyond the client's calls: the overview, and what looks stuck.

Every query is in ``queries.sql`` beside this module, read-only, and served by an
index of the executions table; none counts the ended executions of all time
(retention keeps 30 days of them): ended ones are counted over the last hour.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from broker_pg.sqlfile import Queries

from ...client import ExecutionInfo
from ...lifecycle import ACTIVE, STATUSES, TERMINAL
from ...store import Store

#: The overview counts starts and ends over this window, in buckets of BUCKET.
WINDOW = timedelta(hours=1)
BUCKET = timedelta(minutes=5)

#: The executions listed in each panel of "needs attention"; more are only counted.
LISTED = 10
#: Past this many, a panel says "N+" rather than counting them all.
COUNT_CAP = 1000

#: Runs a named query with its parameters; returns its rows.
Fetch = Callable[..., list[tuple[Any, ...]]]

#: Statuses in which an execution is suspended until a wake-up.
SUSPENDED = ("sleeping", "retrying", "waiting")


@dataclass(frozen=True)
class Thresholds:
    """When an execution looks stuck (red) or slow (amber)."""

    #: A wake-up this late, or a pending execution no worker took for this long,
    #: is stuck: a worker resumes a due execution within milliseconds.
    overdue_after: timedelta = timedelta(seconds=30)
    #: An event wait, or a run, this long is worth a look, not an alarm.
    waiting_long_after: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class Flag:
    """Why an execution is highlighted: ``level`` is "stuck" or "slow"."""

    level: str
    text: str


@dataclass(frozen=True)
class Attention:
    """One execution in a panel of "needs attention"."""

    id: str
    actor_name: str
    queue_name: str
    status: str
    #: Since when it is in this state (or its wake-up was due).
    since: datetime
    waiting_for: str | None = None


@dataclass(frozen=True)
class Panel:
    """Executions in one kind of trouble: the first LISTED, and how many there are."""

    title: str
    explanation: str
    #: What the "since" column of the panel means.
    since: str
    items: list[Attention]
    total: int

    @property
    def total_text(self) -> str:
        return f"{COUNT_CAP}+" if self.total >= COUNT_CAP else str(self.total)


@dataclass(frozen=True)
class Bucket:
    """Starts and ends in one slice of the window, ``start`` to ``start + BUCKET``."""

    start: datetime
    started: int
    completed: int
    failed: int
    cancelled: int


@dataclass(frozen=True)
class Oldest:
    """The execution longest in an active status."""

    status: str
    id: str
    actor_name: str
    queue_name: str
    since: datetime
    waiting_for: str | None
    wake_at: datetime | None
    deadline: datetime | None

    @property
    def wakes(self) -> datetime | None:
        """When it runs next by itself (its wake-up or its deadline), if it does."""
        return min((t for t in (self.wake_at, self.deadline) if t is not None), default=None)


@dataclass
class Overview:
    now: datetime
    window: timedelta
    #: Executions now in each active status, and ended in the window in each terminal one.
    by_status: dict[str, int]
    #: actor -> status -> count, as by_status.
    by_actor: dict[str, dict[str, int]]
    #: Executions started in the window, by actor.
    started_by_actor: dict[str, int]
    buckets: list[Bucket]
    oldest: list[Oldest]
    panels: list[Panel] = field(default_factory=list)

    @property
    def started(self) -> int:
        return sum(b.started for b in self.buckets)

    @property
    def open(self) -> int:
        return sum(self.by_status.get(s, 0) for s in ACTIVE)

    @property
    def attention(self) -> int:
        return sum(p.total for p in self.panels)


class Reads:
    """The dashboard's own queries, on ``store``'s database and schema."""

    def __init__(self, store: Store, thresholds: Thresholds) -> None:
        self.store = store
        self.thresholds = thresholds
        self.queries = Queries("zart_dramatiq.http.dashboard", "queries.sql", store.db.schema)

    def _all(self, name: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.store.db.connection() as conn:
            return conn.execute(self.queries[name], params).fetchall()

    def _on(self, conn: psycopg.Connection) -> Fetch:
        """Run this file's queries on ``conn``, and ``store:NAME`` for the store's own."""

        def fetch(name: str, **params: Any) -> list[tuple[Any, ...]]:
            store, _, own = name.partition("store:")
            query = self.store.queries[own] if own else self.queries[store]
            return conn.execute(query, params).fetchall()

        return fetch

    def now(self) -> datetime:
        [(now,)] = self._all("now")
        return now  # type: ignore[no-any-return]

    def run_holder(self, execution_id: str) -> tuple[bool, bool] | None:
        """(whether a worker holds the run, whether that worker is alive); None if unknown."""
        rows = self._all("run_holder", id=execution_id)
        return (bool(rows[0][0]), bool(rows[0][1])) if rows else None

    def overview(self) -> Overview:
        """Everything the overview shows, read on one connection."""
        with self.store.db.connection() as conn:
            return self._overview(self._on(conn))

    def _overview(self, fetch: Fetch) -> Overview:
        [(now,)] = fetch("now")
        since = now - WINDOW
        window = {"now": now, "since": since, "bucket_s": BUCKET.total_seconds()}
        count = int(WINDOW / BUCKET)
        started = [0] * count
        ended: dict[str, list[int]] = defaultdict(lambda: [0] * count)
        by_status: Counter[str] = Counter()
        by_actor: dict[str, Counter[str]] = defaultdict(Counter)
        started_by_actor: Counter[str] = Counter()
        for actor, ago, n in fetch("started", **window):
            started[_slot(ago, count)] += n
            started_by_actor[actor] += n
        for status, actor, ago, n in fetch("ended", **window):
            ended[status][_slot(ago, count)] += n
            by_status[status] += n
            by_actor[actor][status] += n
        for status, actor, n in fetch("store:open_executions"):
            by_status[status] += n
            by_actor[actor][status] += n
        buckets = [
            Bucket(
                start=now - BUCKET * (slot + 1),
                started=started[slot],
                completed=ended["completed"][slot],
                failed=ended["failed"][slot] + ended["timed_out"][slot],
                cancelled=ended["cancelled"][slot],
            )
            for slot in reversed(range(count))
        ]
        oldest = [Oldest(*row) for row in fetch("oldest")]
        actors = sorted(set(by_actor) | set(started_by_actor))
        return Overview(
            now=now,
            window=WINDOW,
            by_status={s: by_status.get(s, 0) for s in STATUSES},
            by_actor={a: dict(by_actor[a]) for a in actors},
            started_by_actor=dict(started_by_actor),
            buckets=buckets,
            oldest=oldest,
            panels=self._panels(fetch, now),
        )

    def _panels(self, fetch: Fetch, now: datetime) -> list[Panel]:
        """The executions that look stuck, by kind of trouble."""
        grace = self.thresholds.overdue_after
        params = {"before": now - grace, "cap": COUNT_CAP, "limit": LISTED}
        overdue = fetch("overdue", **params)
        unclaimed = fetch("unclaimed", **params)
        orphaned = fetch("orphaned", **params)
        return [
            Panel(
                "Wake-up overdue",
                f"sleeping, retrying or waiting past their wake-up or deadline by more than "
                f"{coarse(grace)}: no worker ran their resuming message (is one consuming the "
                "queue?)",
                "Was due",
                [
                    Attention(i, actor, queue, status, due, waiting_for)
                    for _, i, actor, queue, status, waiting_for, due in overdue
                    if i is not None
                ],
                int(overdue[0][0]),
            ),
            Panel(
                "Not picked up",
                f"pending for more than {coarse(grace)}: started or retried, and no worker "
                "took them (is one consuming the queue?)",
                "Pending since",
                [
                    Attention(i, actor, queue, "pending", since)
                    for _, i, actor, queue, since in unclaimed
                    if i is not None
                ],
                int(unclaimed[0][0]),
            ),
            Panel(
                "Run without a live worker",
                f"running for more than {coarse(grace)} while no live worker holds the run: "
                "the worker was lost; its message is redelivered after the lease timeout",
                "Running since",
                [
                    Attention(i, actor, queue, "running", since)
                    for _, i, actor, queue, since in orphaned
                    if i is not None
                ],
                int(orphaned[0][0]),
            ),
        ]


def _slot(ago: int, count: int) -> int:
    """The bucket of a row ``ago`` buckets before now (a row newer than now: the last)."""
    return min(max(ago, 0), count - 1)


def flags(info: ExecutionInfo, now: datetime, thresholds: Thresholds) -> list[Flag]:
    """Why ``info`` should catch the eye, measured at ``now`` (the database's clock)."""
    if info.status in TERMINAL:
        return []
    found: list[Flag] = []
    if info.blocked is not None:
        kind = f" ({info.blocked.kind.replace('_', ' ')})" if info.blocked.kind else ""
        found.append(
            Flag(
                "stuck",
                f"blocked: its replay diverged from its journal at {info.blocked.step}{kind}; "
                "deploy code that replays it (it then resumes by itself), or fail it",
            )
        )
    in_state = now - info.updated_at
    due = wake_up(info)
    if due is not None and now - due[0] > thresholds.overdue_after:
        what = "deadline" if due[1] == "deadline" else "wake-up"
        found.append(Flag("stuck", f"{what} overdue by {coarse(now - due[0])}"))
    if info.status == "pending" and in_state > thresholds.overdue_after:
        found.append(
            Flag(
                "stuck",
                f"not picked up for {coarse(in_state)}: "
                f"is a worker consuming queue {info.queue_name!r}?",
            )
        )
    if not found and in_state > thresholds.waiting_long_after:
        if info.status == "waiting":
            found.append(Flag("slow", f"waiting for {coarse(in_state)}"))
        elif info.status == "running":
            found.append(Flag("slow", f"running for {coarse(in_state)}"))
    return found


def wake_up(info: ExecutionInfo) -> tuple[datetime, str] | None:
    """When a suspended execution runs next, and why: ("wake_at" or "deadline")."""
    if info.status not in SUSPENDED:
        return None
    times = [(info.wake_at, "wake_at"), (info.deadline, "deadline")]
    return min(((at, by) for at, by in times if at is not None), default=None)


def coarse(span: timedelta) -> str:
    """A coarse duration: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
