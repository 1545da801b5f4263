"""The suite's own PostgreSQL, and the checks of the harness: each can fail."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.faults.harness import Db, Fault, FaultLab, OwnPostgres


def test_restart_keeps_the_url_and_ends_sessions(own_postgres: OwnPostgres) -> None:
    with psycopg.connect(own_postgres.url, autocommit=True) as before:
        started = before.execute("SELECT pg_postmaster_start_time()").fetchone()
        own_postgres.restart()
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
    with psycopg.connect(own_postgres.url, autocommit=True) as after:
        assert after.execute("SELECT pg_postmaster_start_time()").fetchone() != started


def test_stop_refuses_connections_until_start(own_postgres: OwnPostgres) -> None:
    own_postgres.stop()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(own_postgres.url, connect_timeout=2)
    finally:
        own_postgres.start()
    psycopg.connect(own_postgres.url).close()


def test_terminate_backends_by_application_name(own_postgres: OwnPostgres) -> None:
    with (
        psycopg.connect(own_postgres.url, autocommit=True, application_name="fault-x") as cut,
        psycopg.connect(own_postgres.url, autocommit=True, application_name="fault-y") as kept,
    ):
        assert own_postgres.terminate_backends("fault-x%") == 1
        with pytest.raises(psycopg.OperationalError):
            cut.execute("SELECT 1")
        kept.execute("SELECT 1")


def test_lock_out_refuses_new_sessions_of_a_worker_role(own_postgres: OwnPostgres) -> None:
    url = psycopg.conninfo.make_conninfo(own_postgres.url, user=own_postgres.worker_role("t"))
    own_postgres.lock_out("fault_t")
    try:
        with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
            psycopg.connect(url)
    finally:
        own_postgres.lock_out("fault_t", locked=False)
    psycopg.connect(url).close()


# --- The checks catch what they are meant to catch -----------------------------------------------


def fake_execution(lab: FaultLab, execution_id: str, tokens: list[str]) -> None:
    """A completed ten-step execution, written as the durable layer would."""
    db = Db(lab.server.url)
    db.rows(
        "INSERT INTO {s}.executions (id, actor_name, queue_name, status, input_hash, input,"
        " result, resume_message, runs, finished_at)"
        " VALUES (%s, 'ten_steps', 'default', 'completed', '', '{{}}', %s, '', 1, now())",
        execution_id,
        Jsonb(tokens),
        schema=lab.schema,
    )
    for n, token in enumerate(tokens):
        db.rows(
            "INSERT INTO {s}.steps (execution_id, step_key, kind, name, fn, status, result,"
            " finished_at) VALUES (%s, %s, 'step', %s, 'effect', 'completed', %s, now())",
            execution_id,
            f"step:s{n}",
            f"s{n}",
            Jsonb(token),
            schema=lab.schema,
        )
    db.close()


def fake_effects(
    lab: FaultLab, execution_id: str, rows: list[tuple[str, str]], *, later_s: float = 0
) -> None:
    """Effect rows, written now, or ``later_s`` seconds from now."""
    for step, token in rows:
        lab.effects_db.rows(
            "INSERT INTO {s}.fault_effects (execution_id, step, token, worker, pid, thread, at)"
            " VALUES (%s, %s, %s, 'w1', 1, 1, clock_timestamp() + %s * interval '1 second')",
            execution_id,
            step,
            token,
            later_s,
            schema=lab.effects_schema,
        )


def test_a_clean_execution_passes(lab: FaultLab) -> None:
    tokens = [f"t{n}" for n in range(10)]
    fake_execution(lab, "a", tokens)
    fake_effects(lab, "a", [(f"s{n}", tokens[n]) for n in range(10)])
    lab.started["a"] = "ten_steps"
    report = lab.analyse("clean", stall_s=1)
    assert report.problems() == [], report.explain()


def test_duplicates_beyond_the_bound_and_overwrites_are_reported(lab: FaultLab) -> None:
    tokens = [f"t{n}" for n in range(10)]
    fake_execution(lab, "a", tokens)
    # s1 ran twice; s2 three times; s3's recorded token was never an effect.
    effects = [(f"s{n}", tokens[n]) for n in range(10) if n != 3]
    fake_effects(lab, "a", [*effects, ("s1", "x1"), ("s2", "x2"), ("s2", "y2"), ("s3", "x3")])
    # A completed step rewritten later: what the audit trigger is there for.
    lab.db.rows(
        "UPDATE {s}.steps SET result = '\"t9-bis\"' WHERE step_key = 'step:s9'", schema=lab.schema
    )
    lab.started["a"] = "ten_steps"
    lab.faults.append(Fault("sigkill", 0, 0, in_flight_bound=2, recovery_s=0.1))
    report = lab.analyse("broken", stall_s=1)
    problems = "\n".join(report.problems())
    assert report.duplicates == 3
    assert "3 step re-runs against an in-flight bound of 2" in problems
    overwritten = "\n".join(report.overwritten)
    assert "4 overwritten step(s)" in problems
    assert "s3: recorded 't3' is no effect's token" in overwritten
    assert "s9: recorded 't9-bis' is no effect's token" in overwritten
    assert "step:s9: completed 't9' became completed 't9-bis'" in overwritten
    assert "returned tokens differ from its steps" in overwritten


def test_a_lost_execution_and_a_stuck_recovery_are_reported(lab: FaultLab) -> None:
    lab.start("ten_steps", "never-run")  # no worker: it stays pending
    lab.faults.append(Fault("pg-restart", 0, 0, in_flight_bound=8, stuck=["never-run"]))
    report = lab.analyse("lost", stall_s=0.5)
    problems = "\n".join(report.problems())
    assert "1 execution(s) lost: ('never-run', 'pending, expected completed" in problems
    assert "no recovery after pg-restart" in problems


def test_a_completed_step_run_again_later_is_reported(lab: FaultLab) -> None:
    tokens = [f"t{n}" for n in range(10)]
    fake_execution(lab, "a", tokens)
    fake_effects(lab, "a", [(f"s{n}", tokens[n]) for n in range(10)])
    fake_effects(lab, "a", [("s4", "again")], later_s=5)
    lab.started["a"] = "ten_steps"
    lab.faults.append(Fault("sigkill", 0, 0, in_flight_bound=4, recovery_s=0.1))
    report = lab.analyse("late", stall_s=1)
    assert report.duplicates == 1  # within the bound, but
    # (About 5 s: the fake rows are written moments apart on a busy machine.)
    [problem] = report.problems()
    assert re.fullmatch(
        r"1 completed step\(s\) re-run: a s4 ran again on w1 5\.\ds after it was recorded", problem
    ), problem


def test_a_redelivery_counts_only_where_no_worker_may_be_lost(lab: FaultLab) -> None:
    lab.db.rows(
        "INSERT INTO {s}.messages (queue_name, message_id, actor_name, payload, state, deliveries)"
        " VALUES ('default', 'm', 'ten_steps', '', 'claimed', 1)",
        schema=lab.schema,
    )
    lab.db.rows("UPDATE {s}.messages SET deliveries = 2", schema=lab.schema)
    report = lab.analyse("redelivered", stall_s=1)
    assert report.redeliveries == 1
    assert report.problems() == []
    report.redeliveries_allowed = False
    assert report.problems() == [
        "1 message(s) delivered again: in-flight work was handed back or over, "
        "though no worker was lost"
    ]
