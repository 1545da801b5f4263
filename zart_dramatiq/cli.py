"""The ``zart-dramatiq`` command: migrations, queues, dead letters and durable executions.

Examples::

    zart-dramatiq migrate
    zart-dramatiq queues
    zart-dramatiq dead-letters list --queue orders
    zart-dramatiq executions show order-42
    zart-dramatiq replay-check --app myapp.tasks --since 7d
    zart-dramatiq executions wait order-42 --timeout 5m
    zart-dramatiq executions purge --older-than 30d
    zart-dramatiq send-event order-42 shipment_ready '{"tracking_number": "1Z999"}'
    zart-dramatiq schedules pause nightly
    zart-dramatiq serve --host 0.0.0.0 --port 8000 --broker myapp.tasks:broker
    zart-dramatiq keys create --scope read --scope events --name webhooks
    zart-dramatiq keys revoke 3f9a0c12d4e5
    zart-dramatiq embedded status

The database is ``--url``, else ``DATABASE_URL``, else the embedded server;
the schema is ``--schema``, else ``ZART_SCHEMA``, else ``zart``. An
application whose workers run on another broker (Redis, RabbitMQ) passes
``--broker myapp:broker`` so that wake-ups are sent through that broker.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import dramatiq
import psycopg
from dramatiq.cli import import_broker
from dramatiq.errors import BrokerError

import zart_dramatiq as zart
from broker_pg import Database, PostgresBroker, embedded, migrate

from .api_keys import SCOPES, ApiKey, ApiKeys
from .client import BranchInfo, ChildInfo, ExecutionInfo, GroupInfo
from .errors import UnknownActor, ZartError
from .lifecycle import STATUSES, TERMINAL
from .middleware import middleware_for
from .serialization import dump
from .store import Store

PROG = "zart-dramatiq"

T = TypeVar("T")

#: The exit status of `embedded status` when the server is down, as for `pg_ctl status`.
EXIT_NOT_RUNNING = 3

#: At most this many branches of a group, or children, are listed one by one; past
#: it, `executions show` gives counts by status and lists the failed and running ones.
LISTED = 20

#: A branch's statuses, in the order of its life.
BRANCH_STATUSES = ("pending", "queued", "completed", "failed", "skipped")

#: What an execution listing leaves out: `executions show ID` loads them.
NOT_LISTED = ("steps", "groups", "children")

#: What wakes an execution suspended in each status, unless its deadline comes first.
WAKE_REASONS = {
    "sleeping": "the sleep ends",
    "waiting": "the event wait times out",
    "retrying": "the step is retried",
    "blocked": "its replay is tried again",
}


class CommandError(Exception):
    """A request the command cannot carry out; reported as one line on stderr."""


class Session:
    """The broker (and database) one command talks to, opened on first use."""

    def __init__(self, url: str | None, schema: str | None, broker_spec: str | None) -> None:
        if broker_spec and (url or schema):
            raise CommandError(
                "--url and --schema cannot be combined with --broker: the imported broker "
                "already names its database and schema"
            )
        self.url = url
        self.schema = schema or os.environ.get("ZART_SCHEMA") or "zart"
        self.broker_spec = broker_spec
        self._broker: dramatiq.Broker | None = None
        self._owned = False

    @property
    def broker(self) -> dramatiq.Broker:
        if self._broker is None:
            if self.broker_spec:
                self._broker = _import_broker(self.broker_spec)
            else:
                self._broker = PostgresBroker(self.url, schema=self.schema)
                self._owned = True
        return self._broker

    def postgres_broker(self, command: str) -> PostgresBroker:
        """The broker, which ``command`` needs to be a broker_pg PostgresBroker."""
        broker = self.broker
        if not isinstance(broker, PostgresBroker):
            raise CommandError(
                f"{command} works on broker_pg's queues, but --broker {self.broker_spec} "
                f"is a {type(broker).__name__}"
            )
        return broker

    @property
    def schema_name(self) -> str:
        """The schema in use: the imported broker's, once imported, else the configured one."""
        return self.database.schema if self._broker is not None else self.schema

    @property
    def database(self) -> Database:
        """Where executions (and, on broker_pg, messages) are kept."""
        broker = self.broker
        if isinstance(broker, PostgresBroker):
            return broker.db
        return middleware_for(broker).store.db

    def api_keys(self) -> ApiKeys:
        """The API keys of the schema in use."""
        return ApiKeys(Store(self.database))

    def close(self) -> None:
        if self._owned and self._broker is not None:
            self._broker.close()


def _import_broker(spec: str) -> dramatiq.Broker:
    # Like the dramatiq command, resolve application modules from the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        _, broker = import_broker(spec)
    except (BrokerError, ZartError):
        raise  # the application's own configuration errors already say what is wrong
    except Exception as e:
        raise CommandError(f"--broker {spec}: {type(e).__name__}: {e}") from e
    return broker  # type: ignore[no-any-return]


# -- Commands ---------------------------------------------------------------


def cmd_migrate(session: Session, args: argparse.Namespace) -> int:
    db = session.database if session.broker_spec else None
    url, schema = (db.url, db.schema) if db else (session.url, session.schema)
    applied = migrate(url, schema=schema)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print(f"schema {schema!r} is up to date")
    return 0


def cmd_queues(session: Session, args: argparse.Namespace) -> int:
    broker = session.postgres_broker("queues")
    # Queues the imported application declares are listed even when empty.
    stats, workers = broker.queue_stats(), broker.live_workers()
    if args.json:
        _print_json(
            {
                "queues": [{"queue": q.queue_name, **dataclasses.asdict(q)} for q in stats],
                "workers": [dataclasses.asdict(w) for w in workers],
            }
        )
        return 0
    print(
        _table(
            ("queue", "queued", "delayed", "parked", "claimed", "dead_letters", "oldest due (s)"),
            [dataclasses.astuple(q) for q in stats],
            empty="no queues",
        )
    )
    print()
    print(
        _table(
            ("worker", "hostname", "pid", "started", "heartbeat (s ago)", "claimed"),
            [dataclasses.astuple(w) for w in workers],
            empty="no live workers",
        )
    )
    return 0


def cmd_dead_letters_list(session: Session, args: argparse.Namespace) -> int:
    broker = session.postgres_broker("dead-letters")
    letters = broker.list_dead_letters(args.queue, limit=args.limit)
    if args.json:
        _print_json([dataclasses.asdict(d) for d in letters])
        return 0
    print(
        _table(
            ("id", "queue", "actor", "message_id", "deliveries", "dead_at", "error"),
            [
                (
                    d.id,
                    d.queue_name,
                    d.actor_name,
                    d.message_id,
                    d.deliveries,
                    d.dead_at,
                    _first_line(d.error),
                )
                for d in letters
            ],
            empty="no dead letters",
        )
    )
    return 0


def cmd_dead_letters_requeue(session: Session, args: argparse.Namespace) -> int:
    if args.ids and args.all:
        raise CommandError("give dead-letter IDs or --all, not both")
    if not (args.ids or args.queue or args.all):
        raise CommandError(
            "refusing to requeue every dead letter: give IDs, --queue QUEUE, or --all"
        )
    broker = session.postgres_broker("dead-letters")
    count = broker.requeue_dead_letters(args.ids or None, queue_name=args.queue)
    print(f"requeued {count} dead letter{'' if count == 1 else 's'}")
    return 0


def cmd_dead_letters_purge(session: Session, args: argparse.Namespace) -> int:
    if not (args.queue or args.older_than is not None or args.all):
        raise CommandError(
            "refusing to purge every dead letter: give --queue QUEUE, --older-than SECONDS, "
            "or --all"
        )
    broker = session.postgres_broker("dead-letters")
    count = broker.purge_dead_letters(queue_name=args.queue, older_than=args.older_than)
    print(f"purged {count} dead letter{'' if count == 1 else 's'}")
    return 0


def cmd_executions_list(session: Session, args: argparse.Namespace) -> int:
    executions = zart.list_executions(args.status, limit=args.limit, broker=session.broker)
    if args.json:
        # A listing does not load steps, groups or children: `executions show ID` has them.
        _print_json([_listed(e) for e in executions])
        return 0
    # The parent column only when some listed execution is a child.
    parents = any(e.parent_id is not None for e in executions)
    headers = ("id", "actor", "status", "waiting_for", "wake_at", "created", "updated")
    print(
        _table(
            (*headers, "parent") if parents else headers,
            [
                (
                    e.id,
                    e.actor_name,
                    e.status,
                    e.waiting_for,
                    e.wake_at,
                    e.created_at,
                    e.updated_at,
                    *((e.parent_id,) if parents else ()),
                )
                for e in executions
            ],
            empty="no executions",
        )
    )
    return 0


def cmd_executions_show(session: Session, args: argparse.Namespace) -> int:
    info = zart.get_execution(args.execution_id, broker=session.broker)
    wake_up = _wake_up(info)
    if args.json:
        shown = dataclasses.asdict(info)
        _print_json(
            {
                **{k: v for k, v in shown.items() if k != "inbox"},
                "wake_up": None if wake_up is None else {"at": wake_up[0], "by": wake_up[1]},
                "events": shown["inbox"],
            }
        )
        return 0
    in_flight = [f"{s.key} ({s.status})" for s in info.steps if s.finished_at is None]
    fields: list[tuple[str, Any]] = [
        ("execution", info.id),
        ("actor", f"{info.actor_name} (queue {info.queue_name})"),
        ("status", info.status),
    ]
    if info.paused_at is not None:
        fields.append(("paused", f"since {_cell(info.paused_at)}: `{PROG} executions resume`"))
    if info.parent_id is not None:
        fields.append(("parent", f"{info.parent_id}{' (detached)' if info.detached else ''}"))
    fields += [
        ("created", info.created_at),
        ("updated", info.updated_at),
        ("finished", info.finished_at),
        ("deadline", info.deadline),
        ("waiting for", info.waiting_for),
        ("wakes at", wake_up and f"{_cell(wake_up[0])} ({_wake_reason(info, wake_up[1])})"),
        ("in flight", ", ".join(in_flight) or None),
        ("runs", info.runs),
        ("generation", info.generation),
        ("input", _compact_json(info.input)),
    ]
    if info.status == "completed":
        fields.append(("result", _compact_json(info.result)))
    if info.error:
        fields.append(("error", _error_text(info.error)))
    if info.blocked is not None:
        fields.append(("blocked at", _blocked_text(info.blocked)))
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        print(f"{label.ljust(width)}  {_cell(value)}")
    print()
    print(
        _table(
            ("step", "kind", "status", "attempts", "started", "duration", "wake_at", "error"),
            [
                (
                    s.key,
                    s.kind,
                    s.status,
                    s.attempts,
                    s.started_at,
                    _elapsed(s.started_at, s.finished_at),
                    s.wake_at,
                    _error_text(s.error) if s.error else None,
                )
                for s in info.steps
            ],
            empty="no steps yet",
        )
    )
    for group in info.groups:
        print()
        print("\n".join(_group_lines(group)))
    if info.children:
        print()
        print("\n".join(_children_lines(info.children)))
    print()
    events = [(e.name, e.key, e.sent_at, e.consumed_by) for e in info.inbox]
    print(_table(("event", "key", "sent", "consumed by"), events, empty="no events"))
    return 0


def _group_lines(group: GroupInfo) -> list[str]:
    """A group: its outcome and size, then its branches (past ``LISTED`` of them, counts
    by status and the failed and running ones only)."""
    winner = ""
    if group.winner is not None:
        names = [b.name for b in group.branches if b.index == group.winner]
        winner = f", won by branch {group.winner}" + (f" ({names[0]})" if names else "")
    window = "" if group.max_concurrency is None else f", at most {group.max_concurrency} at once"
    head = (
        f"group {group.key} ({group.mode}): {group.status}{winner}; "
        f"{_plural(group.size, 'branch', 'branches')}, {group.open} open{window}"
    )
    shown, note = _summary(
        group.branches,
        [b.status for b in group.branches],
        order=BRANCH_STATUSES,
        listed=("failed", "queued"),
        label="failed or running",
        what="branches",
    )
    table = _table(
        ("branch", "name", "status", "attempts", "error"),
        [_branch_row(b) for b in shown],
        empty="no failed or running branches",
    )
    return [head, *note, table]


def _branch_row(branch: BranchInfo) -> tuple[Any, ...]:
    error = _error_text(branch.error) if branch.error else None
    return (branch.index, branch.name, branch.status, branch.attempts, error)


def _children_lines(children: Sequence[ChildInfo]) -> list[str]:
    """The children (past ``LISTED`` of them, counts by status and those not completed)."""
    shown, note = _summary(
        children,
        [c.status for c in children],
        order=STATUSES,
        listed=tuple(s for s in STATUSES if s != "completed"),
        label="not completed",
        what="children",
    )
    table = _table(
        ("child", "actor", "status", "detached", "step"),
        [(c.id, c.actor_name, c.status, "yes" if c.detached else "no", c.step_key) for c in shown],
        empty="no children that did not complete",
    )
    return [*(note or [f"{_plural(len(children), 'child', 'children')}:"]), table]


def _summary(
    items: Sequence[T],
    statuses: Sequence[str],
    *,
    order: Sequence[str],
    listed: Sequence[str],
    label: str,
    what: str,
) -> tuple[list[T], list[str]]:
    """Which of ``items`` (whose statuses are ``statuses``) to list, and a note on the rest.

    Up to ``LISTED`` items are all listed, with no note. Past that, the note counts
    them by status (in ``order``), and only the first ``LISTED`` whose status is in
    ``listed`` (described as ``label``) are.
    """
    if len(items) <= LISTED:
        return list(items), []
    counts = Counter(statuses)
    rank = {status: i for i, status in enumerate(order)}
    by_status = ", ".join(
        f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (rank.get(s, len(rank)), s))
    )
    kept = [item for item, status in zip(items, statuses, strict=True) if status in listed]
    note = f"{len(items)} {what}: {by_status}"
    if len(kept) > LISTED:
        note += f"; the first {LISTED} of the {len(kept)} {label}:"
    elif kept:
        note += f"; the {len(kept)} {label}:"
    return kept[:LISTED], [note]


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _wake_up(info: ExecutionInfo) -> tuple[datetime, str] | None:
    """When a suspended execution runs next: at its own wake-up or its deadline, the earlier.

    Returns the time and which of the two it is (``wake_at`` or ``deadline``).
    """
    if info.status not in WAKE_REASONS:
        return None
    times = [(info.wake_at, "wake_at"), (info.deadline, "deadline")]
    return min(((at, by) for at, by in times if at is not None), default=None)


def _wake_reason(info: ExecutionInfo, by: str) -> str:
    return "the deadline: it times out" if by == "deadline" else WAKE_REASONS[info.status]


def cmd_executions_wait(session: Session, args: argparse.Namespace) -> int:
    handle = zart.get_handle(args.execution_id, broker=session.broker)
    timeout = None if args.timeout is None else args.timeout.total_seconds()
    # Raises ExecutionFailed or ResultTimeout: reported as one line, exit status 1.
    result = handle.result(timeout=timeout)
    # Back to JSON: the result comes typed when the actor is declared (--broker).
    data = dump(result, Any, what=f"the result of {args.execution_id!r}")
    if args.json:
        _print_json(data)
    else:
        print(f"execution {args.execution_id!r} completed: {_compact_json(data)}")
    return 0


def cmd_cancel(session: Session, args: argparse.Namespace) -> int:
    previous = zart.cancel(args.execution_id, broker=session.broker)
    if previous == "cancelled":
        print(f"execution {args.execution_id!r} was already cancelled")
        return 0
    if previous in TERMINAL:
        raise CommandError(
            f"cannot cancel: execution {args.execution_id!r} already ended {previous}"
        )
    print(f"cancelled execution {args.execution_id!r} (was {previous})")
    return 0


def cmd_executions_purge(session: Session, args: argparse.Namespace) -> int:
    deleted = zart.purge_executions(args.older_than, broker=session.broker)
    print(f"purged {deleted} ended executions")
    return 0


def _blocked_text(blocked: zart.BlockInfo) -> str:
    tries = _plural(blocked.blocks, "try", "tries")
    since = f"since {_cell(blocked.first_blocked_at)}, {tries}"
    return f"{blocked.step} ({blocked.kind}; {since}): {_first_line(blocked.message)}"


def cmd_unblock(session: Session, args: argparse.Namespace) -> int:
    if zart.unblock(args.execution_id, broker=session.broker):
        print(f"execution {args.execution_id!r}: its replay is tried again now")
        return 0
    status = zart.get_handle(args.execution_id, broker=session.broker).status()
    raise CommandError(f"cannot unblock: execution {args.execution_id!r} is {status}, not blocked")


def cmd_fail(session: Session, args: argparse.Namespace) -> int:
    zart.fail(args.execution_id, args.reason, broker=session.broker)
    print(f"failed execution {args.execution_id!r}: {args.reason}")
    return 0


def cmd_replay_check(session: Session, args: argparse.Namespace) -> int:
    if args.url or args.schema or args.broker:
        raise CommandError(
            "--url, --schema and --broker cannot be combined with replay-check --app: the "
            "application's broker names the database and schema of its executions"
        )
    broker = _import_broker(args.app[0])
    for module in args.app[1:]:
        _import_broker(module)
    report = zart.replay_check(actor=args.actor, limit=args.limit, since=args.since, broker=broker)
    if args.json:
        _print_json([dataclasses.asdict(r) for r in report.results])
        return 0 if report.ok else 1
    for r in report.results:
        where = f"{r.execution_id} ({r.actor}, {r.status})"
        if r.outcome == "diverged":
            print(f"{where}: diverges at {r.step} ({r.kind}): {r.message}")
        elif r.outcome == "error":
            print(f"{where}: fails to replay: {r.message}")
        elif r.outcome == "skipped":
            print(f"{where}: skipped, its actor is not declared by {args.app[0]}")
    counts = [
        _plural(report.count("clean"), "execution replays", "executions replay") + " cleanly",
        f"{report.count('diverged')} diverge{'s' if report.count('diverged') == 1 else ''}",
        f"{report.count('error')} fail{'s' if report.count('error') == 1 else ''} to replay",
        f"{report.count('skipped')} skipped",
    ]
    print(", ".join(counts))
    return 0 if report.ok else 1


def cmd_retry(session: Session, args: argparse.Namespace) -> int:
    zart.retry(args.execution_id, broker=session.broker)
    print(f"restarted execution {args.execution_id!r} from its failed step")
    return 0


def cmd_rerun(session: Session, args: argparse.Namespace) -> int:
    try:
        key = zart.rerun(args.execution_id, args.from_step, broker=session.broker)
    except ValueError as e:
        raise CommandError(str(e)) from None
    print(f"running execution {args.execution_id!r} again from {key}")
    return 0


def cmd_pause(session: Session, args: argparse.Namespace) -> int:
    zart.pause(args.execution_id, broker=session.broker)
    print(f"paused execution {args.execution_id!r}: no run of it starts until it is resumed")
    return 0


def cmd_resume(session: Session, args: argparse.Namespace) -> int:
    due = zart.resume(args.execution_id, broker=session.broker)
    woken = "; its wake-up came due meanwhile and was sent" if due else ""
    print(f"resumed execution {args.execution_id!r}{woken}")
    return 0


def cmd_actors_list(session: Session, args: argparse.Namespace) -> int:
    paused = zart.paused_actors(broker=session.broker)
    if args.json:
        _print_json([dataclasses.asdict(p) for p in paused])
        return 0
    rows = [(p.actor_name, p.paused_at) for p in paused]
    print(_table(("ACTOR", "PAUSED"), rows, empty="no actor is paused"))
    return 0


def cmd_actors_pause(session: Session, args: argparse.Namespace) -> int:
    zart.pause_actor(args.actor_name, broker=session.broker)
    print(f"paused actor {args.actor_name!r}: none of its executions runs until it is resumed")
    return 0


def cmd_actors_resume(session: Session, args: argparse.Namespace) -> int:
    resent = zart.resume_actor(args.actor_name, broker=session.broker)
    print(f"resumed actor {args.actor_name!r}; {_plural(resent, 'wake-up', 'wake-ups')} sent")
    return 0


def cmd_schedules_list(session: Session, args: argparse.Namespace) -> int:
    found = zart.schedules.list(broker=session.broker)
    if args.json:
        _print_json([_schedule_json(s) for s in found])
        return 0
    print(
        _table(
            ("name", "actor", "when", "overlap", "catch-up", "next", "started", "missed", "state"),
            [
                (
                    s.name,
                    s.actor_name,
                    _schedule_timing(s),
                    s.overlap,
                    s.catchup,
                    s.next_fire_at,
                    s.ticks_started,
                    s.ticks_missed,
                    _schedule_state(s),
                )
                for s in found
            ],
            empty="no schedules",
        )
    )
    return 0


def cmd_schedules_pause(session: Session, args: argparse.Namespace) -> int:
    zart.schedules.pause(args.name, broker=session.broker)
    print(f"paused schedule {args.name!r}: no tick of it starts until it is resumed")
    return 0


def cmd_schedules_resume(session: Session, args: argparse.Namespace) -> int:
    if not zart.schedules.resume(args.name, broker=session.broker):
        print(f"schedule {args.name!r} was not paused")
        return 0
    schedule = zart.schedules.get(args.name, broker=session.broker)
    print(f"resumed schedule {args.name!r}; its next tick is at {_cell(schedule.next_fire_at)}")
    return 0


def cmd_schedules_trigger(session: Session, args: argparse.Namespace) -> int:
    execution_id = zart.schedules.trigger(args.name, key=args.key, broker=session.broker)
    print(f"started execution {execution_id!r}")
    return 0


def cmd_schedules_backfill(session: Session, args: argparse.Namespace) -> int:
    done = zart.schedules.backfill(args.name, args.start, args.end, broker=session.broker)
    print(
        f"backfilled schedule {args.name!r}: {_plural(done.started, 'tick', 'ticks')} started, "
        f"{done.existing} started before"
    )
    return 0


def cmd_schedules_delete(session: Session, args: argparse.Namespace) -> int:
    zart.schedules.delete(args.name, broker=session.broker)
    print(
        f"deleted schedule {args.name!r}; its executions stay (a schedule defined in code "
        "comes back when a worker with that code boots)"
    )
    return 0


def _schedule_timing(schedule: zart.Schedule) -> str:
    if schedule.every is not None:
        return f"every {schedule.every.total_seconds():g}s"
    return f"{schedule.cron} ({schedule.tz})"


def _schedule_state(schedule: zart.Schedule) -> str:
    if schedule.paused_at is not None:
        return f"paused since {_cell(schedule.paused_at)}"
    if schedule.last_error is not None:
        return f"failing: {_first_line(schedule.last_error)}"
    return "active"


def _schedule_json(schedule: zart.Schedule) -> dict[str, Any]:
    shown = dataclasses.asdict(schedule)
    every, window = shown.pop("every"), shown.pop("catchup_window")
    shown["every_s"] = None if every is None else every.total_seconds()
    shown["catchup_window_s"] = window.total_seconds()
    return shown


def cmd_send_event(session: Session, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as e:
        raise CommandError(f"argument JSON: {args.payload!r} is not valid JSON ({e})") from None
    stored = zart.send_event(
        args.execution_id, args.name, payload, key=args.key, broker=session.broker
    )
    if stored:
        print(f"sent event {args.name!r} to execution {args.execution_id!r}")
    else:
        print(
            f"event {args.name!r} with key {args.key!r} was already delivered to execution "
            f"{args.execution_id!r}; not sent again"
        )
    return 0


def cmd_keys_create(session: Session, args: argparse.Namespace) -> int:
    try:
        key, token = session.api_keys().create(args.scopes, name=args.name)
    except ValueError as e:
        raise CommandError(str(e)) from None
    name = "" if key.name is None else f" ({key.name})"
    print(
        f"created API key {key.id}{name} with scopes {_scopes(key)}; "
        "the key below is shown once, keep it now:"
    )
    # Alone on the last line: scripts take it from there.
    print(token)
    return 0


def cmd_keys_list(session: Session, args: argparse.Namespace) -> int:
    keys = session.api_keys().list()
    if args.json:
        _print_json([{**dataclasses.asdict(k), "scopes": _scope_list(k)} for k in keys])
        return 0
    print(
        _table(
            ("id", "name", "scopes", "created", "last used", "revoked"),
            [(k.id, k.name, _scopes(k), k.created_at, k.last_used_at, k.revoked_at) for k in keys],
            empty="no API keys",
        )
    )
    return 0


def cmd_keys_revoke(session: Session, args: argparse.Namespace) -> int:
    keys = session.api_keys()
    if keys.revoke(args.key_id):
        print(f"revoked API key {args.key_id}: it is refused from now on")
        return 0
    key = keys.get(args.key_id)
    if key is None:
        raise CommandError(f"no API key {args.key_id!r}; `{PROG} keys list` shows the keys")
    print(f"API key {key.id} was already revoked (at {_cell(key.revoked_at)})")
    return 0


def cmd_serve(session: Session, args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .http import create_app
    except ImportError as e:
        raise CommandError(
            f"serve needs the HTTP extra ({e.name} is missing): pip install 'zart-dramatiq[http]'"
        ) from None
    app = create_app(
        session.broker,
        auth=not args.no_auth,
        webhook_secret=os.environ.get("ZART_WEBHOOK_SECRET") or None,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_embedded_status(session: Session, args: argparse.Namespace) -> int:
    pgdata = embedded.data_dir()
    server = embedded.running(pgdata)
    if server is None:
        print(f"the embedded PostgreSQL is not running; its data directory is {pgdata}")
        return EXIT_NOT_RUNNING
    print(f"the embedded PostgreSQL is running (pid {server.pid}); its data directory is {pgdata}")
    print(f"url: {server.url}")
    return 0


def cmd_embedded_stop(session: Session, args: argparse.Namespace) -> int:
    pgdata = embedded.data_dir()
    stopped = embedded.stop(pgdata)
    if stopped is None:
        print(f"the embedded PostgreSQL is not running; its data directory is {pgdata}")
    else:
        print(f"stopped the embedded PostgreSQL (pid {stopped.pid}); its data stays in {pgdata}")
    return 0


# -- Output -----------------------------------------------------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _listed(info: ExecutionInfo) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(info).items() if k not in NOT_LISTED}


def _scope_list(key: ApiKey) -> list[str]:
    return [scope for scope in SCOPES if scope in key.scopes]


def _scopes(key: ApiKey) -> str:
    return ",".join(_scope_list(key))


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=_json_default)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().isoformat(sep=" ", timespec="seconds")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str) -> str:
    if not rows:
        return f"({empty})"
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = [[h.upper() for h in headers], *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text and text.strip() else None


def _error_text(error: dict[str, Any]) -> str:
    return f"{error.get('type')}: {_first_line(str(error.get('message') or ''))}"


def _elapsed(started: datetime, finished: datetime | None) -> str | None:
    if finished is None:
        return None
    seconds = (finished - started).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


# -- Arguments --------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """A duration: seconds (``3600``), or a number with a unit s, m, h or d (``90m``, ``7d``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: give seconds (3600) or a number with a unit "
            "s, m, h or d (30s, 90m, 12h, 7d)"
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNIT_SECONDS[unit])


def _instant(text: str) -> datetime:
    """A time with its zone, ISO 8601: ``2026-11-29T00:00:00+00:00`` or ``2026-11-29T00:00Z``."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        value = None
    if value is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: give ISO 8601 with a zone, e.g. 2026-11-29T00:00:00+00:00 "
            "or 2026-11-29T00:00Z"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zart-dramatiq``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Operate zart-dramatiq: schema, queues, dead letters, executions."
    )
    parser.add_argument(
        "--url", help="PostgreSQL URL (default: DATABASE_URL, else the embedded server)"
    )
    parser.add_argument("--schema", help="schema of the tables (default: ZART_SCHEMA, else zart)")
    parser.add_argument(
        "--broker",
        metavar="MODULE:ATTRIBUTE",
        help="use the application's broker (as the dramatiq command takes it), "
        "e.g. when its workers run on Redis or RabbitMQ",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, handler: Callable[[Session, argparse.Namespace], int], summary: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=summary, description=summary)
        sub.set_defaults(handler=handler)
        return sub

    def json_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    command(commands, "migrate", cmd_migrate, "create or upgrade the schema")
    json_flag(command(commands, "queues", cmd_queues, "message counts per queue, live workers"))

    dead = commands.add_parser("dead-letters", help="list, requeue or purge dead letters")
    dead_commands = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = command(dead_commands, "list", cmd_dead_letters_list, "list dead letters, oldest first")
    sub.add_argument("--queue", help="only this queue")
    sub.add_argument("--limit", type=_positive_int, default=100)
    json_flag(sub)
    sub = command(
        dead_commands, "requeue", cmd_dead_letters_requeue, "put dead letters back on their queues"
    )
    sub.add_argument(
        "ids", nargs="*", type=int, metavar="ID", help="dead-letter ids, from dead-letters list"
    )
    scope = sub.add_mutually_exclusive_group()
    scope.add_argument("--queue", help="the dead letters of this queue")
    scope.add_argument("--all", action="store_true", help="every dead letter")
    sub = command(dead_commands, "purge", cmd_dead_letters_purge, "delete dead letters")
    scope = sub.add_mutually_exclusive_group()
    scope.add_argument("--queue", help="only this queue")
    scope.add_argument("--all", action="store_true", help="every queue")
    sub.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="only those dead this long"
    )

    executions = commands.add_parser("executions", help="inspect and control executions")
    execution_commands = executions.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = command(execution_commands, "list", cmd_executions_list, "executions, newest first")
    sub.add_argument("--status", choices=STATUSES)
    sub.add_argument("--limit", type=_positive_int, default=50)
    json_flag(sub)
    sub = command(
        execution_commands, "show", cmd_executions_show, "an execution, its steps and its inbox"
    )
    sub.add_argument("execution_id", metavar="ID")
    json_flag(sub)
    sub = command(
        execution_commands,
        "wait",
        cmd_executions_wait,
        "wait for an execution to end; print its result, or fail with its error",
    )
    sub.add_argument("execution_id", metavar="ID")
    sub.add_argument(
        "--timeout",
        type=_duration,
        metavar="DURATION",
        help="give up after this long (default: never)",
    )
    sub.add_argument("--json", action="store_true", help="print the result alone, as JSON")
    for parent in (execution_commands, commands):
        command(parent, "cancel", cmd_cancel, "cancel an execution").add_argument(
            "execution_id", metavar="ID"
        )
    command(
        execution_commands,
        "purge",
        cmd_executions_purge,
        "delete ended executions (with their steps and events) older than a retention",
    ).add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        required=True,
        help="retention: seconds, or a number with a unit s, m, h or d (7d)",
    )
    command(
        execution_commands,
        "retry",
        cmd_retry,
        "restart a failed, timed out or cancelled execution from its failed step",
    ).add_argument("execution_id", metavar="ID")
    command(
        execution_commands,
        "unblock",
        cmd_unblock,
        "try the replay of a blocked execution now, rather than after its backoff",
    ).add_argument("execution_id", metavar="ID")
    sub = command(execution_commands, "fail", cmd_fail, "give up on a blocked execution: it fails")
    sub.add_argument("execution_id", metavar="ID")
    sub.add_argument("--reason", required=True, help="why, recorded in its error")

    sub = command(
        execution_commands,
        "rerun",
        cmd_rerun,
        "run an ended execution again from a step on (the steps before it keep their outcomes)",
    )
    sub.add_argument("execution_id", metavar="ID")
    sub.add_argument(
        "--from", dest="from_step", required=True, metavar="STEP", help="a journal key or step name"
    )
    command(
        execution_commands, "pause", cmd_pause, "hold an execution: no run of it starts"
    ).add_argument("execution_id", metavar="ID")
    command(
        execution_commands, "resume", cmd_resume, "let a paused execution run again"
    ).add_argument("execution_id", metavar="ID")

    actors = commands.add_parser("actors", help="pause and resume durable actors")
    actor_commands = actors.add_subparsers(dest="action", required=True, metavar="ACTION")
    json_flag(command(actor_commands, "list", cmd_actors_list, "the paused actors"))
    command(
        actor_commands, "pause", cmd_actors_pause, "hold every execution of an actor, new ones too"
    ).add_argument("actor_name", metavar="ACTOR")
    command(
        actor_commands, "resume", cmd_actors_resume, "let a paused actor's executions run again"
    ).add_argument("actor_name", metavar="ACTOR")

    scheduled = commands.add_parser("schedules", help="durable schedules (zart.schedule)")
    schedule_commands = scheduled.add_subparsers(dest="action", required=True, metavar="ACTION")
    json_flag(command(schedule_commands, "list", cmd_schedules_list, "the schedules, by name"))
    command(
        schedule_commands, "pause", cmd_schedules_pause, "start no tick of a schedule until resumed"
    ).add_argument("name", metavar="NAME")
    command(
        schedule_commands,
        "resume",
        cmd_schedules_resume,
        "start a paused schedule's ticks again, from its next one",
    ).add_argument("name", metavar="NAME")
    sub = command(
        schedule_commands,
        "trigger",
        cmd_schedules_trigger,
        "start a schedule's actor now, once more (needs --broker: the actor's app)",
    )
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--key", help="idempotency: a trigger with the same key starts nothing new")
    sub = command(
        schedule_commands,
        "backfill",
        cmd_schedules_backfill,
        "start every tick of a schedule in [START, END), each once (needs --broker)",
    )
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--start", type=_instant, required=True, metavar="TIME", help="ISO 8601")
    sub.add_argument("--end", type=_instant, required=True, metavar="TIME", help="ISO 8601")
    command(
        schedule_commands, "delete", cmd_schedules_delete, "delete a schedule (not its executions)"
    ).add_argument("name", metavar="NAME")

    sub = command(
        commands,
        "replay-check",
        cmd_replay_check,
        "replay the journals of open and recent executions against the application's code, "
        "writing nothing; exit status 1 naming each execution that diverges",
    )
    sub.add_argument(
        "--app",
        action="append",
        required=True,
        metavar="MODULE[:BROKER]",
        help="the application's module, as the dramatiq command takes it (repeat for more "
        "modules); its broker says where the executions are",
    )
    sub.add_argument("--actor", help="only this actor's executions")
    sub.add_argument("--limit", type=_positive_int, default=1000, help="at most so many (1000)")
    sub.add_argument(
        "--since",
        type=_duration,
        default=timedelta(hours=24),
        metavar="DURATION",
        help="also those that ended this recently (24h)",
    )
    json_flag(sub)

    server = commands.add_parser("embedded", help="the embedded PostgreSQL (pgserver)")
    server_commands = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(
        server_commands,
        "status",
        cmd_embedded_status,
        "whether it runs, its data directory and URL (exit status 3 when it is not running)",
    )
    command(server_commands, "stop", cmd_embedded_stop, "stop it; its data is kept")

    sub = command(commands, "send-event", cmd_send_event, "send an event to an execution")
    sub.add_argument("execution_id", metavar="ID", help="the execution's id")
    sub.add_argument("name", metavar="NAME", help="the event's name, as in wait_for_event")
    sub.add_argument(
        "payload", metavar="JSON", nargs="?", default="null", help="the payload (default: null)"
    )
    sub.add_argument("--key", help="deduplication key: an event with a key is delivered once")

    sub = command(
        commands,
        "serve",
        cmd_serve,
        "serve the HTTP API (uvicorn); with --broker, the app's durable actors can be started",
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sub.add_argument("--port", type=_positive_int, default=8000, help="port (8000)")
    sub.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without API keys (only behind an authenticating proxy)",
    )

    keys = commands.add_parser("keys", help="API keys of the HTTP API")
    key_commands = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = command(
        key_commands,
        "create",
        cmd_keys_create,
        "create an API key; it is printed once, alone on the last line",
    )
    sub.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=SCOPES,
        help="what the key may do; repeat for several: read (look), events (send events), "
        "admin (everything)",
    )
    sub.add_argument("--name", help="what the key is for, shown in `keys list`")
    json_flag(command(key_commands, "list", cmd_keys_list, "API keys, revoked ones included"))
    command(
        key_commands, "revoke", cmd_keys_revoke, "revoke an API key: it is refused at once"
    ).add_argument("key_id", metavar="ID", help="the key's id, from keys list")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zart-dramatiq`` with ``argv``; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        # --help and usage errors: argparse has already printed.
        return stop.code if isinstance(stop.code, int) else 2
    try:
        session = Session(args.url, args.schema, args.broker)
    except CommandError as e:
        return _fail(str(e))
    try:
        return int(args.handler(session, args))
    except BrokenPipeError:
        # Output piped into `head` and the like, which stopped reading. Point stdout
        # at devnull so the flush at interpreter exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UnknownActor as e:
        # Actors are known from the application's modules: this command imported none.
        hint = "" if session.broker_spec else " (pass --broker MODULE:BROKER, before the command)"
        return _fail(f"{e}{hint}")
    except (CommandError, ZartError, BrokerError) as e:
        return _fail(str(e))
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as e:
        return _fail(
            f"{_first_line(str(e))}: schema {session.schema_name!r} is not set up; "
            f"run `{PROG} migrate` first"
        )
    except psycopg.Error as e:
        return _fail(f"database error: {_first_line(str(e))}")
    finally:
        session.close()


def _fail(message: str) -> int:
    # One line, even when a driver's message spans several.
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
