"""The zart-dramatiq command, run in-process against a real PostgreSQL and a fresh schema."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import dramatiq
import pytest
from dramatiq import Worker

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from tests.support import Cli, wait_until
from zart_dramatiq.cli import main


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
