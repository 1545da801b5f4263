"""The zart-dramatiq command, run in-process against a real PostgreSQL and a fresh schema."""

from __future__ import annotations

import sys
import threading
import types
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Worker

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from tests.support import Cli, rows, wait_until
from zart_dramatiq.cli import build_parser, main


def test_migrate_applies_once_then_reports_up_to_date(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    unmigrated_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = unmigrated_schema
    assert main(["--url", database_url, "--schema", name, "migrate"]) == 0
    out = capsys.readouterr().out
    assert "applied 0001_broker" in out
    assert "applied 0002_durable" in out
    # The schema defaults to ZART_SCHEMA.
    monkeypatch.setenv("ZART_SCHEMA", name)
    assert main(["--url", database_url, "migrate"]) == 0
    assert capsys.readouterr().out == f"schema {name!r} is up to date\n"


def test_queues_shows_due_delayed_parked_claimed_messages_and_live_workers(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="alpha")
    def alpha() -> None: ...

    @dramatiq.actor(broker=broker, queue_name="beta")
    def beta() -> None: ...

    @dramatiq.actor(broker=broker, queue_name="gamma")
    def gamma() -> None:
        release.wait(20)

    alpha.send()
    alpha.send()
    alpha.send_with_options(delay=3_600_000)
    beta.send()
    broker.enqueue_parked(beta.message())
    gamma.send()
    start_worker(broker, queues={"gamma"})
    try:
        report = wait_until(
            lambda: (r := cli.json("queues"))["queues"][-1]["claimed"] == 1 and r,
            timeout=20,
            message="the gamma message to be claimed",
        )
        queues = {q.pop("queue"): q for q in report["queues"]}
        oldest = {name: (q.pop("queue_name"), q.pop("oldest_due_s")) for name, q in queues.items()}
        # How long the oldest message due now has waited: none is due on gamma.
        assert oldest["alpha"][1] >= 0 and oldest["beta"][1] >= 0
        assert oldest["gamma"] == ("gamma", None)
        assert queues == {
            "alpha": {"queued": 2, "delayed": 1, "parked": 0, "claimed": 0, "dead_letters": 0},
            "beta": {"queued": 1, "delayed": 0, "parked": 1, "claimed": 0, "dead_letters": 0},
            "gamma": {"queued": 0, "delayed": 0, "parked": 0, "claimed": 1, "dead_letters": 0},
        }
        [worker] = report["workers"]
        assert worker["id"] == str(broker.worker_id)
        assert worker["claimed"] == 1

        table = cli.ok("queues").splitlines()
        assert table[0].split() == [
            "QUEUE",
            "QUEUED",
            "DELAYED",
            "PARKED",
            "CLAIMED",
            "DEAD_LETTERS",
            "OLDEST",
            "DUE",
            "(S)",
        ]
        assert table[1].split()[:6] == ["alpha", "2", "1", "0", "0", "0"]
        assert any(str(broker.worker_id) in line for line in table[4:])
    finally:
        release.set()


def test_dead_letters_list_requeue_purge_round_trip(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    healed = threading.Event()
    processed: list[int] = []
    calls: Counter[str] = Counter()

    @dramatiq.actor(broker=broker, queue_name="fragile", max_retries=0)
    def fragile(n: int) -> None:
        if not healed.is_set():
            raise ValueError(f"cannot handle {n} yet")
        processed.append(n)

    @dramatiq.actor(broker=broker, queue_name="doomed", max_retries=0)
    def doomed() -> None:
        calls["doomed"] += 1
        raise KeyError("doomed")

    fragile.send(1)
    fragile.send(2)
    doomed.send()
    start_worker(broker)
    letters = wait_until(
        lambda: len(found := cli.json("dead-letters", "list")) == 3 and found,
        timeout=20,
        message="three dead letters",
    )
    fragile_letters = [d for d in letters if d["queue_name"] == "fragile"]
    assert sorted(d["message"]["args"][0] for d in fragile_letters) == [1, 2]
    assert all("ValueError: cannot handle" in d["error"] for d in fragile_letters)

    table = cli.ok("dead-letters", "list", "--queue", "fragile").splitlines()
    assert len(table) == 3 and all("ValueError" in line for line in table[1:])
    assert cli.ok("dead-letters", "list", "--queue", "nowhere") == "(no dead letters)\n"
    assert len(cli.json("dead-letters", "list", "--limit", "1")) == 1

    assert "refusing to requeue every dead letter" in cli.fails("dead-letters", "requeue")
    assert "IDs or --all, not both" in cli.fails("dead-letters", "requeue", "1", "--all")

    healed.set()
    first = fragile_letters[0]
    assert cli.ok("dead-letters", "requeue", str(first["id"])) == "requeued 1 dead letter\n"
    wait_until(
        lambda: processed == [first["message"]["args"][0]],
        timeout=20,
        message="the requeued message",
    )
    assert cli.ok("dead-letters", "requeue", "--queue", "fragile") == "requeued 1 dead letter\n"
    wait_until(lambda: sorted(processed) == [1, 2], timeout=20, message="both fragile messages")

    # The doomed message fails again once requeued and comes back as a dead letter.
    assert cli.ok("dead-letters", "requeue", "--all") == "requeued 1 dead letter\n"
    wait_until(
        lambda: calls["doomed"] == 2 and len(cli.json("dead-letters", "list")) == 1,
        timeout=20,
        message="the doomed message to die again",
    )
    assert "refusing to purge every dead letter" in cli.fails("dead-letters", "purge")
    assert cli.ok("dead-letters", "purge", "--older-than", "3600") == "purged 0 dead letters\n"
    assert cli.ok("dead-letters", "purge", "--queue", "fragile") == "purged 0 dead letters\n"
    assert cli.ok("dead-letters", "purge", "--all") == "purged 1 dead letter\n"
    assert cli.json("dead-letters", "list") == []


def _status(cli: Cli, execution_id: str) -> str:
    return str(cli.json("executions", "show", execution_id)["status"])


def test_executions_list_show_send_event_and_cancel_finished(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="flows", max_retries=0)
    def flow(n: int) -> dict[str, int]:
        doubled = zart.step("double", lambda: n * 2)
        go = zart.wait_for_event("go", timeout=timedelta(hours=1))
        return {"doubled": doubled, "extra": go["extra"]}

    start_worker(broker)
    execution_id = f"flow-{uuid.uuid4().hex[:8]}"
    zart.start(flow, 21, execution_id=execution_id)
    wait_until(
        lambda: _status(cli, execution_id) == "waiting", timeout=20, message="the event wait"
    )

    [listed] = cli.json("executions", "list")
    assert (listed["id"], listed["status"], listed["waiting_for"]) == (
        execution_id,
        "waiting",
        "go",
    )
    # A listing does not load steps, so it does not claim there are none.
    assert "steps" not in listed
    assert cli.json("executions", "list", "--status", "completed") == []
    table = cli.ok("executions", "list", "--status", "waiting").splitlines()
    assert table[0].split()[:3] == ["ID", "ACTOR", "STATUS"]
    assert table[1].split()[:4] == [execution_id, "flow", "waiting", "go"]

    shown = cli.json("executions", "show", execution_id)
    steps = {s["key"]: s for s in shown["steps"]}
    assert (steps["step:double"]["kind"], steps["step:double"]["status"]) == ("step", "completed")
    assert steps["step:double"]["attempts"] == 1
    assert (steps["event:go"]["kind"], steps["event:go"]["status"]) == ("event", "waiting")
    assert steps["event:go"]["wake_at"] == listed["wake_at"] is not None
    text = cli.ok("executions", "show", execution_id)
    assert "waiting for  go" in text
    assert any(
        line.split()[:4] == ["step:double", "step", "completed", "1"] for line in text.splitlines()
    )

    # An event with a key is stored once; this one is not waited for, so nothing wakes.
    note = ["send-event", execution_id, "note", '"hello"', "--key", "k1"]
    assert cli.ok(*note) == f"sent event 'note' to execution {execution_id!r}\n"
    assert "already delivered" in cli.ok(*note)

    assert cli.ok("send-event", execution_id, "go", '{"extra": 5}').startswith("sent event 'go'")
    wait_until(lambda: _status(cli, execution_id) == "completed", timeout=20, message="completion")
    result_line = next(
        line
        for line in cli.ok("executions", "show", execution_id).splitlines()
        if line.startswith("result ")
    )
    assert '"doubled": 42' in result_line and '"extra": 5' in result_line
    assert cli.json("executions", "show", execution_id)["result"] == {"doubled": 42, "extra": 5}

    assert "already ended completed" in cli.fails("cancel", execution_id)
    assert "already ended completed" in cli.fails("send-event", execution_id, "go", "{}")
    assert repr("nope") in cli.fails("executions", "show", "nope")


def _field(text: str, label: str) -> str:
    """The value of ``label`` in the header of `executions show`."""
    return (
        next(line for line in text.splitlines() if line.startswith(f"{label}  "))
        .split("  ", 1)[1]
        .strip()
    )


def test_executions_show_the_inbox_the_step_in_flight_and_the_earlier_wake_up(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    @zart.durable(timeout=timedelta(hours=1))
    @dramatiq.actor(broker=broker, queue_name="inbox", max_retries=0)
    def flow() -> None:
        zart.wait_for_event("go", timeout=timedelta(minutes=10))
        zart.sleep("nap", timedelta(days=1))

    start_worker(broker)
    execution_id = zart.start(flow).execution_id
    wait_until(
        lambda: _status(cli, execution_id) == "waiting", timeout=20, message="the event wait"
    )
    # The wait times out before the deadline: that is when it wakes.
    shown = cli.json("executions", "show", execution_id)
    assert shown["wake_up"] == {"at": shown["wake_at"], "by": "wake_at"}
    assert shown["events"] == []
    text = cli.ok("executions", "show", execution_id)
    assert _field(text, "wakes at").endswith("(the event wait times out)")
    assert _field(text, "in flight") == "event:go (waiting)"
    assert text.rstrip().endswith("(no events)")

    # One event is kept in the inbox; the other is consumed by the wait.
    cli.ok("send-event", execution_id, "note", '"later"', "--key", "k1")
    cli.ok("send-event", execution_id, "go", "{}")
    wait_until(lambda: _status(cli, execution_id) == "sleeping", timeout=20, message="the sleep")

    # The sleep ends after the deadline: the deadline wakes it, to time it out.
    shown = cli.json("executions", "show", execution_id)
    assert datetime.fromisoformat(shown["wake_at"]) > datetime.fromisoformat(shown["deadline"])
    assert shown["wake_up"] == {"at": shown["deadline"], "by": "deadline"}
    assert [(e["name"], e["key"], e["consumed_by"]) for e in shown["events"]] == [
        ("note", "k1", None),
        ("go", None, "event:go"),
    ]
    assert all(e["sent_at"] for e in shown["events"])
    text = cli.ok("executions", "show", execution_id)
    assert _field(text, "wakes at") == f"{_local(shown['deadline'])} (the deadline: it times out)"
    assert _field(text, "in flight") == "sleep:nap (waiting)"
    inbox = text.split("\n\n")[-1].splitlines()
    assert inbox[0].split() == ["EVENT", "KEY", "SENT", "CONSUMED", "BY"]
    assert inbox[1].split()[:2] == ["note", "k1"] and inbox[1].split()[-1] == "-"
    assert inbox[2].split()[:2] == ["go", "-"] and inbox[2].split()[-1] == "event:go"


def _local(iso: str) -> str:
    """A timestamp from the JSON output as the table shows it."""
    return datetime.fromisoformat(iso).astimezone().isoformat(sep=" ", timespec="seconds")


def test_executions_wait_prints_the_result_or_the_error(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="waited", max_retries=0)
    def flow(n: int) -> dict[str, int]:
        zart.sleep("pause", timedelta(milliseconds=300))
        if n < 0:
            raise ValueError(f"cannot take {n}")
        return {"n": n}

    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="waited", max_retries=0)
    def parked() -> None:
        zart.wait_for_event("never")

    start_worker(broker)
    good = zart.start(flow, 2).execution_id
    bad = zart.start(flow, -1).execution_id
    assert cli.ok("executions", "wait", good, "--timeout", "30s") == (
        f'execution {good!r} completed: {{"n": 2}}\n'
    )
    assert cli.json("executions", "wait", good) == {"n": 2}

    error = cli.fails("executions", "wait", bad, "--timeout", "30s")
    assert f"execution {bad!r} ended failed" in error
    assert "ValueError: cannot take -1" in error

    waiting = zart.start(parked).execution_id
    wait_until(lambda: _status(cli, waiting) == "waiting", timeout=20, message="the event wait")
    assert f"execution {waiting!r} is still waiting after 0.3s" in cli.fails(
        "executions", "wait", waiting, "--timeout", "0.3"
    )
    assert "'nope'" in cli.fails("executions", "wait", "nope")

    # Ended just now: a 7-day retention keeps both; none at all purges them.
    assert cli.ok("executions", "purge", "--older-than", "7d") == "purged 0 ended executions\n"
    assert cli.ok("executions", "purge", "--older-than", "0s") == "purged 2 ended executions\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45", timedelta(seconds=45)),
        ("1.5", timedelta(seconds=1.5)),
        ("30s", timedelta(seconds=30)),
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
    ],
)
def test_durations_are_seconds_or_take_a_unit(text: str, expected: timedelta) -> None:
    args = build_parser().parse_args(["executions", "purge", "--older-than", text])
    assert args.older_than == expected


@pytest.mark.parametrize("text", ["7 days", "7w", "-1", "d", ""])
def test_an_invalid_duration_is_a_usage_error_giving_the_syntax(
    capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert main(["executions", "purge", "--older-than", text]) == 2
    error = capsys.readouterr().err
    assert f"argument --older-than: invalid duration {text!r}" in error
    assert "(30s, 90m, 12h, 7d)" in error


def test_send_event_without_a_payload_sends_null(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="nulls", max_retries=0)
    def flow() -> dict[str, Any]:
        return {"payload": zart.wait_for_event("go")}

    start_worker(broker)
    execution_id = zart.start(flow).execution_id
    wait_until(
        lambda: _status(cli, execution_id) == "waiting", timeout=20, message="the event wait"
    )
    assert cli.ok("send-event", execution_id, "go").startswith("sent event 'go'")
    assert cli.json("executions", "wait", execution_id, "--timeout", "20") == {"payload": None}


def test_cancel_a_waiting_execution_removes_its_wake_up(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="waits", max_retries=0)
    def waits() -> None:
        zart.wait_for_event("never")

    start_worker(broker)
    execution_id = zart.start(waits).execution_id
    wait_until(
        lambda: _status(cli, execution_id) == "waiting", timeout=20, message="the event wait"
    )
    assert cli.json("queues")["queues"][0]["parked"] == 1

    assert cli.ok("cancel", execution_id) == f"cancelled execution {execution_id!r} (was waiting)\n"
    assert _status(cli, execution_id) == "cancelled"
    assert cli.json("queues")["queues"] == []
    again = cli.ok("executions", "cancel", execution_id)
    assert again == f"execution {execution_id!r} was already cancelled\n"


def test_retry_restarts_a_failed_execution(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    healed = threading.Event()

    def charge() -> str:
        if not healed.is_set():
            raise ConnectionError("the payment provider is down")
        return "charged"

    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="payments", max_retries=0)
    def pay() -> str:
        return zart.step("charge", charge)

    start_worker(broker)
    execution_id = zart.start(pay).execution_id
    wait_until(lambda: _status(cli, execution_id) == "failed", timeout=20, message="the failure")
    assert "ConnectionError: the payment provider is down" in cli.ok(
        "executions", "show", execution_id
    )

    healed.set()
    assert cli.ok("executions", "retry", execution_id).startswith("restarted execution")
    wait_until(
        lambda: _status(cli, execution_id) == "completed", timeout=20, message="the retried run"
    )
    assert cli.json("executions", "show", execution_id)["result"] == "charged"


def test_send_event_to_an_unknown_execution_names_it(cli: Cli) -> None:
    error = cli.fails("send-event", "no-such-execution", "go", "{}")
    assert "'no-such-execution'" in error


def test_send_event_with_invalid_json_names_the_argument(cli: Cli) -> None:
    error = cli.fails("send-event", "any-id", "go", "{not json")
    assert "argument JSON" in error
    assert "'{not json'" in error


def test_unusable_settings_fail_with_one_line(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    def fails(*argv: str) -> str:
        return Cli(capsys).fails(*argv)

    assert "No module named 'no_such_app'" in fails("--broker", "no_such_app:broker", "queues")
    assert "cannot be combined with --broker" in fails(
        "--broker", "examples.app:broker", "--url", database_url, "queues"
    )
    assert "run `zart-dramatiq migrate` first" in fails(
        "--url", database_url, "--schema", "t_never_migrated", "executions", "list"
    )
    assert "Cannot reach PostgreSQL at 127.0.0.1:1/none" in fails(
        "--url", "postgresql://postgres@127.0.0.1:1/none", "queues"
    )
    assert "Invalid schema name" in fails("--url", database_url, "--schema", "bad-name", "queues")


# --- Composition: children, parallel groups and maps ------------------------------------------


def cli_double(x: int) -> int:
    """A branch function: module-level, since a branch imports its function by name."""
    return 2 * x


def cli_reject(x: int) -> int:
    raise ValueError(f"rejected {x}")


def _section(text: str, first_line: str) -> list[str]:
    """The lines of the blank-line-separated section of ``text`` that starts with ``first_line``."""
    [section] = [p for p in text.split("\n\n") if p.startswith(first_line)]
    return section.splitlines()


def test_executions_show_a_parent_its_group_and_its_children(
    cli: Cli, broker: PostgresBroker, start_worker: Callable[..., Worker]
) -> None:
    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="composed", max_retries=0)
    def part(n: int) -> int:
        return n + 1

    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="composed", max_retries=0)
    def lingers() -> None:
        zart.wait_for_event("go")

    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="composed", max_retries=0)
    def composed(n: int) -> list[Any]:
        doubled, rejected = zart.parallel(
            zart.call("double", cli_double, n),
            zart.call("reject", cli_reject, n),
            mode="settled",
            name="both",
        )
        child = zart.start_child(part, n).result()
        zart.start_child(lingers, detached=True)
        return [doubled, str(rejected), child]

    start_worker(broker)
    zart.start(composed, 4, execution_id="composed")
    assert cli.json("executions", "wait", "composed", "--timeout", "30s") == [8, "rejected 4", 5]
    wait_until(
        lambda: _status(cli, "composed/child:lingers") == "waiting",
        timeout=20,
        message="the detached child's wait",
    )

    shown = cli.json("executions", "show", "composed")
    assert (shown["parent_id"], shown["detached"]) == (None, False)
    [group] = shown["groups"]
    assert {k: group[k] for k in ("key", "mode", "status", "size", "open", "winner")} == {
        "key": "group:both",
        "mode": "settled",
        "status": "completed",
        "size": 2,
        "open": 0,
        "winner": None,
    }
    assert [
        (b["index"], b["name"], b["status"], b["attempts"], (b["error"] or {}).get("type"))
        for b in group["branches"]
    ] == [(0, "double", "completed", 1, None), (1, "reject", "failed", 1, "builtins.ValueError")]
    children = [
        (c["id"], c["actor_name"], c["status"], c["detached"], c["step_key"])
        for c in shown["children"]
    ]
    assert children == [
        ("composed/child:part", "part", "completed", False, "child:part"),
        ("composed/child:lingers", "lingers", "waiting", True, "child:lingers"),
    ]

    text = cli.ok("executions", "show", "composed")
    assert "parent" not in text.split("\n\n")[0]
    lines = _section(text, "group group:both")
    assert lines[0] == "group group:both (settled): completed; 2 branches, 0 open"
    assert lines[1].split() == ["BRANCH", "NAME", "STATUS", "ATTEMPTS", "ERROR"]
    assert lines[2].split() == ["0", "double", "completed", "1", "-"]
    assert lines[3].split()[:4] == ["1", "reject", "failed", "1"]
    assert lines[3].endswith("builtins.ValueError: rejected 4")
    lines = _section(text, "2 children:")
    assert lines[1].split() == ["CHILD", "ACTOR", "STATUS", "DETACHED", "STEP"]
    assert lines[2].split() == ["composed/child:part", "part", "completed", "no", "child:part"]
    assert lines[3].split() == [
        "composed/child:lingers",
        "lingers",
        "waiting",
        "yes",
        "child:lingers",
    ]
    # The inbox stays the last section.
    assert text.rstrip().endswith("(no events)")

    child = cli.json("executions", "show", "composed/child:part")
    assert (child["parent_id"], child["detached"], child["children"]) == ("composed", False, [])
    assert _field(cli.ok("executions", "show", "composed/child:part"), "parent") == "composed"
    detached = cli.ok("executions", "show", "composed/child:lingers")
    assert _field(detached, "parent") == "composed (detached)"

    # The listing names each child's parent; its JSON leaves groups and children to `show`.
    table = cli.ok("executions", "list").splitlines()
    assert table[0].split()[-1] == "PARENT"
    parents = {line.split()[0]: line.split()[-1] for line in table[1:]}
    assert parents["composed/child:part"] == parents["composed/child:lingers"] == "composed"
    assert parents["composed"] == "-"
    listed = {e["id"]: e for e in cli.json("executions", "list")}
    assert listed["composed/child:lingers"]["parent_id"] == "composed"
    assert listed["composed/child:lingers"]["detached"] is True
    assert not {"steps", "groups", "children"} & set(listed["composed"])


def test_executions_show_summarises_a_group_of_ten_thousand_branches(
    cli: Cli, broker: PostgresBroker, db: psycopg.Connection, schema: str
) -> None:
    @zart.durable
    @dramatiq.actor(broker=broker, queue_name="big")
    def big() -> None: ...

    # No worker: the execution stays pending, with a map as a worker would leave it
    # halfway: 8,970 items completed, 30 failed, 50 in flight and 950 still to send.
    execution_id = zart.start(big).execution_id
    rows(
        db,
        schema,
        """
        WITH g AS (
            INSERT INTO {s}.step_groups
                   (execution_id, group_key, mode, size, max_concurrency, open, in_flight,
                    next_branch)
            VALUES (%s, 'group:items', 'settled', 10000, 50, 1000, 50, 9050)
        )
        INSERT INTO {s}.branches (execution_id, group_key, index, name, fn, status, attempts,
                                  error)
        SELECT %s, 'group:items', i, 'items[' || i || ']', 'tests.test_cli:cli_double',
               CASE WHEN i < 8970 THEN 'completed' WHEN i < 9000 THEN 'failed'
                    WHEN i < 9050 THEN 'queued' ELSE 'pending' END,
               CASE WHEN i < 9050 THEN 1 ELSE 0 END,
               CASE WHEN i >= 8970 AND i < 9000
                    THEN jsonb_build_object('type', 'builtins.ValueError',
                                            'message', 'bad item ' || i) END
          FROM generate_series(0, 9999) AS i
        RETURNING 1
        """,
        execution_id,
        execution_id,
    )

    text = cli.ok("executions", "show", execution_id)
    lines = _section(text, "group group:items")
    assert lines[0] == (
        "group group:items (settled): running; 10000 branches, 1000 open, at most 50 at once"
    )
    assert lines[1] == (
        "10000 branches: 950 pending, 50 queued, 8970 completed, 30 failed; "
        "the first 20 of the 80 failed or running:"
    )
    assert lines[2].split() == ["BRANCH", "NAME", "STATUS", "ATTEMPTS", "ERROR"]
    listed = [line.split()[:3] for line in lines[3:]]
    assert listed == [[str(i), f"items[{i}]", "failed"] for i in range(8970, 8990)]
    assert lines[3].endswith("builtins.ValueError: bad item 8970")
    assert len(text.splitlines()) < 60

    # JSON has every branch.
    [group] = cli.json("executions", "show", execution_id)["groups"]
    assert len(group["branches"]) == 10000
    assert group["branches"][9049]["status"] == "queued"
    # No execution listed is a child: no parent column.
    assert "PARENT" not in cli.ok("executions", "list").splitlines()[0]

    # Past 20 children, counts by status and those that did not complete.
    rows(
        db,
        schema,
        """
        INSERT INTO {s}.executions
               (id, actor_name, queue_name, status, input_hash, input, resume_message,
                parent_id, parent_step, detached)
        SELECT %s || '/child:part#' || i, 'part', 'big',
               CASE WHEN i <= 22 THEN 'completed' WHEN i = 23 THEN 'failed' ELSE 'waiting' END,
               '', '{{}}', '', %s, 'child:part#' || i, i = 25
          FROM generate_series(1, 25) AS i
        RETURNING 1
        """,
        execution_id,
        execution_id,
    )
    text = cli.ok("executions", "show", execution_id)
    lines = _section(text, "25 children")
    assert lines[0] == "25 children: 2 waiting, 22 completed, 1 failed; the 3 not completed:"
    assert [line.split()[2:4] for line in lines[2:]] == [
        ["failed", "no"],
        ["waiting", "no"],
        ["waiting", "yes"],
    ]
    assert len(cli.json("executions", "show", execution_id)["children"]) == 25


def test_pause_resume_and_rerun_from_the_command_line(
    cli: Cli,
    capsys: pytest.CaptureFixture[str],
    broker: PostgresBroker,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @zart.durable(actor_name="ledger")
    def ledger() -> str:
        zart.step("debit", lambda: "debited")
        zart.wait_for_event("approve")
        return zart.step("credit", lambda: "credited")

    start_worker(broker)
    zart.start(ledger, execution_id="ledger-1")
    wait_until(lambda: _status(cli, "ledger-1") == "waiting", message="the wait")
    assert "paused execution 'ledger-1'" in cli.ok("executions", "pause", "ledger-1")
    assert "paused" in cli.ok("executions", "show", "ledger-1")
    zart.send_event("ledger-1", "approve", None)
    assert cli.ok("executions", "resume", "ledger-1").startswith("resumed execution 'ledger-1'")
    wait_until(lambda: _status(cli, "ledger-1") == "completed", message="the resumed run")
    assert cli.ok("executions", "rerun", "ledger-1", "--from", "credit").startswith(
        "running execution 'ledger-1' again from step:credit"
    )
    wait_until(lambda: _status(cli, "ledger-1") == "completed", message="the rerun")
    error = cli.fails("executions", "rerun", "ledger-1", "--from", "refund")
    assert "has no step 'refund'" in error

    # Naming an actor needs the app's broker, where actors are declared.
    assert "pass --broker MODULE:BROKER" in cli.fails("actors", "pause", "ledger")
    app = types.ModuleType("ledger_app")
    app.broker = broker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ledger_app", app)
    with_app = Cli(capsys, "--broker", "ledger_app:broker")
    assert with_app.ok("actors", "pause", "ledger").startswith("paused actor 'ledger'")
    assert [a["actor_name"] for a in with_app.json("actors", "list")] == ["ledger"]
    assert "known: ledger" in with_app.fails("actors", "pause", "ledgr")
    assert with_app.ok("actors", "resume", "ledger").startswith("resumed actor 'ledger'; 0")
    assert "no actor is paused" in with_app.ok("actors", "list")


def test_schedules_from_the_command_line(
    cli: Cli,
    capsys: pytest.CaptureFixture[str],
    broker: PostgresBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @zart.durable(actor_name="report")
    def report(region: str) -> str:
        return region

    zart.schedules.create("report-eu", report, cron="0 6 * * *", tz="Europe/Berlin", args=["eu"])
    [listed] = cli.json("schedules", "list")
    assert (listed["name"], listed["cron"], listed["every_s"], listed["catchup_window_s"]) == (
        "report-eu",
        "0 6 * * *",
        None,
        86400.0,
    )
    assert "0 6 * * * (Europe/Berlin)" in cli.ok("schedules", "list")
    assert "paused schedule 'report-eu'" in cli.ok("schedules", "pause", "report-eu")
    assert "paused since" in cli.ok("schedules", "list")
    assert cli.ok("schedules", "resume", "report-eu").startswith(
        "resumed schedule 'report-eu'; its next tick is at"
    )
    assert "was not paused" in cli.ok("schedules", "resume", "report-eu")

    # Starting one needs the actor, declared by the application's broker.
    assert "pass --broker MODULE:BROKER" in cli.fails("schedules", "trigger", "report-eu")
    app = types.ModuleType("report_app")
    app.broker = broker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "report_app", app)
    with_app = Cli(capsys, "--broker", "report_app:broker")
    triggered = with_app.ok("schedules", "trigger", "report-eu", "--key", "k-1")
    assert triggered == "started execution 'schedule:report-eu:manual:k-1'\n"
    window = ("--start", "2025-01-01T00:00Z", "--end", "2025-01-03T00:00+00:00")
    assert with_app.ok("schedules", "backfill", "report-eu", *window) == (
        "backfilled schedule 'report-eu': 2 ticks started, 0 started before\n"
    )
    assert with_app.ok("schedules", "backfill", "report-eu", *window) == (
        "backfilled schedule 'report-eu': 0 ticks started, 2 started before\n"
    )
    # 06:00 in Berlin is 05:00 UTC in winter.
    assert sorted(e.id for e in zart.list_executions() if ":manual:" not in e.id) == [
        "schedule:report-eu:2025-01-01T05:00:00+00:00",
        "schedule:report-eu:2025-01-02T05:00:00+00:00",
    ]
    no_zone = cli("schedules", "backfill", "report-eu", "--start", "2025-01-01", "--end", "now")
    assert no_zone.code == 2 and "give ISO 8601 with a zone" in no_zone.err
    assert "deleted schedule 'report-eu'" in cli.ok("schedules", "delete", "report-eu")
    assert "no schedule is named 'report-eu'" in cli.fails("schedules", "delete", "report-eu")
    assert cli.ok("schedules", "list") == "(no schedules)\n"
