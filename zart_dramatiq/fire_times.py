"""When a schedule fires: its ticks, and which of the due ones to start (catch-up).

Pure computation with no clock of its own: every function takes the instant it
reasons from, which the scheduler reads from the database (``now()``), never
from the worker.

A cron expression (croniter's syntax) is read on the wall clock of the
schedule's time zone, then each wall time is mapped to one instant:

* a wall time that does not exist (the spring-forward gap: 02:30 on the day
  Europe/Berlin goes from 02:00 to 03:00) fires at the first instant after the
  gap (03:00 CEST);
* a wall time that occurs twice (fall-back: 02:00-02:59 on the day Berlin goes
  from 03:00 back to 02:00) fires once, at its first occurrence (CEST);
* wall times that map to the same instant (several in one gap) fire once.

An interval (``every``) is a whole number of seconds, aligned on the Unix epoch
in UTC (every hour fires on the hour, UTC); time zones and DST do not apply.
Ticks are whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

#: The catch-up policies: what to do with the ticks that came due while no scheduler
#: could start them (workers down, the database away).
CATCHUPS = ("none", "latest", "all")

#: ``catchup="none"``: how late a tick may still start; one found later is missed.
ON_TIME = timedelta(seconds=10)

#: Ticks counted one by one when catch-up passes over them; past it, the rest of a
#: cron schedule's are estimated from their spacing (an interval's are computed).
COUNTED = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Timing:
    """When a schedule ticks: a cron expression read in ``tz``, or every ``every_s`` seconds."""

    cron: str | None = None
    every_s: int | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("a Timing takes a cron expression or an interval, exactly one")

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def next_after(self, instant: datetime) -> datetime | None:
        """The first tick strictly after ``instant``; None if there is none."""
        return next(self.after(instant), None)

    def first_at_or_after(self, instant: datetime) -> datetime | None:
        """The first tick at ``instant`` or later."""
        return self.next_after(instant - _MICROSECOND)

    def last_at_or_before(self, instant: datetime) -> datetime | None:
        """The latest tick at ``instant`` or earlier; None if there is none."""
        if self.every_s is not None:
            step = self.every_s * 1_000_000
            return _EPOCH + _MICROSECOND * ((_micros(instant) // step) * step)
        assert self.cron is not None
        wall = _floor(instant).astimezone(self.zone).replace(tzinfo=None)
        try:
            before = croniter(self.cron, wall + _SECOND).get_prev(datetime)
        except CroniterBadDateError:
            return None
        # Every wall time up to ``wall`` maps to ``instant`` or earlier; a later one may
        # too, when ``instant`` is in the second pass of a repeated hour: look ahead.
        latest = self._instant(before)
        for tick in self.after(latest):
            if tick > instant:
                break
            latest = tick
        return latest

    def after(self, instant: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``instant``, in order, each once."""
        if self.every_s is not None:
            step = self.every_s * 1_000_000
            k = _micros(instant) // step + 1
            while True:
                yield _EPOCH + _MICROSECOND * (k * step)
                k += 1
        assert self.cron is not None
        wall = _floor(instant).astimezone(self.zone).replace(tzinfo=None)
        walls = croniter(self.cron, wall)
        last = instant
        while True:
            try:
                tick = self._instant(walls.get_next(datetime))
            except CroniterBadDateError:
                return
            # Several wall times may map to one instant (a gap), and the rest of a
            # repeated hour maps before ``instant``: each instant once, in order.
            if tick > last:
                yield tick
                last = tick

    def between(self, start: datetime, end: datetime, *, limit: int) -> list[datetime]:
        """The ticks in [start, end], in order, at most ``limit``."""
        ticks: list[datetime] = []
        for tick in self.after(start - _MICROSECOND):
            if tick > end or len(ticks) == limit:
                break
            ticks.append(tick)
        return ticks

    def count(self, start: datetime, end: datetime) -> int:
        """How many ticks fall in [start, end]: computed for an interval; for a cron
        expression counted up to ``COUNTED``, the rest estimated from their spacing."""
        if end < start:
            return 0
        if self.every_s is not None:
            step = self.every_s * 1_000_000
            return max(0, _micros(end) // step - (_micros(start) - 1) // step)
        ticks = self.between(start, end, limit=COUNTED)
        if len(ticks) < COUNTED:
            return len(ticks)
        spacing = (ticks[-1] - ticks[0]) / (len(ticks) - 1)
        return len(ticks) + int((end - ticks[-1]) / spacing)

    def _instant(self, wall: datetime) -> datetime:
        """The instant a naive wall time of the zone fires at (see the module's rules)."""
        if self.tz == "UTC":
            return wall.replace(tzinfo=UTC)
        first = wall.replace(tzinfo=self.zone)  # fold=0: the first of a repeated time
        at = first.astimezone(UTC)
        if at.astimezone(self.zone).replace(tzinfo=None) == wall:
            return at
        # In a gap. Read with the offset from after the transition (fold=1), the wall
        # time falls before it; with the one from before (fold=0), after it.
        before = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        return _transition(self.zone, before, at)


@dataclass(frozen=True)
class Plan:
    """What one claim of a due schedule does with its ticks."""

    #: The ticks to start now, in order (the overlap policy may still hold some back).
    fire: list[datetime]
    #: How many due ticks catch-up passes over.
    missed: int
    #: The latest tick considered (fired or passed over); None if none was due.
    last: datetime | None
    #: The earliest tick not considered yet; None if the schedule never ticks again.
    next_fire_at: datetime | None


def plan(
    timing: Timing,
    *,
    due_from: datetime,
    now: datetime,
    catchup: str,
    window: timedelta,
    limit: int,
) -> Plan:
    """Which of the ticks in [due_from, now] to start, by the ``catchup`` policy.

    ``now`` is the database's. A tick older than ``window`` (``ON_TIME`` for
    ``none``) never starts. ``latest`` starts the most recent due tick if it is
    within the window, ``none`` too (its window is ``ON_TIME``: a tick found on
    time starts, a missed one does not), ``all`` every due tick within the
    window, oldest first, at most ``limit`` per claim (the rest stay due).
    """
    if catchup not in CATCHUPS:
        raise ValueError(f"unknown catch-up policy {catchup!r}: use one of {', '.join(CATCHUPS)}")
    if catchup == "all":
        oldest = max(due_from, now - window)
        missed = timing.count(due_from, oldest - _MICROSECOND)
        fire = timing.between(oldest, now, limit=limit)
        considered = timing.last_at_or_before(oldest - _MICROSECOND) if missed else None
        if fire:
            considered = fire[-1]
        # A full batch leaves the rest due: the next claim goes on from there.
        rest_from = fire[-1] if len(fire) == limit else now
        return Plan(fire, missed, considered, timing.next_after(rest_from))
    if catchup == "none":
        window = ON_TIME
    latest = timing.last_at_or_before(now)
    if latest is None or latest < due_from:
        return Plan([], 0, None, timing.next_after(now))
    fire = [latest] if now - latest <= window else []
    missed = timing.count(due_from, latest) - len(fire)
    return Plan(fire, missed, latest, timing.next_after(now))


def _micros(instant: datetime) -> int:
    return (instant - _EPOCH) // _MICROSECOND


def _floor(instant: datetime) -> datetime:
    """``instant`` in UTC, to the whole second below."""
    return instant.astimezone(UTC).replace(microsecond=0)


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] with the UTC offset ``after`` has: the
    moment a spring-forward gap ends. Transitions fall on whole seconds."""
    target = after.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)
