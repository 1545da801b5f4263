"""``create_app``: the API's routes, each behind the API-key scope it needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import dramatiq
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from broker_pg import DatabaseUnavailable, PostgresBroker
from broker_pg.migrations import pending_migrations

from .. import client, schedules
from ..actor import DurableActor
from ..api_keys import ApiKey, ApiKeys
from ..errors import ExecutionFailed, ResultTimeout
from ..lifecycle import STATUSES, TERMINAL
from ..middleware import DurableMiddleware, middleware_for
from . import errors, models
from .dashboard import install as install_dashboard
from .errors import ApiError

#: The longest a result request may wait, in seconds.
MAX_RESULT_WAIT = 60.0

_bearer = HTTPBearer(auto_error=False)


@dataclasses.dataclass
class _Context:
    broker: dramatiq.Broker
    middleware: DurableMiddleware
    #: None when the operator turned authentication off.
    keys: ApiKeys | None
    #: Verifies signed webhook deliveries; None when no signing secret is configured.
    webhooks: Webhook | None


def create_app(
    broker: dramatiq.Broker | None = None,
    *,
    auth: bool = True,
    max_body_bytes: int = 1 << 20,
    cors_origins: Sequence[str] = (),
    webhook_secret: str | None = None,
    dashboard: bool = True,
    dashboard_secret: str | bytes | None = None,
) -> FastAPI:
    """The HTTP API for the executions of ``broker`` (by default the global broker).

    Every route but the probes needs ``Authorization: Bearer <key>`` with the
    scope it names (``read``, ``events`` or ``admin``; ``admin`` may do all),
    unless ``auth=False``. Bodies past ``max_body_bytes`` are refused (413).
    No cross-origin access unless ``cors_origins`` lists the origins allowed.
    With ``webhook_secret`` (``whsec_...``), ``/api/v1/webhooks/...`` takes events
    signed as Standard Webhooks sign them, instead of an API key. The dashboard
    is served at ``/`` unless ``dashboard=False``; its sessions are signed with
    ``dashboard_secret`` (else ``ZART_DASHBOARD_SECRET``, else a secret of this
    process: set one when several processes serve the app).
    Mount it in an application of your own with ``app.mount("/zart", create_app())``.
    """
    broker = broker or dramatiq.get_broker()
    middleware = middleware_for(broker)
    app = FastAPI(
        title="zart-dramatiq",
        summary="Durable executions of Dramatiq actors: start, inspect and steer them.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.zart = _Context(
        broker,
        middleware,
        ApiKeys(middleware.store) if auth else None,
        Webhook(webhook_secret) if webhook_secret else None,
    )
    errors.install(app)
    app.add_middleware(errors.BodyLimit, max_bytes=max_body_bytes)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    app.include_router(_probes)
    app.include_router(_api)
    app.include_router(_queues)
    app.include_router(_schedules)
    if dashboard:
        install_dashboard(app, secret=dashboard_secret)
    return app


def _context(request: Request) -> _Context:
    return request.app.state.zart  # type: ignore[no-any-return]


def _scope(scope: str) -> Callable[..., ApiKey | None]:
    """A dependency that lets the request through with a key holding ``scope`` (or admin)."""

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey | None:
        keys = _context(request).keys
        if keys is None:
            return None
        if credentials is None:
            raise ApiError(
                401,
                "unauthenticated",
                "send an API key as `Authorization: Bearer <key>`; "
                "create one with `zart-dramatiq keys create --scope ...`",
            )
        key = keys.verify(credentials.credentials)
        if key is None:
            raise ApiError(401, "invalid_key", "this API key is unknown, malformed or revoked")
        if scope not in key.scopes and "admin" not in key.scopes:
            raise ApiError(
                403,
                "missing_scope",
                f"key {key.id!r} lacks the {scope!r} scope this route needs "
                f"(it has: {', '.join(sorted(key.scopes))})",
            )
        return key

    return check


Read = Depends(_scope("read"))
Events = Depends(_scope("events"))
Admin = Depends(_scope("admin"))


# -- Probes ----------------------------------------------------------------------

_probes = APIRouter(tags=["probes"])


@_probes.get("/healthz", response_model=models.Health)
def healthz() -> models.Health:
    """The process answers."""
    return models.Health(status="ok")


@_probes.get("/readyz", response_model=models.Readiness)
def readyz(request: Request, response: Response) -> models.Readiness:
    """The database answers and its schema has every migration of this version."""
    db = _context(request).middleware.store.db
    try:
        pending = pending_migrations(db)
    except DatabaseUnavailable as error:
        response.status_code = 503
        return models.Readiness(status="unavailable", database=str(error), pending_migrations=[])
    if pending:
        response.status_code = 503
        return models.Readiness(
            status="migrations pending: run `zart-dramatiq migrate`",
            database="ok",
            pending_migrations=pending,
        )
    return models.Readiness(status="ok", database="ok", pending_migrations=[])


@_probes.get("/metrics", dependencies=[Read], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics, read from the database at each scrape."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_FromDatabase(_context(request)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _FromDatabase(Collector):
    """Gauges read at each scrape: open executions, and broker_pg's queues."""

    def __init__(self, context: _Context) -> None:
        self.context = context

    def collect(self) -> Any:
        open_executions = GaugeMetricFamily(
            "zart_open_executions",
            "Executions not ended, by status and actor",
            labels=["status", "actor"],
        )
        for status, actor, count in self.context.middleware.store.fetchall("open_executions"):
            open_executions.add_metric([status, actor], count)
        yield open_executions
        broker = self.context.broker
        if not isinstance(broker, PostgresBroker):
            return
        depth = GaugeMetricFamily(
            "zart_queue_messages", "Messages by queue and state", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "zart_queue_oldest_due_seconds",
            "How long the oldest message due now has waited",
            labels=["queue"],
        )
        dead = GaugeMetricFamily("zart_dead_letters", "Dead letters by queue", labels=["queue"])
        for q in broker.queue_stats():
            for state in ("queued", "delayed", "parked", "claimed"):
                depth.add_metric([q.queue_name, state], getattr(q, state))
            oldest.add_metric([q.queue_name], q.oldest_due_s or 0.0)
            dead.add_metric([q.queue_name], q.dead_letters)
        yield from (depth, oldest, dead)


# -- Executions --------------------------------------------------------------------

_api = APIRouter(prefix="/api/v1", tags=["executions"])


@_api.post("/executions", response_model=models.Started, status_code=202, dependencies=[Admin])
def start_execution(
    body: models.StartExecution,
    request: Request,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> models.Started:
    """Start a durable actor, idempotent by execution id (or the Idempotency-Key header).

    The same id with the same input answers with the existing execution; with
    another input, 409.
    """
    context = _context(request)
    actor = client.durable_actor(body.actor, broker=context.broker)
    handle = client.start_with_options(
        actor,
        args=tuple(body.args),
        kwargs=body.kwargs,
        execution_id=body.execution_id or idempotency_key,
        priority=body.priority,
    )
    return models.Started(execution_id=handle.execution_id, status=handle.status())


@_api.get("/executions", response_model=models.ExecutionPage, dependencies=[Read])
def list_executions(
    request: Request,
    status: Annotated[str | None, Query(description=f"One of {', '.join(STATUSES)}")] = None,
    actor: str | None = None,
    id_prefix: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    finished_after: datetime | None = None,
    finished_before: datetime | None = None,
    error: Annotated[str | None, Query(description="Text in the error, any case")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[str | None, Query(description="The previous page's next_cursor")] = None,
) -> models.ExecutionPage:
    """Executions matching every filter given, newest first, a page at a time."""
    if status is not None and status not in STATUSES:
        raise ApiError(
            422, "invalid_request", f"status {status!r} is not one of {', '.join(STATUSES)}"
        )
    try:
        page = client.search_executions(
            status=status,
            actor=actor,
            id_prefix=id_prefix,
            created_after=created_after,
            created_before=created_before,
            finished_after=finished_after,
            finished_before=finished_before,
            error=error,
            limit=limit,
            after=after,
            broker=_context(request).broker,
        )
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e)) from e
    return models.ExecutionPage(
        items=[models.Execution.model_validate(i) for i in page.items],
        total=page.total,
        next_cursor=page.next_cursor,
    )


@_api.get("/executions/{execution_id}", response_model=models.ExecutionDetail, dependencies=[Read])
def get_execution(execution_id: str, request: Request) -> models.ExecutionDetail:
    """One execution with its steps, groups, children and inbox."""
    info = client.get_execution(execution_id, broker=_context(request).broker)
    return models.ExecutionDetail.model_validate(info)


@_api.get("/executions/{execution_id}/result", response_model=models.Outcome, dependencies=[Read])
def wait_for_result(
    execution_id: str,
    request: Request,
    timeout: Annotated[float, Query(ge=0, le=MAX_RESULT_WAIT)] = 30.0,
) -> models.Outcome:
    """Wait up to ``timeout`` seconds for the execution to end; say where it stands."""
    handle = client.get_handle(execution_id, broker=_context(request).broker)
    try:
        result = handle.result(timeout=timeout)
    except ExecutionFailed as failed:
        return models.Outcome(
            execution_id=execution_id, status=failed.status, done=True, error=failed.error
        )
    except ResultTimeout:
        status = handle.status()
        return models.Outcome(execution_id=execution_id, status=status, done=status in TERMINAL)
    row = _context(request).middleware.store.fetchone("execution_status", id=execution_id)
    raw = row[1] if row is not None else result
    return models.Outcome(execution_id=execution_id, status="completed", done=True, result=raw)


@_api.post(
    "/executions/{execution_id}/events/{name}",
    response_model=models.EventAccepted,
    status_code=202,
    dependencies=[Events],
)
def send_event(
    execution_id: str,
    name: str,
    request: Request,
    payload: Annotated[Any, Body()] = None,
    key: str | None = None,
) -> models.EventAccepted:
    """Deliver event ``name`` (the JSON body is its payload); once per ``key``."""
    stored = client.send_event(execution_id, name, payload, key, broker=_context(request).broker)
    return models.EventAccepted(stored=stored)


@_api.post(
    "/executions/{execution_id}/cancel", response_model=models.Cancelled, dependencies=[Admin]
)
def cancel(execution_id: str, request: Request) -> models.Cancelled:
    """Cancel the execution and its attached children; a finished one stays as it was."""
    previous = client.cancel(execution_id, broker=_context(request).broker)
    return models.Cancelled(previous_status=previous)


@_api.post("/executions/{execution_id}/retry", response_model=models.Retried, dependencies=[Admin])
def retry(execution_id: str, request: Request) -> models.Retried:
    """Run a failed, cancelled or timed-out execution again from where it stopped."""
    broker = _context(request).broker
    client.retry(execution_id, broker=broker)
    return models.Retried(
        execution_id=execution_id, status=client.get_handle(execution_id, broker=broker).status()
    )


@_api.post(
    "/executions/{execution_id}/rerun", response_model=models.Rerunning, dependencies=[Admin]
)
def rerun(execution_id: str, body: models.Rerun, request: Request) -> models.Rerunning:
    """Run an ended execution again from a step: the steps before it keep their outcomes."""
    broker = _context(request).broker
    try:
        key = client.rerun(execution_id, body.from_step, broker=broker)
    except ValueError as e:
        raise ApiError(404, "unknown_step", str(e)) from e
    status = client.get_handle(execution_id, broker=broker).status()
    return models.Rerunning(execution_id=execution_id, from_step=key, status=status)


@_api.post("/executions/{execution_id}/pause", response_model=models.Hold, dependencies=[Admin])
def pause(execution_id: str, request: Request) -> models.Hold:
    """Hold the execution: no run of it starts until it is resumed (409 if it has ended)."""
    client.pause(execution_id, broker=_context(request).broker)
    return models.Hold(paused=True)


@_api.post("/executions/{execution_id}/resume", response_model=models.Hold, dependencies=[Admin])
def resume(execution_id: str, request: Request) -> models.Hold:
    """Let a paused execution run again; its wake-up is sent if it came due meanwhile."""
    resent = client.resume(execution_id, broker=_context(request).broker)
    return models.Hold(paused=False, resent_wakeups=int(resent))


@_api.get("/actors", response_model=list[models.Actor], dependencies=[Read])
def actors(request: Request) -> list[models.Actor]:
    """The durable actors of this app, and whether each is paused."""
    broker = _context(request).broker
    paused = {p.actor_name: p.paused_at for p in client.paused_actors(broker=broker)}
    return [
        models.Actor(name=name, queue_name=actor.queue_name, paused_at=paused.get(name))
        for name, actor in sorted(broker.actors.items())
        if isinstance(actor, DurableActor)
    ]


@_api.post("/actors/{actor_name}/pause", response_model=models.Hold, dependencies=[Admin])
def pause_actor(actor_name: str, request: Request) -> models.Hold:
    """Hold every execution of the actor, new ones too, until it is resumed."""
    client.pause_actor(actor_name, broker=_context(request).broker)
    return models.Hold(paused=True)


@_api.post("/actors/{actor_name}/resume", response_model=models.Hold, dependencies=[Admin])
def resume_actor(actor_name: str, request: Request) -> models.Hold:
    """Let the actor's executions run again; those that came due meanwhile are sent."""
    resent = client.resume_actor(actor_name, broker=_context(request).broker)
    return models.Hold(paused=False, resent_wakeups=resent)


@_api.post(
    "/webhooks/{execution_id}/events/{name}",
    response_model=models.EventAccepted,
    status_code=202,
    tags=["webhooks"],
)
async def webhook_event(execution_id: str, name: str, request: Request) -> models.EventAccepted:
    """Deliver event ``name`` signed per Standard Webhooks (``webhook-id``, ``-timestamp``,
    ``-signature``): no API key, the signature is the proof. The JSON body is the payload,
    and ``webhook-id`` its key, so a redelivery is stored once."""
    context = _context(request)
    if context.webhooks is None:
        raise ApiError(
            404, "webhooks_disabled", "no webhook signing secret is configured on this app"
        )
    body = await request.body()
    try:
        payload = context.webhooks.verify(body, dict(request.headers))
    except WebhookVerificationError as e:
        raise ApiError(401, "bad_signature", f"the webhook signature does not verify: {e}") from e
    except ValueError as e:
        raise ApiError(400, "bad_json", "the webhook body is not valid JSON") from e
    stored = await run_in_threadpool(
        client.send_event,
        execution_id,
        name,
        payload,
        request.headers["webhook-id"],
        broker=context.broker,
    )
    return models.EventAccepted(stored=stored)


# -- Queues and dead letters (broker_pg) ------------------------------------------------

_queues = APIRouter(prefix="/api/v1", tags=["queues"])


def _postgres_broker(request: Request) -> PostgresBroker:
    broker = _context(request).broker
    if not isinstance(broker, PostgresBroker):
        raise ApiError(
            404,
            "not_available",
            f"queues and dead letters are kept by broker_pg; this app's broker is "
            f"{type(broker).__name__}: use its own tools",
        )
    return broker


@_queues.get("/queues", response_model=models.Queues, dependencies=[Read])
def queues(request: Request) -> models.Queues:
    """Each queue's depth by state and oldest due message, and the live workers."""
    broker = _postgres_broker(request)
    return models.Queues(
        queues=[models.Queue.model_validate(q) for q in broker.queue_stats()],
        workers=[models.Worker.model_validate(w) for w in broker.live_workers()],
    )


@_queues.get("/dead-letters", response_model=list[models.DeadLetter], dependencies=[Read])
def dead_letters(
    request: Request,
    queue: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[models.DeadLetter]:
    """Dead letters, oldest first, optionally of one queue."""
    letters = _postgres_broker(request).list_dead_letters(queue, limit=limit)
    return [models.DeadLetter.model_validate(letter) for letter in letters]


@_queues.post("/dead-letters/requeue", response_model=models.Count, dependencies=[Admin])
def requeue_dead_letters(body: models.SelectDeadLetters, request: Request) -> models.Count:
    """Put dead letters back on their queues: by ids, by queue, or ``all``."""
    if not (body.ids or body.queue or body.all) or (body.ids and body.all):
        raise ApiError(
            422,
            "invalid_request",
            "say which dead letters to requeue: ids, queue, or all=true (not ids and all)",
        )
    count = _postgres_broker(request).requeue_dead_letters(body.ids or None, queue_name=body.queue)
    return models.Count(count=count)


@_queues.post("/dead-letters/purge", response_model=models.Count, dependencies=[Admin])
def purge_dead_letters(body: models.SelectDeadLetters, request: Request) -> models.Count:
    """Delete dead letters: of a queue, older than some seconds, or ``all``."""
    if body.ids or not (body.queue or body.older_than_s is not None or body.all):
        raise ApiError(
            422,
            "invalid_request",
            "say which dead letters to purge: queue, older_than_s, or all=true (not ids)",
        )
    older_than = None if body.older_than_s is None else timedelta(seconds=body.older_than_s)
    count = _postgres_broker(request).purge_dead_letters(
        queue_name=body.queue, older_than=older_than
    )
    return models.Count(count=count)


# -- Schedules ----------------------------------------------------------------------------

_schedules = APIRouter(prefix="/api/v1", tags=["schedules"])


def _schedule_out(schedule: schedules.Schedule) -> models.Schedule:
    shown = dataclasses.asdict(schedule)
    every, window = shown.pop("every"), shown.pop("catchup_window")
    return models.Schedule(
        **shown,
        every_s=None if every is None else every.total_seconds(),
        catchup_window_s=window.total_seconds(),
    )


@_schedules.get("/schedules", response_model=list[models.Schedule], dependencies=[Read])
def list_schedules(request: Request) -> list[models.Schedule]:
    """Every schedule, by name, with its next tick and the ticks started and missed."""
    return [_schedule_out(s) for s in schedules.list(broker=_context(request).broker)]


@_schedules.get("/schedules/{name}", response_model=models.Schedule, dependencies=[Read])
def get_schedule(name: str, request: Request) -> models.Schedule:
    """One schedule (404 ``unknown_schedule``)."""
    return _schedule_out(schedules.get(name, broker=_context(request).broker))


@_schedules.post("/schedules/{name}/pause", response_model=models.Schedule, dependencies=[Admin])
def pause_schedule(name: str, request: Request) -> models.Schedule:
    """Start no tick of the schedule until it is resumed; started executions go on."""
    broker = _context(request).broker
    schedules.pause(name, broker=broker)
    return _schedule_out(schedules.get(name, broker=broker))


@_schedules.post("/schedules/{name}/resume", response_model=models.Schedule, dependencies=[Admin])
def resume_schedule(name: str, request: Request) -> models.Schedule:
    """Start the schedule's ticks again from its next one (the pause's are not caught up)."""
    broker = _context(request).broker
    schedules.resume(name, broker=broker)
    return _schedule_out(schedules.get(name, broker=broker))


@_schedules.post(
    "/schedules/{name}/trigger",
    response_model=models.Trigger,
    status_code=202,
    dependencies=[Admin],
)
def trigger_schedule(
    name: str, request: Request, idempotency_key: Annotated[str | None, Header()] = None
) -> models.Trigger:
    """Start the schedule's actor now, once more; idempotent by the Idempotency-Key header."""
    broker = _context(request).broker
    return models.Trigger(execution_id=schedules.trigger(name, key=idempotency_key, broker=broker))


@_schedules.post(
    "/schedules/{name}/backfill", response_model=models.Backfilled, dependencies=[Admin]
)
def backfill_schedule(name: str, body: models.BackfillRange, request: Request) -> models.Backfilled:
    """Start every tick in [start, end), each with its own id: repeating it starts nothing."""
    done = schedules.backfill(name, body.start, body.end, broker=_context(request).broker)
    return models.Backfilled(
        started=done.started, existing=done.existing, execution_ids=done.execution_ids
    )


@_schedules.delete("/schedules/{name}", status_code=204, dependencies=[Admin])
def delete_schedule(name: str, request: Request) -> Response:
    """Delete the schedule; its executions stay."""
    schedules.delete(name, broker=_context(request).broker)
    return Response(status_code=204)
