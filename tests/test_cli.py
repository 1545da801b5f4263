"""The zart-dramatiq command, run in-process against a real PostgreSQL and a fresh schema."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from tests.support import Cli, wait_until
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
        ]
        assert table[1].split() == ["alpha", "2", "1", "0", "0", "0"]
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
