"""The scheduler: in each worker process, a loop that starts the due ticks of schedules.

There is no leader: every worker process runs one, and the database decides.
Each round is one transaction (``Scheduler.run_once``):

1. lock the due schedules of the actors this worker declares (``claim_due``:
   ``FOR UPDATE SKIP LOCKED``, so a schedule another scheduler holds is skipped,
   never waited for), reading the database's ``now()``, the only clock used;
2. for each, pick the ticks to start (``fire_times.plan``: catch-up), apply the
   overlap policy, and start each tick as ``zart.start`` does, in this
   transaction: ``lifecycle.create`` with the tick's own id
   (``schedule:<name>:<tick>``, ``ON CONFLICT DO NOTHING``) and its first
   message (on broker_pg, a row of this transaction too);
3. move ``next_fire_at`` past those ticks, and commit.

So a tick is started once: the lock keeps two schedulers from handling a
schedule at once, the advance commits with the starts, and the id makes a
second start of the same tick a no-op whatever happens. A worker killed
mid-round leaves an open transaction that PostgreSQL rolls back when its
session ends (its locks go with it): no execution, no message, no advance; the
next scheduler to look does the round again. One stopped (SIGSTOP) mid-round
has its session ended by the server after 30 s idle in the transaction.

Between rounds the loop sleeps until the next tick, at most ``CAP`` seconds,
and wakes at once when a schedule is created or resumed anywhere (NOTIFY).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import psycopg

from broker_pg import PostgresBroker
from broker_pg.errors import ConfigurationError
from broker_pg.notifications import Subscription

from . import client, fire_times, schedules
from .actor import DurableActor
from .background import BackgroundLoop
from .errors import InvalidSchedule, UnknownExecution
from .lifecycle import ACTIVE
from .metrics import count
from .middleware import DurableMiddleware
from .store import Transaction, transient

logger = logging.getLogger(__name__)

#: The longest the loop sleeps between two looks at the schedules, in seconds.
CAP = 1.0
#: Schedules handled per round (the rest are due still: the next round follows at once).
CLAIM_LIMIT = 20
#: Ticks one schedule starts per round when it catches up with ``catchup="all"``.
TICKS_PER_CLAIM = 100
#: How soon to look again at a due schedule that another scheduler holds, in seconds.
RETRY_SOON = 0.05


@dataclass(frozen=True)
class Claimed:
    """A due schedule as a round locked it, with the database's now()."""

    name: str
    actor_name: str
    cron: str | None
    every_s: int | None
    tz: str
    overlap: str
    catchup: str
    catchup_window_s: float
    args: list[Any]
    kwargs: dict[str, Any]
    next_fire_at: datetime | None
    last_execution_id: str | None
    buffered_tick: datetime | None
    #: The status of ``last_execution_id``; None once it is gone (purged).
    last_status: str | None
    now: datetime

    @property
    def timing(self) -> fire_times.Timing:
        return fire_times.Timing(cron=self.cron, every_s=self.every_s, tz=self.tz)


@dataclass
class Fired:
    """What a round did with one schedule."""

    name: str
    #: The executions it started (and, with ``created`` False, found started already).
    started: list[str] = field(default_factory=list)
    created: int = 0
    #: Due ticks passed over by catch-up, and held back by the overlap policy.
    missed_catchup: int = 0
    missed_overlap: int = 0
    #: Executions it cancelled (``cancel_previous``).
    cancelled: list[str] = field(default_factory=list)
    #: ``buffer_one``: the tick kept for later, if any.
    buffered: datetime | None = None
    #: Why the schedule's start failed (its ticks were then passed over).
    error: str | None = None


class Scheduler(BackgroundLoop):
    """The schedules loop of one worker process (started by the middleware at boot)."""

    name = "zart-scheduler"

    def __init__(self, middleware: DurableMiddleware, *, cap: float = CAP) -> None:
        super().__init__()
        self.middleware = middleware
        self.store = middleware.store
        self.queries = schedules.queries_for(self.store)
        self.channel = schedules.channel_for(self.store)
        self.cap = cap
        self.retry_after = cap
        #: The code definitions written so far, by name.
        self._written: dict[str, schedules.Definition] = {}
        self._subscription: Subscription | None = None

    # -- The loop ------------------------------------------------------------------

    def setup(self) -> None:
        # Without a LISTEN session (transaction pooling), looking every CAP is enough.
        with contextlib.suppress(ConfigurationError):
            self._subscription = self.store.db.notifications.subscribe(
                self.channel, on_notify=lambda _: self.wake()
            )

    def teardown(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def round(self) -> float:
        self.define()
        return 0.0 if self.run_once() else self._idle()

    def _idle(self) -> float:
        """Seconds to sleep: until the next tick this worker can fire, at most ``cap``."""
        with self.store.db.connection() as conn:
            row = conn.execute(
                self.queries["next_due"],
                {"actors": sorted(self._actors()), "active": sorted(ACTIVE)},
            ).fetchone()
        assert row is not None
        next_in, buffered_ready = row
        if buffered_ready:
            return RETRY_SOON
        if next_in is None:
            return self.cap
        # Due already, yet not claimed: another scheduler holds it for a moment.
        return min(self.cap, max(float(next_in), RETRY_SOON))

    # -- Definitions in code -----------------------------------------------------------

    def define(self) -> int:
        """Write the schedules this worker's actors define in code and that it has not
        written yet (at boot, and for actors declared later); return how many."""
        broker = self.middleware.broker
        if broker is None:
            return 0
        written = 0
        for definition in schedules.definitions(broker):
            if self._written.get(definition.name) == definition:
                continue
            try:
                self.store.atomically(partial(self._write, definition))
            except InvalidSchedule as e:
                logger.error("Schedule %r is not written: %s", definition.name, e)
            self._written[definition.name] = definition
            written += 1
        return written

    def _write(self, definition: schedules.Definition, tx: Transaction) -> int:
        return schedules.upsert(self.store, tx, [definition], source="code")

    # -- A round -----------------------------------------------------------------------

    def run_once(self) -> list[Fired]:
        """One round: start the due ticks of the schedules this worker can fire."""
        actors = self._actors()
        if not actors:
            return []
        return self.store.atomically(lambda tx: self._claim(tx, actors))

    def _actors(self) -> dict[str, DurableActor]:
        broker = self.middleware.broker
        if broker is None:
            return {}
        found = dict(broker.actors)
        return {name: a for name, a in found.items() if isinstance(a, DurableActor)}

    def _claim(self, tx: Transaction, actors: dict[str, DurableActor]) -> list[Fired]:
        tx.conn.execute(self.queries["bound_idle"])
        rows = tx.conn.execute(
            self.queries["claim_due"],
            {"actors": sorted(actors), "active": sorted(ACTIVE), "limit": CLAIM_LIMIT},
        ).fetchall()
        done = []
        for row in rows:
            claimed = Claimed(*row)
            sent = len(tx.after_commit)
            try:
                with tx.conn.transaction():  # a savepoint: one broken schedule stops no other
                    fired = self._fire(tx, claimed, actors[claimed.actor_name])
            except Exception as error:
                if transient(error) or isinstance(error, psycopg.OperationalError):
                    raise
                del tx.after_commit[sent:]  # messages of the starts rolled back
                fired = self._failed(tx, claimed, error)
            done.append(fired)
        tx.after_commit.append(lambda: _count(done))
        return done

    def _fire(self, tx: Transaction, claimed: Claimed, actor: DurableActor) -> Fired:
        fired = Fired(claimed.name)
        last_id = claimed.last_execution_id
        active = claimed.last_status in ACTIVE
        buffered = claimed.buffered_tick
        if buffered is not None and not active:
            last_id = schedules.tick_execution_id(claimed.name, buffered)
            active = self._start(tx, claimed, actor, last_id, fired)
            buffered = None
        next_fire_at, last_tick = claimed.next_fire_at, None
        if next_fire_at is not None and next_fire_at <= claimed.now:
            plan = fire_times.plan(
                claimed.timing,
                due_from=next_fire_at,
                now=claimed.now,
                catchup=claimed.catchup,
                window=timedelta(seconds=claimed.catchup_window_s),
                limit=TICKS_PER_CLAIM,
            )
            fired.missed_catchup = plan.missed
            for tick in plan.fire:
                if active and claimed.overlap == "skip":
                    fired.missed_overlap += 1
                    continue
                if active and claimed.overlap == "buffer_one":
                    if buffered is None:
                        buffered = tick
                    else:
                        fired.missed_overlap += 1
                    continue
                if active and claimed.overlap == "cancel_previous" and last_id is not None:
                    self._cancel(tx, last_id)
                    fired.cancelled.append(last_id)
                last_id = schedules.tick_execution_id(claimed.name, tick)
                active = self._start(tx, claimed, actor, last_id, fired)
            next_fire_at, last_tick = plan.next_fire_at, plan.last
        fired.buffered = buffered
        tx.conn.execute(
            self.queries["advance"],
            {
                "name": claimed.name,
                "next_fire_at": next_fire_at,
                "last_tick": last_tick,
                "last_execution_id": last_id,
                "buffered_tick": buffered,
                "started": fired.created,
                "missed": fired.missed_catchup + fired.missed_overlap,
            },
        )
        if fired.missed_catchup:
            logger.warning(
                "Schedule %r: %d due tick(s) passed over by catch-up %r (no scheduler could "
                "start them in time); the latest due was %s.",
                claimed.name,
                fired.missed_catchup,
                claimed.catchup,
                last_tick,
            )
        return fired

    def _start(
        self,
        tx: Transaction,
        claimed: Claimed,
        actor: DurableActor,
        execution_id: str,
        fired: Fired,
    ) -> bool:
        """Start ``execution_id``; return whether it is active (a new one is)."""
        fired.started.append(execution_id)
        if schedules.start_in(
            self.middleware, tx, actor, claimed.args, claimed.kwargs, execution_id
        ):
            fired.created += 1
            return True
        # Started before (a backfill, a trigger's key, a round that committed): once only.
        row = self.store.run(tx, "execution_status", id=execution_id)
        return row is not None and row[0] in ACTIVE

    def _cancel(self, tx: Transaction, execution_id: str) -> None:
        """Cancel ``execution_id`` as ``zart.cancel`` does: in this transaction on broker_pg,
        else in its own, committed first (the tick's start is idempotent either way)."""
        broker = self.middleware.broker
        try:
            if self.middleware.transport.atomic:
                assert isinstance(broker, PostgresBroker)
                with broker.transaction(tx.conn):
                    client.cancel(execution_id, broker=broker)
            else:
                client.cancel(execution_id, broker=broker)
        except UnknownExecution:
            pass  # purged meanwhile: nothing to cancel

    def _failed(self, tx: Transaction, claimed: Claimed, error: Exception) -> Fired:
        """The schedule's starts failed (its input no longer fits the actor, say): pass over
        its due ticks, keep the error for operators, and go on with the other schedules."""
        logger.error(
            "Schedule %r: could not start its tick (%s: %s); its due ticks are passed over. "
            "Fix the schedule or its actor, then backfill them if they should run.",
            claimed.name,
            type(error).__name__,
            error,
            exc_info=error,
        )
        fired = Fired(claimed.name, error=f"{type(error).__name__}: {error}")
        next_fire_at, last_tick = claimed.next_fire_at, None
        try:
            if next_fire_at is not None and next_fire_at <= claimed.now:
                timing = claimed.timing
                fired.missed_catchup = timing.count(next_fire_at, claimed.now)
                last_tick = timing.last_at_or_before(claimed.now)
                next_fire_at = timing.next_after(claimed.now)
        except Exception:
            logger.exception("Schedule %r: its timing fails too; it stops.", claimed.name)
            next_fire_at = None
        tx.conn.execute(
            self.queries["start_failed"],
            {
                "name": claimed.name,
                "next_fire_at": next_fire_at,
                "last_tick": last_tick,
                "error": fired.error,
                "missed": fired.missed_catchup,
            },
        )
        return fired


def _count(done: Sequence[Fired]) -> None:
    """Count a committed round's ticks in the metrics."""
    for fired in done:
        if fired.created:
            count("schedule_ticks_started", fired.created, schedule=fired.name)
        reason = "error" if fired.error is not None else "catchup"
        if fired.missed_catchup:
            count("schedule_ticks_missed", fired.missed_catchup, schedule=fired.name, reason=reason)
        if fired.missed_overlap:
            count(
                "schedule_ticks_missed", fired.missed_overlap, schedule=fired.name, reason="overlap"
            )
