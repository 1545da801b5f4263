"""How values read on the pages: times, durations, JSON, errors, what an execution waits for."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ...client import BranchInfo, ExecutionInfo, GroupInfo, StepInfo
from ...run import EXECUTION_ID
from .reads import coarse, wake_up

#: Past this many branches or steps a page lists a selection (see ``branches`` and ``steps``).
LISTED_BRANCHES = 100
LISTED_STEPS = 500

BRANCH_ORDER = ("failed", "queued", "pending", "completed", "skipped")


def when(value: datetime | None) -> str:
    """A moment, in UTC to the second."""
    if value is None:
        return "\N{EN DASH}"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None, now: datetime) -> str:
    """A moment relative to ``now``, coarsely: "3 min ago", "in 2 h 5 min", "just now"."""
    if value is None:
        return ""
    delta = now - value
    if abs(delta) < timedelta(seconds=1):
        return "just now"
    return f"{short(delta)} ago" if delta > timedelta(0) else f"in {short(-delta)}"


def short(span: timedelta) -> str:
    """A span to the second under two minutes, then to the minute, hour or day."""
    seconds = span.total_seconds()
    if seconds < 10:
        return f"{seconds:.1f} s"
    return coarse(span)


def duration(value: timedelta | float | None) -> str:
    """A span, to two units: "850 ms", "4.2 s", "3 min 4 s", "2 h 5 min", "3 d 4 h"."""
    if value is None:
        return "\N{EN DASH}"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0.001:
        return "< 1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    for unit, size, sub, sub_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if whole >= size:
            major, rest = divmod(whole, size)
            minor = rest // sub_size
            return f"{major} {unit} {minor} {sub}" if minor else f"{major} {unit}"
    return f"{whole} s"  # pragma: no cover - the loop always returns


def pretty(value: Any) -> str:
    """JSON as stored, indented."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def compact(value: Any, limit: int = 120) -> str:
    """JSON on one line, cut at ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def data(value: Any) -> str:
    """JSON on one line when short, else indented: for input and results."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= 100 else pretty(value)


def error_text(error: dict[str, Any] | None) -> str:
    """A recorded error as "ValueError: boom" (its type's module dropped)."""
    if not error:
        return ""
    kind = str(error.get("type") or "error").rpartition(".")[2]
    return f"{kind}: {error.get('message', '')}"


@dataclass(frozen=True)
class Waiting:
    """What a suspended execution waits for, in words, and when it runs next."""

    text: str
    #: (when, what happens then), if it wakes by itself.
    wakes: tuple[datetime, str] | None


def waiting(info: ExecutionInfo) -> Waiting | None:
    """Describe what ``info`` waits for, if it is suspended."""
    due = wake_up(info)
    wakes = None
    if due is not None:
        then = {
            "sleeping": "the sleep ends",
            "retrying": "the step is tried again",
            "waiting": "the wait times out",
        }[info.status]
        wakes = (due[0], "it times out (deadline)" if due[1] == "deadline" else then)
    if info.status == "sleeping":
        sleeping = [s for s in info.steps if s.kind == "sleep" and s.status == "waiting"]
        name = f"sleep {sleeping[-1].name!r}" if sleeping else "a durable sleep"
        return Waiting(name, wakes)
    if info.status == "retrying":
        retrying = [s for s in info.steps if s.status == "retrying"]
        name = f"the next attempt of step {retrying[-1].name!r}" if retrying else "a retry"
        return Waiting(name, wakes)
    if info.status != "waiting":
        return None
    target = info.waiting_for
    entry = next((s for s in info.steps if s.key == target), None)
    if entry is not None and entry.kind == "group":
        group = next((g for g in info.groups if g.key == target), None)
        left = f" ({group.open} of {group.size} branches open)" if group else ""
        return Waiting(f"group {entry.name!r}{left}", wakes)
    if entry is not None and entry.kind == "child":
        child = next((c for c in info.children if c.step_key == target), None)
        return Waiting(f"child execution {child.id if child else entry.name!r} to end", wakes)
    return Waiting(f"event {target!r}", wakes)


def awaited_event(info: ExecutionInfo) -> str | None:
    """The event name the execution waits for, to fill the send-event form in."""
    if info.status != "waiting" or info.waiting_for is None:
        return None
    if any(s.key == info.waiting_for and s.kind in ("group", "child") for s in info.steps):
        return None
    return info.waiting_for


@dataclass(frozen=True)
class Bar:
    """A step's place on the execution's time line, in percent of its width."""

    left: float
    width: float
    #: The wake-up mark of a sleep or a wait, in percent; None if off the line or none.
    wake: float | None


@dataclass(frozen=True)
class Timeline:
    start: datetime
    end: datetime
    bars: dict[str, Bar]


def timeline(info: ExecutionInfo, now: datetime) -> Timeline:
    """Place each step between the execution's creation and its end (or now)."""
    start = min([info.created_at, *(s.started_at for s in info.steps)])
    end = info.finished_at or now
    end = max([end, *(s.finished_at for s in info.steps if s.finished_at)])
    span = max((end - start).total_seconds(), 1e-3)

    def at(moment: datetime) -> float:
        return min(max((moment - start).total_seconds() / span * 100, 0.0), 100.0)

    bars = {}
    for step in info.steps:
        left = at(step.started_at)
        right = at(step.finished_at or end)
        wake = at(step.wake_at) if step.wake_at and start <= step.wake_at <= end else None
        bars[step.key] = Bar(round(left, 2), round(max(right - left, 0.4), 2), wake)
    return Timeline(start, end, bars)


def step_duration(step: StepInfo, now: datetime) -> str:
    if step.finished_at is None:
        return f"{duration(now - step.started_at)} so far"
    return duration(step.finished_at - step.started_at)


def steps(all_steps: Sequence[StepInfo]) -> tuple[list[StepInfo], int]:
    """The steps to list, and how many are left out (from the middle)."""
    if len(all_steps) <= LISTED_STEPS:
        return list(all_steps), 0
    head = LISTED_STEPS // 5
    tail = LISTED_STEPS - head
    return [*all_steps[:head], *all_steps[-tail:]], len(all_steps) - LISTED_STEPS


def branches(group: GroupInfo) -> tuple[list[BranchInfo], list[tuple[str, int]]]:
    """A group's branches to list, and its branch counts by status.

    Up to LISTED_BRANCHES all are listed; past that, failed, queued and pending
    ones first, LISTED_BRANCHES in all.
    """
    counts = Counter(b.status for b in group.branches)
    order = {s: i for i, s in enumerate(BRANCH_ORDER)}
    by_status = sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    if len(group.branches) <= LISTED_BRANCHES:
        return list(group.branches), by_status
    ranked = sorted(group.branches, key=lambda b: (order.get(b.status, len(order)), b.index))
    return ranked[:LISTED_BRANCHES], by_status


def call(message: Any) -> str:
    """A message's arguments as a call reads them: ``(7, "ada", notify=true)``, cut short."""
    if message is None:
        return ""
    parts = [compact(a, 60) for a in message.args]
    parts += [f"{k}={compact(v, 60)}" for k, v in message.kwargs.items()]
    text = f"({', '.join(parts)})"
    return text if len(text) <= 120 else text[:119] + "…"


def execution_of(message: Any) -> str | None:
    """The durable execution a message belongs to, if it is one of an execution's."""
    if message is None:
        return None
    found = message.options.get(EXECUTION_ID)
    return str(found) if found else None


def sentence(text: str) -> str:
    """``text`` with its first letter upper case, the rest as it was."""
    return text[:1].upper() + text[1:]


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"
