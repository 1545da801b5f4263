"""Safe deploys: patches, divergences parked as blocked, their resumption, and replay checks.

A deploy is simulated as a worker sees one: the actor ``flow`` is declared again, on the
same broker, with another body (``deploy``); the worker runs whatever is declared under
that name when a delivery comes. Each body here is a ``def`` of its own, as in real code:
a deploy changes the code, and so the fingerprint that lets workers wake what it blocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from prometheus_client import REGISTRY
from psycopg import sql

import zart_dramatiq as zart
from tests.support import ROOT, Effects, Processes, rows, scalar, wait_until
from zart_dramatiq.middleware import middleware_for
from zart_dramatiq.versioning import wake_blocked

#: The console script installed with the package, next to this interpreter.
ZART_DRAMATIQ = str(Path(sys.executable).with_name("zart-dramatiq"))


def touch(effects: Effects, name: str) -> str:
    """A step with a side effect: counted, so a step run again shows."""
    effects(name)
    return name


class Boom(Exception):
    pass


def declare(body: Callable[..., Any]) -> zart.DurableActor:
    """Declare ``body`` as the actor ``flow``, in place of the one declared before: a deploy."""
    dramatiq.get_broker().actors.pop("flow", None)
    return zart.durable(max_retries=0, actor_name="flow")(body)


def deploy(effects: Effects, version: str) -> zart.DurableActor:
    """Declare the actor ``flow`` with the body of ``version``, as a deploy would."""
    durable = declare

    if version == "v1":

        @durable
        def flow() -> list[str]:
            done = [zart.step("a", touch, effects, "a"), zart.step("b", touch, effects, "b")]
            zart.wait_for_event("go")
            return [*done, zart.step("c", touch, effects, "c")]

    elif version == "reordered":

        @durable
        def flow() -> list[str]:
            done = [zart.step("b", touch, effects, "b"), zart.step("a", touch, effects, "a")]
            zart.wait_for_event("go")
            return [*done, zart.step("c", touch, effects, "c")]

    elif version == "renamed":

        @durable
        def flow() -> list[str]:
            done = [zart.step("a", touch, effects, "a"), zart.step("b2", touch, effects, "b2")]
            zart.wait_for_event("go")
            return [*done, zart.step("c", touch, effects, "c")]

    elif version == "inserted":

        @durable
        def flow() -> list[str]:
            done = [zart.step("a", touch, effects, "a"), zart.step("x", touch, effects, "x")]
            done.append(zart.step("b", touch, effects, "b"))
            zart.wait_for_event("go")
            return [*done, zart.step("c", touch, effects, "c")]

    elif version == "inserted_first":

        @durable
        def flow() -> list[str]:
            done = [zart.step("x", touch, effects, "x"), zart.step("a", touch, effects, "a")]
            done.append(zart.step("b", touch, effects, "b"))
            zart.wait_for_event("go")
            return [*done, zart.step("c", touch, effects, "c")]

    elif version == "skipped":

        @durable
        def flow() -> list[str]:
            done = [zart.step("a", touch, effects, "a")]
            zart.wait_for_event("go")
            return [*done, zart.step("c", touch, effects, "c")]

    elif version == "removed":

        @durable
        def flow() -> list[str]:
            return [zart.step("a", touch, effects, "a")]

    else:
        raise AssertionError(version)
    return flow


def waiting(execution_id: str) -> bool:
    return zart.get_execution(execution_id).status == "waiting"


def blocked_at(execution_id: str) -> zart.BlockInfo | None:
    info = zart.get_execution(execution_id)
    return info.blocked if info.status == "blocked" else None


def nondeterminism_count() -> float:
    return REGISTRY.get_sample_value("zart_nondeterminism_errors_total", {"actor": "flow"}) or 0.0


# -- Patches -----------------------------------------------------------------------------


def test_patched_is_true_for_a_new_execution_and_recorded(broker, worker, db, schema) -> None:
    effects = Effects()
    answers: list[bool] = []

    @zart.durable(max_retries=0)
    def patched_flow() -> str:
        answers.append(zart.patched("express"))
        if answers[-1]:
            zart.step("express", touch, effects, "express")
        zart.wait_for_event("go")
        answers.append(zart.patched("express"))  # asked again: the same answer, not recorded
        return "new" if answers[-1] else "old"

    handle = zart.start(patched_flow, execution_id="new")
    wait_until(lambda: waiting("new"), timeout=15, message="the first run to wait")
    zart.send_event("new", "go")
    assert handle.result(timeout=15) == "new"
    assert answers == [True, True, True]  # the second run replayed the recorded answer
    assert effects["express"] == 1
    journal = rows(
        db,
        schema,
        "SELECT step_key, kind, status, result, position FROM {s}.steps"
        " WHERE execution_id = %s ORDER BY position",
        "new",
    )
    assert journal == [
        ("patch:express", "patch", "completed", True, 0),
        ("step:express", "step", "completed", "express", 1),
        ("event:go", "event", "completed", None, 2),
    ]


def test_patched_is_false_for_an_execution_recorded_before_the_patch(broker, worker) -> None:
    effects = Effects()

    @declare
    def before() -> str:
        zart.step("a", touch, effects, "a")
        zart.wait_for_event("go")
        return zart.step("b", touch, effects, "b")

    zart.start(before, execution_id="old")
    wait_until(lambda: waiting("old"), timeout=15, message="the old execution to wait")

    # The deploy: new executions audit before they wait; those recorded before do not.
    @declare
    def after() -> str:
        zart.step("a", touch, effects, "a")
        if zart.patched("audit"):
            zart.step("audit", touch, effects, f"audit-{zart.context().execution_id}")
        zart.wait_for_event("go")
        return zart.step("b", touch, effects, "b")

    zart.start(after, execution_id="new")
    wait_until(lambda: waiting("new"), timeout=15, message="the new execution to wait")
    for execution_id in ("old", "new"):
        zart.send_event(execution_id, "go")
    assert zart.get_handle("old").result(timeout=15) == "b"
    assert zart.get_handle("new").result(timeout=15) == "b"
    assert (effects["audit-old"], effects["audit-new"]) == (0, 1)
    assert (effects["a"], effects["b"]) == (2, 2)
    old = [s.key for s in zart.get_execution("old").steps]
    assert "patch:audit" not in old and "step:audit" not in old
    new = [s.key for s in zart.get_execution("new").steps]
    assert "patch:audit" in new and "step:audit" in new


def test_deprecate_patch_replays_executions_that_recorded_the_patch(broker, worker) -> None:
    effects = Effects()

    @declare
    def patched_code() -> str:
        if zart.patched("audit"):
            zart.step("audit", touch, effects, "audit")
        zart.wait_for_event("go")
        return zart.step("b", touch, effects, "b")

    for execution_id in ("patched-1", "patched-2"):
        zart.start(patched_code, execution_id=execution_id)
        wait_until(lambda i=execution_id: waiting(i), timeout=15, message="the wait")

    # Every execution took the new branch: the old one is removed, the patch deprecated.
    @declare
    def deprecated_code() -> str:
        zart.deprecate_patch("audit")
        zart.step("audit", touch, effects, "audit")
        zart.wait_for_event("go")
        return zart.step("b", touch, effects, "b")

    zart.send_event("patched-1", "go")
    assert zart.get_handle("patched-1").result(timeout=15) == "b"  # its marker is taken
    zart.start(deprecated_code, execution_id="deprecated")
    wait_until(lambda: waiting("deprecated"), timeout=15, message="the new execution to wait")
    marker = {s.key: s for s in zart.get_execution("deprecated").steps}["patch:audit"]
    assert (marker.kind, marker.fn) == ("patch", "deprecate_patch")

    # And once no execution that ran patched() is left, the call goes too.
    @declare
    def final_code() -> str:
        zart.step("audit", touch, effects, "audit")
        zart.wait_for_event("go")
        return zart.step("b", touch, effects, "b")

    zart.send_event("deprecated", "go")
    assert zart.get_handle("deprecated").result(timeout=15) == "b"  # its marker is passed over
    assert effects["audit"] == 3
    # Too early for patched-2, whose marker came from patched(): it blocks, as in Temporal.
    zart.send_event("patched-2", "go")
    blocked = wait_until(lambda: blocked_at("patched-2"), timeout=15, message="patched-2 to block")
    assert blocked.step == "patch:audit"
    assert effects["audit"] == 3


# -- Divergences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "step", "kind", "called"),
    [
        ("reordered", "step:a", "out_of_order", "step:b"),
        ("renamed", "step:b", "unrecorded", "step:b2"),
        ("inserted", "step:b", "unrecorded", "step:x"),
        ("skipped", "step:b", "out_of_order", "event:go"),
        ("removed", "step:b", "missing", None),
    ],
)
def test_a_divergent_deploy_blocks_the_execution_and_compatible_code_resumes_it(
    broker, worker, version: str, step: str, kind: str, called: str | None
) -> None:
    effects = Effects()
    flow = deploy(effects, "v1")
    handle = zart.start(flow, execution_id="order")
    wait_until(lambda: waiting("order"), timeout=15, message="the first run to wait")
    counted = nondeterminism_count()

    deploy(effects, version)
    zart.send_event("order", "go")  # the next run replays the journal with the new code
    blocked = wait_until(lambda: blocked_at("order"), timeout=15, message="the replay to block")
    assert (blocked.step, blocked.kind, blocked.blocks) == (step, kind, 1)
    assert called is None or called in blocked.message
    info = zart.get_execution("order")
    assert info.waiting_for == step
    assert info.error is None  # blocked is not failed
    # Nothing ran again, nothing new ran, and the event still waits in the inbox.
    assert dict(effects.counts) == {"a": 1, "b": 1}
    assert [e.consumed_by for e in info.inbox] == [None]
    assert nondeterminism_count() == counted + 1

    # Deploying code that replays it resumes it, with no one asking (the backoff is a minute).
    deploy(effects, "v1")
    assert handle.result(timeout=15) == ["a", "b", "c"]
    assert dict(effects.counts) == {"a": 1, "b": 1, "c": 1}


def test_a_still_incompatible_deploy_blocks_again_without_running_anything(broker, worker) -> None:
    effects = Effects()
    handle = zart.start(deploy(effects, "v1"), execution_id="order")
    wait_until(lambda: waiting("order"), timeout=15, message="the first run to wait")
    deploy(effects, "reordered")
    zart.send_event("order", "go")
    wait_until(lambda: blocked_at("order"), timeout=15, message="the replay to block")

    deploy(effects, "inserted_first")  # other code, diverging at the same entry
    blocked = wait_until(
        lambda: (b := blocked_at("order")) is not None and b.blocks == 2 and b,
        timeout=15,
        message="the new code to try it, and block again",
    )
    assert (blocked.step, blocked.kind) == ("step:a", "unrecorded")
    assert dict(effects.counts) == {"a": 1, "b": 1}
    # Each version of the code tries it once: until its backoff, nothing wakes it again.
    middleware = middleware_for(broker)
    runs = zart.get_execution("order").runs
    assert wake_blocked(middleware.store, middleware.transport, 60.0) == []
    middleware.sweeper.sweep()
    info = zart.get_execution("order")
    assert (info.status, info.runs) == ("blocked", runs)
    assert info.wake_at is not None and info.wake_at > info.updated_at + timedelta(seconds=100)

    deploy(effects, "v1")
    assert handle.result(timeout=15) == ["a", "b", "c"]
    assert dict(effects.counts) == {"a": 1, "b": 1, "c": 1}


def test_a_blocked_execution_is_tried_again_after_its_backoff(broker, start_worker) -> None:
    broker.add_middleware(
        zart.DurableMiddleware(
            blocked_backoff=(timedelta(milliseconds=100), timedelta(milliseconds=200))
        ),
        before=type(broker.middleware[0]),
    )
    start_worker(broker, threads=4)
    effects = Effects()
    # A change no fingerprint sees (data the body reads): only the backoff tries it again.
    order = {"first": "a"}

    @zart.durable(max_retries=0)
    def configured() -> str:
        first = zart.step(order["first"], touch, effects, order["first"])
        zart.wait_for_event("go")
        return first

    handle = zart.start(configured, execution_id="configured")
    wait_until(lambda: waiting("configured"), timeout=15, message="the first run to wait")
    order["first"] = "z"
    zart.send_event("configured", "go")
    wait_until(
        lambda: (b := blocked_at("configured")) is not None and b.blocks >= 3,
        timeout=15,
        message="the replay to be tried again, and block again",
    )
    assert dict(effects.counts) == {"a": 1}
    order["first"] = "a"
    assert handle.result(timeout=15) == "a"
    assert dict(effects.counts) == {"a": 1}


def test_unblock_tries_a_blocked_execution_at_once(broker, worker) -> None:
    effects = Effects()
    order = {"first": "a"}

    @zart.durable(max_retries=0)
    def configured() -> str:
        first = zart.step(order["first"], touch, effects, order["first"])
        zart.wait_for_event("go")
        return first

    handle = zart.start(configured, execution_id="configured")
    wait_until(lambda: waiting("configured"), timeout=15, message="the first run to wait")
    assert not zart.unblock("configured")  # waiting, not blocked: nothing to do
    order["first"] = "z"
    zart.send_event("configured", "go")
    wait_until(lambda: blocked_at("configured"), timeout=15, message="the replay to block")
    order["first"] = "a"
    assert zart.unblock("configured")
    assert handle.result(timeout=15) == "a"
    with pytest.raises(zart.UnknownExecution):
        zart.unblock("nobody")


def test_a_blocked_execution_can_be_cancelled(broker, worker) -> None:
    effects = Effects()
    handle = zart.start(deploy(effects, "v1"), execution_id="order")
    wait_until(lambda: waiting("order"), timeout=15, message="the first run to wait")
    deploy(effects, "renamed")
    zart.send_event("order", "go")
    wait_until(lambda: blocked_at("order"), timeout=15, message="the replay to block")
    assert zart.cancel("order") == "blocked"
    with pytest.raises(zart.ExecutionFailed) as ended:
        handle.result(timeout=15)
    assert ended.value.status == "cancelled"
    # Code that would replay it changes nothing now.
    deploy(effects, "v1")
    middleware = middleware_for(broker)
    assert wake_blocked(middleware.store, middleware.transport, 0.0) == []
    assert zart.get_execution("order").status == "cancelled"
    assert dict(effects.counts) == {"a": 1, "b": 1}


def test_an_operator_fails_a_blocked_execution_and_retries_it_once_fixed(broker, worker) -> None:
    effects = Effects()
    handle = zart.start(deploy(effects, "v1"), execution_id="order")
    wait_until(lambda: waiting("order"), timeout=15, message="the first run to wait")
    with pytest.raises(zart.ZartError, match="only a blocked execution"):
        zart.fail("order", "not blocked")
    deploy(effects, "inserted")
    zart.send_event("order", "go")
    wait_until(lambda: blocked_at("order"), timeout=15, message="the replay to block")

    zart.fail("order", "the fraud check cannot run for old orders")
    with pytest.raises(zart.ExecutionFailed) as failed:
        handle.result(timeout=15)
    assert failed.value.status == "failed"
    assert failed.value.error is not None
    assert failed.value.error["type"] == "zart_dramatiq.errors.NonDeterminismError"
    assert "the fraud check cannot run for old orders" in failed.value.error["message"]
    assert "step:b" in failed.value.error["message"]
    with pytest.raises(zart.ExecutionFinished):
        zart.fail("order", "again")

    deploy(effects, "v1")
    zart.retry("order")
    assert handle.result(timeout=15) == ["a", "b", "c"]
    assert dict(effects.counts) == {"a": 1, "b": 1, "c": 1}


def test_the_command_shows_unblocks_and_fails_a_blocked_execution(broker, worker, cli) -> None:
    effects = Effects()
    zart.start(deploy(effects, "v1"), execution_id="order")
    wait_until(lambda: waiting("order"), timeout=15, message="the first run to wait")
    deploy(effects, "renamed")
    zart.send_event("order", "go")
    wait_until(lambda: blocked_at("order"), timeout=15, message="the replay to block")

    shown = cli.ok("executions", "show", "order").splitlines()
    assert [line.split() for line in shown if line.startswith("status ")] == [["status", "blocked"]]
    [blocked] = [line for line in shown if line.startswith("blocked at ")]
    assert "step:b (unrecorded; since " in blocked
    assert blocked.endswith(
        ", 1 try): the body called step:b2 where the journal records "
        "step:b (position 1); the journal has no step:b2 there: a call was added before step:b, "
        "or step:b was renamed"
    )
    assert any("(its replay is tried again)" in line for line in shown if "wakes at" in line)
    assert cli.json("executions", "show", "order")["blocked"]["step"] == "step:b"
    listed = cli.ok("executions", "list", "--status", "blocked").splitlines()
    assert listed[1].split()[:4] == ["order", "flow", "blocked", "step:b"]

    assert "its replay is tried again now" in cli.ok("executions", "unblock", "order")
    wait_until(
        lambda: (b := blocked_at("order")) is not None and b.blocks == 2,
        timeout=15,
        message="the replay to be tried, and block again",
    )
    assert "failed execution 'order': given up" in cli.ok(
        "executions", "fail", "order", "--reason", "given up"
    )
    assert zart.get_execution("order").status == "failed"
    assert "is failed, not blocked" in cli.fails("executions", "unblock", "order")
    assert dict(effects.counts) == {"a": 1, "b": 1}


# -- What the order check leaves alone -----------------------------------------------------


def test_a_step_functions_own_zart_calls_are_kept_out_of_the_order(
    broker, worker, db, schema
) -> None:
    effects = Effects()

    def outer() -> str:
        return zart.step("inner", touch, effects, "inner") + "!"

    @zart.durable(max_retries=0)
    def nesting() -> str:
        value = zart.step("outer", outer)
        zart.wait_for_event("go")
        return value + zart.step("after", touch, effects, "after")

    handle = zart.start(nesting, execution_id="nesting")
    wait_until(lambda: waiting("nesting"), timeout=15, message="the first run to wait")
    zart.send_event("nesting", "go")
    # The replay returns outer's result without calling it, so inner is not called again.
    assert handle.result(timeout=15) == "inner!after"
    query = "SELECT step_key, position FROM {s}.steps WHERE execution_id = %s"
    positions = dict(rows(db, schema, query, "nesting"))
    assert positions == {"step:outer": 0, "step:inner": -1, "event:go": 1, "step:after": 2}


def test_a_retry_that_forgot_the_failed_step_is_not_a_divergence(broker, worker) -> None:
    effects = Effects()
    failing = {"b": True}

    def b() -> str:
        effects("b")
        if failing["b"]:
            raise Boom("b failed")
        return "b"

    @zart.durable(max_retries=0)
    def compensating() -> list[str]:
        done = [zart.step("a", touch, effects, "a")]
        try:
            done.append(zart.step("b", b))
        except Boom:
            zart.step("undo", touch, effects, "undo")
            raise
        return [*done, zart.step("c", touch, effects, "c")]

    handle = zart.start(compensating, execution_id="compensating")
    with pytest.raises(zart.ExecutionFailed):
        handle.result(timeout=15)
    # The retry forgets step b (it failed the execution) and keeps undo, recorded after it:
    # the body now takes the way where b succeeds, and undo is not called again.
    failing["b"] = False
    zart.retry("compensating")
    assert handle.result(timeout=15) == ["a", "b", "c"]
    assert dict(effects.counts) == {"a": 1, "b": 2, "undo": 1, "c": 1}


def test_an_execution_recorded_before_positions_is_checked_by_key(
    broker, worker, db, schema
) -> None:
    effects = Effects()
    handle = zart.start(deploy(effects, "v1"), execution_id="order")
    wait_until(lambda: waiting("order"), timeout=15, message="the first run to wait")
    # As a worker of the previous release recorded it.
    db.execute(
        sql.SQL("UPDATE {}.steps SET position = NULL WHERE execution_id = %s").format(
            sql.Identifier(schema)
        ),
        ("order",),
    )
    deploy(effects, "reordered")  # by key, each step still finds its recorded result
    zart.send_event("order", "go")
    assert handle.result(timeout=15) == ["b", "a", "c"]
    assert dict(effects.counts) == {"a": 1, "b": 1, "c": 1}


# -- Replay checks -------------------------------------------------------------------------


def test_replay_check_names_each_divergence_and_writes_nothing(broker, worker, db, schema) -> None:
    effects = Effects()
    flow = deploy(effects, "v1")
    for execution_id in ("order-1", "order-2"):
        zart.start(flow, execution_id=execution_id)
        wait_until(lambda i=execution_id: waiting(i), timeout=15, message="the wait")
    zart.send_event("order-2", "go")
    assert zart.get_handle("order-2").result(timeout=15) == ["a", "b", "c"]

    def snapshot() -> tuple[object, ...]:
        return (
            rows(db, schema, "SELECT * FROM {s}.steps ORDER BY execution_id, step_key"),
            rows(db, schema, "SELECT id, status, runs, updated_at FROM {s}.executions ORDER BY id"),
            scalar(db, schema, "SELECT count(*) FROM {s}.messages"),
            dict(effects.counts),
        )

    before = snapshot()
    report = zart.replay_check(broker=broker)
    assert report.ok
    assert {(r.execution_id, r.outcome, r.replayed, r.entries) for r in report.results} == {
        ("order-1", "clean", 3, 3),  # up to its wait
        ("order-2", "clean", 4, 4),  # to its end
    }
    expected = {
        "reordered": ("step:a", "out_of_order"),
        "renamed": ("step:b", "unrecorded"),
        "inserted": ("step:b", "unrecorded"),
        "skipped": ("step:b", "out_of_order"),
        "removed": ("step:b", "missing"),
    }
    for version, (step, kind) in expected.items():
        deploy(effects, version)
        report = zart.replay_check(broker=broker)
        assert not report.ok, version
        assert {(r.execution_id, r.outcome, r.step, r.kind) for r in report.results} == {
            ("order-1", "diverged", step, kind),
            ("order-2", "diverged", step, kind),
        }, version
    assert snapshot() == before
    assert zart.replay_check(broker=broker, actor="nobody").results == []


def write_variant(directory: Path, edit: tuple[str, str] | None = None) -> Path:
    """A copy of the ``examples`` package in ``directory``, ``edit`` made to its orders.py:
    the same modules, changed as a deploy would change them. Returns where to run from."""
    package = directory / "examples"
    package.mkdir(parents=True)
    for name in ("__init__.py", "app.py", "orders.py"):
        source = (ROOT / "examples" / name).read_text()
        if name == "orders.py" and edit is not None:
            assert edit[0] in source, edit[0]
            source = source.replace(*edit)
        (package / name).write_text(source)
    return directory


VALIDATE = '    zart.step("validate-address", validate_address, order.id)\n'
CHARGE = "    charge_id = charge_card(order.id, order.amount)\n"


def test_replay_check_command_reports_each_change_of_an_example(
    make_broker, processes: Processes, tmp_path: Path
) -> None:
    def command(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=cwd, env=processes.env, capture_output=True, text=True, timeout=120
        )

    processes.dramatiq_worker("examples.orders", threads=2)
    started = command(
        sys.executable,
        "-c",
        "from decimal import Decimal\n"
        "import zart_dramatiq as zart\n"
        "from examples.orders import Order, fulfil_order, broker\n"
        "for i in (1, 2):\n"
        "    order = Order(id=str(i), customer='ana', amount=Decimal('9.50'))\n"
        "    zart.start(fulfil_order, order, execution_id=f'order-{i}')\n"
        "broker.close()\n",
    )
    assert started.returncode == 0, started.stderr
    broker = make_broker()

    def status(execution_id: str) -> str:
        return zart.get_execution(execution_id, broker=broker).status

    for execution_id in ("order-1", "order-2"):
        wait_until(
            lambda i=execution_id: status(i) == "waiting", timeout=60, message=processes.output
        )
    shipment = {"tracking_number": "1Z999", "carrier": "UPS"}
    zart.send_event("order-2", "shipment_ready", shipment, broker=broker)
    wait_until(lambda: status("order-2") == "completed", timeout=60, message=processes.output)

    def state() -> tuple[object, ...]:
        info = zart.get_execution("order-1", broker=broker)
        return info.status, info.runs, info.updated_at, info.steps

    waiting_order = state()
    unchanged = command(ZART_DRAMATIQ, "replay-check", "--app", "examples.orders")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert unchanged.stdout.splitlines() == [
        "2 executions replay cleanly, 0 diverge, 0 fail to replay, 0 skipped"
    ]

    fraud_check = '    zart.step("fraud-check", validate_address, order.id)\n'
    changes = {
        "orders_reordered": (VALIDATE + CHARGE, CHARGE + VALIDATE),
        "orders_renamed": ('"validate-address"', '"check-address"'),
        "orders_inserted": (CHARGE, fraud_check + CHARGE),
    }
    expected = {
        "orders_reordered": "diverges at step:validate-address (out_of_order): "
        "NonDeterminismError: the body called step:charge_card where the journal records "
        "step:validate-address (position 0)",
        "orders_renamed": "diverges at step:validate-address (unrecorded): "
        "NonDeterminismError: the body called step:check-address where the journal records "
        "step:validate-address (position 0)",
        "orders_inserted": "diverges at step:charge_card (unrecorded): "
        "NonDeterminismError: the body called step:fraud-check where the journal records "
        "step:charge_card (position 1)",
    }
    for name, edit in changes.items():
        # The code changed, deployed: the same module, run from the new release's directory.
        release = write_variant(tmp_path / name, edit)
        checked = command(ZART_DRAMATIQ, "replay-check", "--app", "examples.orders", cwd=release)
        assert checked.returncode == 1, checked.stdout + checked.stderr
        lines = checked.stdout.splitlines()
        assert lines[-1] == "0 executions replay cleanly, 2 diverge, 0 fail to replay, 0 skipped"
        for execution_id, ended in (("order-1", "waiting"), ("order-2", "completed")):
            [line] = [line for line in lines if line.startswith(f"{execution_id} ")]
            assert line.startswith(f"{execution_id} (fulfil_order, {ended}): {expected[name]}")
    # Only the order not ended, and the report as JSON.
    checked = command(
        ZART_DRAMATIQ,
        "replay-check",
        "--app",
        "examples.orders",
        "--since",
        "0s",
        "--json",
        cwd=tmp_path / "orders_reordered",
    )
    assert checked.returncode == 1, checked.stdout + checked.stderr
    [result] = json.loads(checked.stdout)
    assert {k: result[k] for k in ("execution_id", "outcome", "step", "kind")} == {
        "execution_id": "order-1",
        "outcome": "diverged",
        "step": "step:validate-address",
        "kind": "out_of_order",
    }
    # Nothing of any of it ran or was written: the order that waits is as it was.
    assert state() == waiting_order


def test_replay_check_command_needs_the_application(cli) -> None:
    assert "the following arguments are required: --app" in cli("replay-check").err
    assert "cannot be combined with replay-check --app" in cli.fails(
        "replay-check", "--app", "examples.app"
    )


def test_the_api_and_the_dashboard_say_where_a_blocked_execution_diverged(broker, worker) -> None:
    from fastapi.testclient import TestClient

    from zart_dramatiq.http import create_app

    effects = Effects()
    zart.start(deploy(effects, "v1"), execution_id="order")
    wait_until(lambda: waiting("order"), timeout=15, message="the first run to wait")
    deploy(effects, "reordered")
    zart.send_event("order", "go")
    wait_until(lambda: blocked_at("order"), timeout=15, message="the replay to block")

    with TestClient(create_app(broker, auth=False)) as client:
        detail = client.get("/api/v1/executions/order").json()
        assert detail["status"] == "blocked"
        assert (detail["blocked"]["step"], detail["blocked"]["kind"]) == ("step:a", "out_of_order")
        page = client.get("/executions/order")
        assert "diverged from its journal at step:a (out of order)" in page.text
    zart.cancel("order")
