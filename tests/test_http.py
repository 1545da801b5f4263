"""The HTTP API, through FastAPI's test client, against a real worker and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

import zart_dramatiq as zart
from tests.support import Effects, scalar, wait_until
from zart_dramatiq.api_keys import ApiKeys
from zart_dramatiq.http import create_app
from zart_dramatiq.middleware import middleware_for

Keys = Callable[..., dict[str, str]]


@pytest.fixture
def actors(broker) -> dict[str, zart.DurableActor]:
    @zart.durable(actor_name="greet")
    def greet(name: str) -> str:
        return f"hello {name}"

    @zart.durable(actor_name="approval")
    def approval(order: int) -> str:
        decision = zart.wait_for_event("decision")
        return f"order {order}: {decision['verdict']}"

    @zart.durable(actor_name="explode", max_retries=0)
    def explode() -> str:
        raise ValueError("boom")

    @zart.durable(actor_name="nap")
    def nap() -> str:
        zart.sleep("long", timedelta(hours=1))
        return "rested"

    return {"greet": greet, "approval": approval, "explode": explode, "nap": nap}


@pytest.fixture
def api(broker, actors) -> Iterator[TestClient]:
    with TestClient(create_app(broker, max_body_bytes=4096)) as test_client:
        yield test_client


@pytest.fixture
def keys(broker) -> Keys:
    """Headers carrying a new key with the scopes given."""

    def make(*scopes: str) -> dict[str, str]:
        _, token = ApiKeys(middleware_for(broker).store).create(scopes)
        return {"Authorization": f"Bearer {token}"}

    return make


def error_code(response: Any) -> str:
    return str(response.json()["error"]["code"])


def test_start_wait_and_show_an_execution(api, keys, worker) -> None:
    admin = keys("admin")
    started = api.post(
        "/api/v1/executions",
        json={"actor": "greet", "args": ["ada"], "execution_id": "g-1"},
        headers=admin,
    )
    assert started.status_code == 202
    assert started.json()["execution_id"] == "g-1"
    outcome = api.get("/api/v1/executions/g-1/result", params={"timeout": 20}, headers=admin)
    assert outcome.json() == {
        "execution_id": "g-1",
        "status": "completed",
        "done": True,
        "result": "hello ada",
        "error": None,
    }
    shown = api.get("/api/v1/executions/g-1", headers=keys("read")).json()
    assert (shown["status"], shown["actor_name"], shown["input"]) == (
        "completed",
        "greet",
        {"args": ["ada"], "kwargs": {}},
    )
    assert shown["steps"] == [] and shown["inbox"] == [] and shown["children"] == []


def test_a_start_is_idempotent_and_a_different_input_is_a_conflict(api, keys) -> None:
    admin = keys("admin")
    body = {"actor": "greet", "args": ["bob"]}
    first = api.post("/api/v1/executions", json=body, headers={**admin, "Idempotency-Key": "k-7"})
    again = api.post("/api/v1/executions", json=body, headers={**admin, "Idempotency-Key": "k-7"})
    assert first.json()["execution_id"] == again.json()["execution_id"] == "k-7"
    other = api.post(
        "/api/v1/executions",
        json={"actor": "greet", "args": ["eve"]},
        headers={**admin, "Idempotency-Key": "k-7"},
    )
    assert other.status_code == 409
    assert error_code(other) == "execution_conflict"
    assert "different input" in other.json()["error"]["message"]


def test_an_event_over_http_completes_a_waiting_execution_once(api, keys, worker) -> None:
    admin = keys("admin")
    api.post(
        "/api/v1/executions",
        json={"actor": "approval", "args": [7], "execution_id": "ap-7"},
        headers=admin,
    )
    waiting = api.get("/api/v1/executions/ap-7/result", params={"timeout": 0}, headers=admin)
    assert waiting.json()["done"] is False
    events = keys("events")
    sent = api.post(
        "/api/v1/executions/ap-7/events/decision",
        json={"verdict": "approved"},
        params={"key": "hook-1"},
        headers=events,
    )
    duplicate = api.post(
        "/api/v1/executions/ap-7/events/decision",
        json={"verdict": "rejected"},
        params={"key": "hook-1"},
        headers=events,
    )
    assert (sent.status_code, sent.json()) == (202, {"stored": True})
    assert (duplicate.status_code, duplicate.json()) == (202, {"stored": False})
    done = api.get("/api/v1/executions/ap-7/result", params={"timeout": 20}, headers=admin)
    assert done.json()["result"] == "order 7: approved"
    # A webhook redelivered after the execution ended is still answered as a duplicate.
    late = api.post(
        "/api/v1/executions/ap-7/events/decision",
        json={"verdict": "approved"},
        params={"key": "hook-1"},
        headers=events,
    )
    assert (late.status_code, late.json()) == (202, {"stored": False})
    other = api.post(
        "/api/v1/executions/ap-7/events/decision", json={}, params={"key": "new"}, headers=events
    )
    assert (other.status_code, error_code(other)) == (409, "execution_finished")
    inbox = api.get("/api/v1/executions/ap-7", headers=admin).json()["inbox"]
    assert [(e["name"], e["key"], e["payload"]) for e in inbox] == [
        ("decision", "hook-1", {"verdict": "approved"})
    ]


def test_a_failed_execution_reports_its_error_and_is_retried(api, keys, worker) -> None:
    admin = keys("admin")
    api.post("/api/v1/executions", json={"actor": "explode", "execution_id": "x-1"}, headers=admin)
    outcome = api.get("/api/v1/executions/x-1/result", params={"timeout": 20}, headers=admin)
    assert (outcome.json()["status"], outcome.json()["error"]["message"]) == ("failed", "boom")
    retried = api.post("/api/v1/executions/x-1/retry", headers=admin)
    assert retried.status_code == 200 and retried.json()["execution_id"] == "x-1"
    # It runs again, and fails again: the error was not a fluke.
    again = api.get("/api/v1/executions/x-1/result", params={"timeout": 20}, headers=admin)
    assert again.json()["status"] == "failed"
    assert api.get("/api/v1/executions/x-1", headers=admin).json()["runs"] == 2
    # A completed execution cannot be retried, and the answer says why.
    api.post(
        "/api/v1/executions",
        json={"actor": "greet", "args": ["c"], "execution_id": "ok"},
        headers=admin,
    )
    api.get("/api/v1/executions/ok/result", params={"timeout": 20}, headers=admin)
    refused = api.post("/api/v1/executions/ok/retry", headers=admin)
    assert (refused.status_code, error_code(refused)) == (409, "execution_finished")


def test_cancel(api, keys, worker) -> None:
    admin = keys("admin")
    api.post("/api/v1/executions", json={"actor": "nap", "execution_id": "n-1"}, headers=admin)
    api.get("/api/v1/executions/n-1/result", params={"timeout": 0}, headers=admin)
    cancelled = api.post("/api/v1/executions/n-1/cancel", headers=admin)
    assert cancelled.status_code == 200
    assert cancelled.json()["previous_status"] in ("pending", "running", "sleeping")
    assert api.get("/api/v1/executions/n-1", headers=admin).json()["status"] == "cancelled"


def test_pause_and_resume_an_execution_and_an_actor(api, keys, worker, db, schema) -> None:
    admin, read = keys("admin"), keys("read")
    api.post(
        "/api/v1/executions",
        json={"actor": "approval", "args": [3], "execution_id": "a-3"},
        headers=admin,
    )
    api.get("/api/v1/executions/a-3/result", params={"timeout": 0}, headers=admin)
    wait_until(lambda: zart.get_execution("a-3").status == "waiting", message="the wait")
    paused = api.post("/api/v1/executions/a-3/pause", headers=admin)
    assert (paused.status_code, paused.json()) == (200, {"paused": True, "resent_wakeups": 0})
    assert api.get("/api/v1/executions/a-3", headers=read).json()["paused_at"] is not None
    api.post("/api/v1/executions/a-3/events/decision", json={"verdict": "ok"}, headers=admin)
    wait_until(
        lambda: scalar(db, schema, "SELECT count(*) FROM {s}.messages") == 0,
        message="the woken delivery to be dropped",
    )
    assert zart.get_execution("a-3").status == "waiting"
    resumed = api.post("/api/v1/executions/a-3/resume", headers=admin)
    assert resumed.json() == {"paused": False, "resent_wakeups": 1}
    done = api.get("/api/v1/executions/a-3/result", params={"timeout": 15}, headers=read).json()
    assert done["result"] == "order 3: ok"

    assert api.post("/api/v1/actors/greet/pause", headers=admin).json()["paused"] is True
    listed = {a["name"]: a for a in api.get("/api/v1/actors", headers=read).json()}
    assert listed["greet"]["paused_at"] is not None and listed["nap"]["paused_at"] is None
    assert api.post("/api/v1/actors/greet/resume", headers=admin).json()["paused"] is False

    unknown = api.post("/api/v1/actors/nope/pause", headers=admin)
    assert (unknown.status_code, error_code(unknown)) == (404, "unknown_actor")
    assert "known: " in unknown.json()["error"]["message"]
    ended = api.post("/api/v1/executions/a-3/pause", headers=admin)
    assert (ended.status_code, error_code(ended)) == (409, "execution_finished")
    missing = api.post("/api/v1/executions/nope/pause", headers=admin)
    assert (missing.status_code, error_code(missing)) == (404, "unknown_execution")
    assert api.post("/api/v1/actors/greet/pause", headers=read).status_code == 403


def test_list_filters_and_pages_with_a_total(api, keys) -> None:
    admin = keys("admin")
    for i in range(5):
        api.post(
            "/api/v1/executions",
            json={"actor": "greet", "args": [str(i)], "execution_id": f"list-{i}"},
            headers=admin,
        )
    api.post("/api/v1/executions", json={"actor": "nap", "execution_id": "other"}, headers=admin)
    read = keys("read")
    first = api.get(
        "/api/v1/executions", params={"actor": "greet", "limit": 2}, headers=read
    ).json()
    assert first["total"] == 5 and len(first["items"]) == 2
    seen = [item["id"] for item in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = api.get(
            "/api/v1/executions",
            params={"actor": "greet", "limit": 2, "after": cursor},
            headers=read,
        ).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert sorted(seen) == [f"list-{i}" for i in range(5)]
    prefixed = api.get("/api/v1/executions", params={"id_prefix": "oth"}, headers=read).json()
    assert [item["id"] for item in prefixed["items"]] == ["other"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/executions"),
        ("get", "/api/v1/executions/any"),
        ("get", "/api/v1/executions/any/result"),
        ("post", "/api/v1/executions/any/events/e"),
        ("post", "/api/v1/executions/any/cancel"),
        ("post", "/api/v1/executions/any/retry"),
        ("post", "/api/v1/executions"),
        ("post", "/api/v1/executions/any/rerun"),
        ("post", "/api/v1/executions/any/pause"),
        ("post", "/api/v1/executions/any/resume"),
        ("get", "/api/v1/actors"),
        ("post", "/api/v1/actors/greet/pause"),
        ("post", "/api/v1/actors/greet/resume"),
        ("get", "/api/v1/queues"),
        ("get", "/api/v1/dead-letters"),
        ("post", "/api/v1/dead-letters/requeue"),
        ("post", "/api/v1/dead-letters/purge"),
        ("get", "/metrics"),
    ],
)
def test_every_route_needs_a_key(api, method: str, path: str) -> None:
    response = getattr(api, method)(path)
    assert response.status_code == 401
    assert error_code(response) == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    forged = getattr(api, method)(path, headers={"Authorization": "Bearer zk_nope_nope"})
    assert (forged.status_code, error_code(forged)) == (401, "invalid_key")


def test_a_key_without_the_scope_is_forbidden(api, keys) -> None:
    read = keys("read")
    response = api.post("/api/v1/executions/any/cancel", headers=read)
    assert (response.status_code, error_code(response)) == (403, "missing_scope")
    events = keys("events")
    assert api.get("/api/v1/executions", headers=events).status_code == 403
    # The events scope may send events, and nothing else.
    assert api.post("/api/v1/executions/none/events/e", json=1, headers=events).status_code == 404


def test_bad_input_gets_a_clear_error(api, keys) -> None:
    admin = keys("admin")
    bad_json = api.post(
        "/api/v1/executions",
        content=b"{not json",
        headers={**admin, "Content-Type": "application/json"},
    )
    assert (bad_json.status_code, error_code(bad_json)) == (400, "bad_json")
    wrong_type = api.post("/api/v1/executions", json={"actor": 5, "args": "x"}, headers=admin)
    assert (wrong_type.status_code, error_code(wrong_type)) == (422, "invalid_request")
    assert "args" in wrong_type.json()["error"]["message"]
    unknown = api.post("/api/v1/executions", json={"actor": "nobody"}, headers=admin)
    assert (unknown.status_code, error_code(unknown)) == (404, "unknown_actor")
    assert "greet" in unknown.json()["error"]["message"]
    oversize = api.post(
        "/api/v1/executions", json={"actor": "greet", "args": ["x" * 5000]}, headers=admin
    )
    assert (oversize.status_code, error_code(oversize)) == (413, "body_too_large")
    missing = api.get("/api/v1/executions/nope", headers=admin)
    assert (missing.status_code, error_code(missing)) == (404, "unknown_execution")
    bad_status = api.get("/api/v1/executions", params={"status": "asleep"}, headers=admin)
    assert bad_status.status_code == 422
    bad_cursor = api.get("/api/v1/executions", params={"after": "xyz"}, headers=admin)
    assert (bad_cursor.status_code, error_code(bad_cursor)) == (422, "invalid_request")
    too_long = api.get("/api/v1/executions/any/result", params={"timeout": 999}, headers=admin)
    assert too_long.status_code == 422
    assert api.get("/no/such/route").status_code == 404


def test_probes_metrics_and_openapi(api, keys) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ok")
    api.post("/api/v1/executions", json={"actor": "nap"}, headers=keys("admin"))
    metrics = api.get("/metrics", headers=keys("read")).text
    assert 'zart_open_executions{actor="nap",status="pending"} 1.0' in metrics
    # No worker runs here: its first message waits in the queue.
    assert 'zart_queue_messages{queue="default",state="queued"} 1.0' in metrics
    assert 'zart_dead_letters{queue="default"} 0.0' in metrics
    spec = api.get("/openapi.json").json()
    assert "/api/v1/executions/{execution_id}/events/{name}" in spec["paths"]


def test_readyz_fails_on_a_schema_that_misses_migrations(broker, unmigrated_schema, keys) -> None:
    import dramatiq

    from broker_pg import PostgresBroker

    other = PostgresBroker(broker.db.url, schema=unmigrated_schema)
    try:
        dramatiq.set_broker(other)
        with TestClient(create_app(other)) as api:
            ready = api.get("/readyz")
            well_formed = f"zk_{'0' * 12}_{'A' * 43}"
            listed = api.get(
                "/api/v1/executions", headers={"Authorization": f"Bearer {well_formed}"}
            )
        assert ready.status_code == 503
        assert "zart-dramatiq migrate" in ready.json()["status"]
        # Not a 401 for a key it could not check: the schema is missing, and it says so.
        assert (listed.status_code, error_code(listed)) == (503, "schema_missing")
    finally:
        dramatiq.set_broker(broker)
        other.close()


def test_auth_can_be_turned_off_explicitly(broker, actors) -> None:
    with TestClient(create_app(broker, auth=False)) as api:
        assert api.get("/api/v1/executions").status_code == 200


def test_queues_and_dead_letters(api, keys, broker, worker) -> None:
    import dramatiq

    @dramatiq.actor(queue_name="fragile", max_retries=0)
    def fragile() -> None:
        raise RuntimeError("always")

    fragile.send()
    broker.join("fragile", fail_fast=False)
    read, admin = keys("read"), keys("admin")
    overview = api.get("/api/v1/queues", headers=read).json()
    by_name = {q["queue_name"]: q for q in overview["queues"]}
    assert by_name["fragile"]["dead_letters"] == 1
    assert any(w["id"] == str(broker.worker_id) for w in overview["workers"])
    (letter,) = api.get("/api/v1/dead-letters", params={"queue": "fragile"}, headers=read).json()
    assert (letter["actor_name"], letter["queue_name"]) == ("fragile", "fragile")
    assert "always" in letter["error"]
    vague = api.post("/api/v1/dead-letters/requeue", json={}, headers=admin)
    assert (vague.status_code, error_code(vague)) == (422, "invalid_request")
    assert (
        api.post("/api/v1/dead-letters/requeue", json={"ids": [1]}, headers=read).status_code == 403
    )
    requeued = api.post("/api/v1/dead-letters/requeue", json={"ids": [letter["id"]]}, headers=admin)
    assert requeued.json() == {"count": 1}
    broker.join("fragile", fail_fast=False)  # it fails again, and is dead again
    purged = api.post("/api/v1/dead-letters/purge", json={"queue": "fragile"}, headers=admin)
    assert purged.json() == {"count": 1}
    assert api.get("/api/v1/dead-letters", headers=read).json() == []


RERUNS = Effects()


def test_rerun_from_a_step_keeps_the_steps_before_it(api, keys, broker, worker) -> None:
    @zart.durable(actor_name="three_steps")
    def three_steps() -> list[str]:
        return [zart.step(name, lambda n=name: RERUNS(n) or n) for name in ("a", "b", "c")]

    admin = keys("admin")
    api.post(
        "/api/v1/executions", json={"actor": "three_steps", "execution_id": "r-1"}, headers=admin
    )
    assert api.get("/api/v1/executions/r-1/result", params={"timeout": 20}, headers=admin).json()[
        "done"
    ]
    rerun = api.post("/api/v1/executions/r-1/rerun", json={"from_step": "b"}, headers=admin)
    assert rerun.status_code == 200 and rerun.json()["from_step"] == "step:b"
    again = api.get("/api/v1/executions/r-1/result", params={"timeout": 20}, headers=admin)
    assert again.json()["result"] == ["a", "b", "c"]
    assert [RERUNS[n] for n in ("a", "b", "c")] == [1, 2, 2]
    unknown = api.post("/api/v1/executions/r-1/rerun", json={"from_step": "zz"}, headers=admin)
    assert (unknown.status_code, error_code(unknown)) == (404, "unknown_step")


SECRET = "whsec_" + base64.b64encode(b"a signing secret of thirty-two b").decode()


def signed(body: bytes, msg_id: str, secret: str = SECRET) -> dict[str, str]:
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def test_a_signed_webhook_delivers_an_event_once(broker, actors, keys, worker) -> None:
    with TestClient(create_app(broker, webhook_secret=SECRET)) as api:
        admin = keys("admin")
        api.post(
            "/api/v1/executions",
            json={"actor": "approval", "args": [9], "execution_id": "wh-9"},
            headers=admin,
        )
        body = json.dumps({"verdict": "approved"}).encode()
        url = "/api/v1/webhooks/wh-9/events/decision"
        first = api.post(url, content=body, headers=signed(body, "msg_1"))
        redelivered = api.post(url, content=body, headers=signed(body, "msg_1"))
        assert (first.status_code, first.json()) == (202, {"stored": True})
        assert (redelivered.status_code, redelivered.json()) == (202, {"stored": False})
        done = api.get("/api/v1/executions/wh-9/result", params={"timeout": 20}, headers=admin)
        assert done.json()["result"] == "order 9: approved"

        forged_secret = "whsec_" + base64.b64encode(b"another secret, not the right 32").decode()
        forged = api.post(url, content=body, headers=signed(body, "msg_2", forged_secret))
        assert (forged.status_code, error_code(forged)) == (401, "bad_signature")
        tampered = api.post(url, content=b'{"verdict": "x"}', headers=signed(body, "msg_3"))
        assert tampered.status_code == 401
        unsigned = api.post(url, content=body, headers={"Content-Type": "application/json"})
        assert unsigned.status_code == 401


def test_webhooks_are_off_without_a_secret(api) -> None:
    response = api.post("/api/v1/webhooks/x/events/e", content=b"{}")
    assert (response.status_code, error_code(response)) == (404, "webhooks_disabled")


def test_zart_dramatiq_serve_runs_the_app(processes, schema, broker) -> None:
    import socket
    import sys

    import httpx

    from tests.support import wait_until

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes.start(
        [sys.executable, "-m", "zart_dramatiq.cli", "serve", "--port", str(port)],
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=30, message="zart-dramatiq serve to answer /readyz")
    _, token = ApiKeys(middleware_for(broker).store).create(["read"])
    listed = httpx.get(
        f"{base}/api/v1/executions", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert (listed.status_code, listed.json()["total"]) == (200, 0)
    assert httpx.get(f"{base}/api/v1/executions", timeout=10).status_code == 401


def test_workers_count_executions_steps_and_wake_ups(broker, worker) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    @zart.durable(actor_name="metered")
    def metered() -> int:
        value = zart.step("one", lambda: 1)
        zart.sleep("pause", 0.05)
        return value

    before = {
        "started": sample("zart_executions_started_total", actor="metered"),
        "completed": sample("zart_executions_ended_total", actor="metered", status="completed"),
        "attempts": sample("zart_step_attempts_total", actor="metered", outcome="completed"),
        "late": sample("zart_wakeup_lateness_seconds_count", actor="metered"),
        "durations": sample(
            "zart_execution_duration_seconds_count", actor="metered", status="completed"
        ),
    }
    assert zart.start(metered).result(timeout=20) == 1
    wait_until(
        lambda: (
            sample("zart_executions_ended_total", actor="metered", status="completed")
            > before["completed"]
        ),
        message="the end to be counted",
    )
    assert sample("zart_executions_started_total", actor="metered") == before["started"] + 1
    assert sample("zart_step_attempts_total", actor="metered", outcome="completed") == (
        before["attempts"] + 1
    )
    assert sample("zart_wakeup_lateness_seconds_count", actor="metered") == before["late"] + 1
    assert (
        sample("zart_execution_duration_seconds_count", actor="metered", status="completed")
        == before["durations"] + 1
    )


def test_counting_never_fails_a_run_even_when_metrics_could_not_be_created(
    monkeypatch,
) -> None:
    from zart_dramatiq import metrics

    monkeypatch.setattr(metrics, "_metrics", None)
    monkeypatch.setattr(metrics, "_unavailable", False)
    # As a creation cut short by a TimeLimit leaves them: registered, but not kept.
    with contextlib.suppress(ValueError):
        metrics.Metrics()
    assert metrics.prepare() is None
    metrics.observe("started", actor="any")  # a no-op, not an error


def test_schedules_over_http(api, keys, actors) -> None:
    admin, read = keys("admin"), keys("read")
    zart.schedules.create("greetings", actors["greet"], every=timedelta(hours=1), args=["world"])
    [listed] = api.get("/api/v1/schedules", headers=read).json()
    assert (listed["name"], listed["every_s"], listed["args"], listed["paused_at"]) == (
        "greetings",
        3600.0,
        ["world"],
        None,
    )
    unknown = api.get("/api/v1/schedules/nope", headers=read)
    assert (unknown.status_code, error_code(unknown)) == (404, "unknown_schedule")
    refused = api.post("/api/v1/schedules/greetings/pause", headers=read)
    assert (refused.status_code, error_code(refused)) == (403, "missing_scope")
    paused = api.post("/api/v1/schedules/greetings/pause", headers=admin)
    assert paused.status_code == 200 and paused.json()["paused_at"] is not None
    resumed = api.post("/api/v1/schedules/greetings/resume", headers=admin)
    assert resumed.status_code == 200 and resumed.json()["paused_at"] is None

    once = {**admin, "Idempotency-Key": "t-1"}
    first = api.post("/api/v1/schedules/greetings/trigger", headers=once)
    again = api.post("/api/v1/schedules/greetings/trigger", headers=once)
    assert (first.status_code, first.json()) == (
        202,
        {"execution_id": "schedule:greetings:manual:t-1"},
    )
    assert again.json() == first.json()

    window = {"start": "2025-01-01T00:00:00Z", "end": "2025-01-01T03:00:00+00:00"}
    done = api.post("/api/v1/schedules/greetings/backfill", json=window, headers=admin).json()
    assert (done["started"], done["existing"]) == (3, 0)
    assert done["execution_ids"][0] == "schedule:greetings:2025-01-01T00:00:00+00:00"
    repeated = api.post("/api/v1/schedules/greetings/backfill", json=window, headers=admin)
    assert (repeated.json()["started"], repeated.json()["existing"]) == (0, 3)
    naive = api.post(
        "/api/v1/schedules/greetings/backfill",
        json={"start": "2025-01-01T00:00:00", "end": "2025-01-01T03:00:00"},
        headers=admin,
    )
    assert (naive.status_code, error_code(naive)) == (422, "invalid_request")
    future = api.post(
        "/api/v1/schedules/greetings/backfill",
        json={"start": "2025-01-01T00:00:00Z", "end": "2999-01-01T00:00:00Z"},
        headers=admin,
    )
    assert (future.status_code, error_code(future)) == (422, "invalid_schedule")
    assert "is after now" in future.json()["error"]["message"]

    assert api.delete("/api/v1/schedules/greetings", headers=admin).status_code == 204
    gone = api.delete("/api/v1/schedules/greetings", headers=admin)
    assert (gone.status_code, error_code(gone)) == (404, "unknown_schedule")
