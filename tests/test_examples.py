"""The examples run as documented: the README demo, onboarding, a CLI-driven approval,
and the monthly report's fan-out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg

from tests.support import ROOT, Cli, Processes, rows, wait_until

#: The console script installed with the package, next to this interpreter.
ZART_DRAMATIQ = str(Path(sys.executable).with_name("zart-dramatiq"))
#: Worker threads of the example workers: dramatiq's default, as a user would run them.
DRAMATIQ_THREADS = 8


def app_env(database_url: str, schema: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "ZART_SCHEMA": schema}


def run(
    argv: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_readme_demo_runs(database_url: str, unmigrated_schema: str) -> None:
    demo = run(
        [sys.executable, "-m", "examples.demo"],
        app_env(database_url, unmigrated_schema),
        timeout=180,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "applied 0001_broker, 0002_durable" in demo.stdout
    assert "Receipt: Receipt(order_id=" in demo.stdout
    assert "tracking_number='1Z" in demo.stdout
    steps = [line.split()[:3] for line in demo.stdout.splitlines() if line.startswith("  ")]
    assert steps[1:] == [
        ["step:validate-address", "completed", "1"],
        ["step:charge_card", "completed", "1"],
        ["sleep:warehouse-settle", "completed", "1"],
        ["event:shipment_ready", "completed", "1"],
    ]
    assert "Stopped the worker" in demo.stdout


def test_onboarding_retries_the_email_and_compensates(
    database_url: str, schema: str, processes: Processes, cli: Cli
) -> None:
    processes.dramatiq_worker("examples.onboarding", threads=DRAMATIQ_THREADS)
    user_id = f"u-{uuid.uuid4().hex[:6]}"
    onboarded = run(
        [sys.executable, "-m", "examples.onboarding", user_id, f"{user_id}@example.com", "free"],
        app_env(database_url, schema),
    )
    assert onboarded.returncode == 0, onboarded.stderr + processes.output()
    assert json.loads(onboarded.stdout) == {
        "user_id": user_id,
        "welcome_message_id": f"msg-{user_id}@example.com",
        "workspace": f"personal-{user_id}",
    }

    steps = {s["key"]: s for s in cli.json("executions", "show", f"onboarding-{user_id}")["steps"]}
    email = steps["step:send-welcome-email"]
    assert (email["status"], email["attempts"]) == ("completed", 3)
    team = steps["step:create-team-workspace"]
    # Non-retryable: one attempt, and its error recorded for every replay.
    assert (team["status"], team["attempts"]) == ("failed", 1)
    assert team["error"]["type"] == "examples.onboarding.WorkspaceQuotaExceeded"
    assert steps["step:create-personal-workspace"]["status"] == "completed"
    assert_no_discarded_result_warning(processes)


def test_approval_waits_for_a_decision_sent_with_the_cli(
    database_url: str, schema: str, processes: Processes, cli: Cli
) -> None:
    processes.dramatiq_worker("examples.approval", threads=DRAMATIQ_THREADS)
    env = app_env(database_url, schema)
    report_id = f"EXP-{uuid.uuid4().hex[:6]}"
    started = run([sys.executable, "-m", "examples.approval", report_id, "ana", "120.50"], env)
    assert started.returncode == 0, started.stderr
    execution_id = started.stdout.strip()
    assert execution_id == f"approval-{report_id}"

    def show() -> dict:
        return cli.json("executions", "show", execution_id)  # type: ignore[no-any-return]

    wait_until(
        lambda: show()["waiting_for"] == "approval",
        timeout=60,
        message=lambda: f"the approval wait; worker log:\n{processes.output()}",
    )

    # The command from request_approval's docstring.
    sent = run(
        [ZART_DRAMATIQ, "send-event", execution_id, "approval", '{"approved": true, "by": "ana"}'],
        env,
    )
    assert (sent.returncode, sent.stderr) == (0, ""), sent
    assert sent.stdout == f"sent event 'approval' to execution {execution_id!r}\n"

    info = wait_until(
        lambda: (found := show())["status"] == "completed" and found,
        timeout=30,
        message=lambda: f"the decision; worker log:\n{processes.output()}",
    )
    assert info["result"] == {
        "report_id": report_id,
        "outcome": "approved",
        "by": "ana",
        "payment_id": f"pay-{report_id}",
    }
    assert [s["key"] for s in info["steps"]] == [
        "step:notify-approver",
        "event:approval",
        "step:reimburse",
    ]

    # Through the application's own broker, as an app on Redis or RabbitMQ would.
    shown = run(
        [ZART_DRAMATIQ, "--broker", "examples.approval:broker", "executions", "show", execution_id],
        env,
    )
    assert shown.returncode == 0, shown.stderr
    assert "status       completed" in shown.stdout
    assert_no_discarded_result_warning(processes)


def test_monthly_report_fans_out_and_records_the_report_once(
    database_url: str, schema: str, processes: Processes, cli: Cli, db: psycopg.Connection
) -> None:
    processes.dramatiq_worker("examples.reports", threads=DRAMATIQ_THREADS)
    env = app_env(database_url, schema)
    # More customers than the map's max_concurrency (20): its window has to move on.
    customers = [str(c) for c in range(1, 26)]
    report = run([sys.executable, "-m", "examples.reports", "2024-05", *customers], env)
    assert report.returncode == 0, report.stderr + processes.output()
    summary = json.loads(report.stdout)
    # Invoices of c * 10 + 0.50; customers from 4000 API calls (c * 1000) up are gold.
    assert {k: summary[k] for k in ("month", "customers", "total_invoiced", "gold")} == {
        "month": "2024-05",
        "customers": 25,
        "total_invoiced": "3262.50",
        "gold": list(range(4, 26)),
    }
    pdf_url = summary["pdf_url"]
    assert pdf_url.startswith("https://files.example.com/reports/2024-05-")

    def recorded() -> list[tuple[object, ...]]:
        return rows(
            db,
            schema,
            "SELECT id, execution_id, month, pdf_url, customers, total_invoiced "
            "FROM {s}.monthly_reports",
        )

    # The row the transactional step wrote, once; its id is the summary's report_id.
    assert recorded() == [
        (summary["report_id"], "report-2024-05", "2024-05", pdf_url, 25, Decimal("3262.50"))
    ]

    info = cli.json("executions", "show", "report-2024-05")
    assert [(s["key"], s["status"]) for s in info["steps"]] == [
        ("group:parallel", "completed"),
        ("group:score", "completed"),
        ("child:render_pdf", "completed"),
        ("step:record-report", "completed"),
        ("step:stamped-at", "completed"),
    ]
    groups = {g["key"]: g for g in info["groups"]}
    fetches, scores = groups["group:parallel"], groups["group:score"]
    assert [(b["name"], b["status"]) for b in fetches["branches"]] == [
        ("fetch-invoices", "completed"),
        ("fetch-usage", "completed"),
    ]
    assert (scores["size"], scores["max_concurrency"]) == (25, 20)
    assert [b["status"] for b in scores["branches"]] == ["completed"] * 25
    [child] = info["children"]
    assert (child["id"], child["status"]) == ("report-2024-05/child:render_pdf", "completed")
    assert cli.json("executions", "show", child["id"])["result"]["url"] == pdf_url

    # The same month again: the execution exists, so its recorded summary comes back and
    # nothing runs or is written again.
    again = run([sys.executable, "-m", "examples.reports", "2024-05", *customers], env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == summary
    assert len(recorded()) == 1
    assert_no_discarded_result_warning(processes)


def assert_no_discarded_result_warning(processes: Processes) -> None:
    """The workers did not log Dramatiq's warning that an actor's return value was discarded."""
    log = processes.output()
    assert "returned a value that is not None" not in log, log
