"""The dashboard's routes: pages to read, forms to act, sign-in and sign-out."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from broker_pg import PostgresBroker

from ... import client
from ...actor import DurableActor
from ...errors import UnknownExecution, ZartError
from ...lifecycle import ACTIVE, STATUSES, TERMINAL
from . import present
from .reads import Flag, Reads, Thresholds, flags
from .session import ANYONE, COOKIE, Session, Sessions, Viewer

router = APIRouter(include_in_schema=False)

#: Headers of every dashboard response: no framing, no inline script, nothing cached.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

#: Page sizes offered on the executions list.
PAGE_SIZES = (25, 50, 100, 200)
#: The auto-refresh periods offered, in seconds.
REFRESH_PERIODS = (5, 30)
#: Statuses an execution can be retried from, and those that still take events.
RETRYABLE = frozenset({"failed", "cancelled", "timed_out"})

#: Dead letters listed on their page, oldest first; past this many they are only counted.
LISTED_DEAD_LETTERS = 100

#: Filters of the executions list that are times, as the API names them.
TIME_FILTERS = ("created_after", "created_before", "finished_after", "finished_before")


@dataclass(frozen=True)
class Dashboard:
    """What the dashboard's routes share, kept in ``app.state.dashboard``."""

    templates: Jinja2Templates
    sessions: Sessions
    reads: Reads
    thresholds: Thresholds


class Respond(Exception):
    """Answer the request with ``response`` at once (a redirect to sign in, a refusal)."""

    def __init__(self, response: Response) -> None:
        super().__init__("dashboard response")
        self.response = response


@dataclass
class Page:
    """One request to the dashboard: its session, who asks, and how to answer."""

    request: Request
    dashboard: Dashboard
    #: The app's context (create_app): broker, middleware, keys (None when auth is off).
    zart: Any
    session: Session
    #: None until someone has signed in (never None when auth is off).
    viewer: Viewer | None

    @property
    def reads(self) -> Reads:
        return self.dashboard.reads

    @property
    def broker(self) -> Any:
        return self.zart.broker

    @property
    def auth(self) -> bool:
        return self.zart.keys is not None

    def path(self, name: str, **params: str) -> str:
        """The path of route ``name``, under the app's mount point."""
        return self.request.url_for(name, **params).path

    def execution_path(self, execution_id: str, action: str | None = None) -> str:
        """The page of an execution (or one of its forms), its id escaped whatever it holds."""
        name = "dashboard_execution" if action is None else f"dashboard_{action}"
        return self.path(name, execution_id=quote(execution_id, safe=""))

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("nav", "")
        context.setdefault("refresh", None)
        context.update(
            page=self,
            viewer=self.viewer,
            csrf=self.session.csrf,
            notice=self.session.take_notice(),
            auth=self.auth,
        )
        response = self.dashboard.templates.TemplateResponse(
            self.request, template, context, status_code=status, headers=HEADERS
        )
        self.dashboard.sessions.save(self.request, response, self.session)
        return response

    def redirect(self, url: str) -> Response:
        response = RedirectResponse(url, status_code=303, headers=HEADERS)
        self.dashboard.sessions.save(self.request, response, self.session)
        return response

    def refuse(self, status: int, title: str, message: str) -> Respond:
        return Respond(self.render("message.html", status, title=title, message=message))


def _visitor(request: Request) -> Page:
    """Anyone: the session, and the key it names if that key is still good."""
    dashboard: Dashboard = request.app.state.dashboard
    zart = request.app.state.zart
    if (
        request.method == "GET"
        and COOKIE not in request.cookies
        and request.headers.get("sec-fetch-site") == "cross-site"
    ):
        # A link from another site: the browser withholds a SameSite=Strict cookie
        # from this navigation, but sends it when the page reloads itself. Answering
        # "sign in" now would also replace the session the person has.
        raise Respond(dashboard.templates.TemplateResponse(request, "bounce.html", headers=HEADERS))
    session = dashboard.sessions.load(request)
    page = Page(request, dashboard, zart, session, None)
    if zart.keys is None:
        page.viewer = ANYONE
    elif session.key_id is not None:
        key = zart.keys.get(session.key_id)
        if key is None or key.revoked:
            session.sign_out()
            session.tell("error", "The API key of your session was revoked: sign in again.")
        elif session.expired:
            session.sign_out()
            session.tell("error", "Your session expired: sign in again.")
        else:
            page.viewer = Viewer.of(key)
    return page


Visitor = Annotated[Page, Depends(_visitor)]


def _reader(page: Visitor) -> Page:
    """Someone allowed to look: signed in with a key that has the read scope."""
    if page.viewer is None:
        request = page.request
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = here if request.method == "GET" else page.path("dashboard_overview")
        login = page.path("dashboard_login") + "?" + urlencode({"next": target})
        raise Respond(page.redirect(login))
    if not page.viewer.may("read"):
        raise page.refuse(403, "Not allowed", _lacks(page.viewer, "read", "to view the dashboard"))
    return page


Reader = Annotated[Page, Depends(_reader)]


def _acting(scope: str, what: str) -> Callable[..., Page]:
    """A form post: its CSRF token must be the session's, and the key must hold ``scope``."""

    def check(page: Reader, csrf: Annotated[str, Form()] = "") -> Page:
        if not page.session.valid_csrf(csrf):
            raise page.refuse(403, "Form refused", _STALE_FORM)
        assert page.viewer is not None
        if not page.viewer.may(scope):
            raise page.refuse(403, "Not allowed", _lacks(page.viewer, scope, what))
        return page

    return check


_STALE_FORM = (
    "This form did not come from your current dashboard session (it may be from before "
    "you signed in again, or from another site). Reload the page and try again."
)


def _lacks(viewer: Viewer, scope: str, what: str) -> str:
    return (
        f"Key {viewer.key_id} lacks the {scope!r} scope it needs {what} "
        f"(it has: {', '.join(sorted(viewer.scopes))}). Sign in with a key that has it: "
        f"`zart-dramatiq keys create --scope {scope}`."
    )


Admin = Annotated[Page, Depends(_acting("admin", "to cancel, retry or rerun executions"))]
Events = Annotated[Page, Depends(_acting("events", "to send events"))]
QueueAdmin = Annotated[Page, Depends(_acting("admin", "to requeue or purge dead letters"))]


def _refresh(value: str | None) -> int | None:
    """The auto-refresh period asked for, if it is one of those offered."""
    return int(value) if value and value.isdigit() and int(value) in REFRESH_PERIODS else None


# -- Pages --------------------------------------------------------------------------


@router.get("/", name="dashboard_overview")
def overview(page: Reader, refresh: str | None = None) -> Response:
    data = page.reads.overview()
    return page.render(
        "overview.html",
        nav="overview",
        overview=data,
        now=data.now,
        statuses=STATUSES,
        active=[s for s in STATUSES if s in ACTIVE],
        terminal=[s for s in STATUSES if s in TERMINAL],
        chart=_chart(data.buckets),
        overdue_before=data.now - page.dashboard.thresholds.overdue_after,
        refresh=_refresh(refresh),
        list_url=lambda **filters: _list_url(page, filters),
    )


@router.get("/executions", name="dashboard_executions")
def executions(
    page: Reader,
    status: str = "",
    actor: str = "",
    id_prefix: str = "",
    error: str = "",
    created_after: str = "",
    created_before: str = "",
    finished_after: str = "",
    finished_before: str = "",
    limit: str = "",
    after: str = "",
    refresh: str | None = None,
) -> Response:
    filters = {
        "status": status.strip(),
        "actor": actor.strip(),
        "id_prefix": id_prefix.strip(),
        "error": error.strip(),
        **{
            name: value.strip()
            for name, value in zip(
                TIME_FILTERS,
                [created_after, created_before, finished_after, finished_before],
                strict=True,
            )
        },
    }
    problems: list[str] = []
    if filters["status"] and filters["status"] not in STATUSES:
        problems.append(f"status {filters['status']!r} is not one of {', '.join(STATUSES)}")
    times: dict[str, datetime | None] = {}
    for name in TIME_FILTERS:
        times[name] = _parse_time(filters[name], name.replace("_", " "), problems)
    size = int(limit) if limit.isdigit() and int(limit) in PAGE_SIZES else 50
    shown = {k: v for k, v in filters.items() if v}
    if size != 50:
        shown["limit"] = str(size)
    if any(not v for _, v in page.request.query_params.multi_items()) or limit == "50":
        # The filter form sends every field: the same page, at an address without the empty ones.
        here = {**shown, "after": after, "refresh": _refresh(refresh)}
        return page.redirect(_list_url(page, here))
    now = page.reads.now()
    result = None
    if not problems:
        try:
            result = client.search_executions(
                status=filters["status"] or None,
                actor=filters["actor"] or None,
                id_prefix=filters["id_prefix"] or None,
                error=filters["error"] or None,
                limit=size,
                after=after or None,
                broker=page.broker,
                **times,
            )
        except ValueError as e:
            problems.append(str(e))
    rows = (
        []
        if result is None
        else [(info, flags(info, now, page.dashboard.thresholds)) for info in result.items]
    )
    next_url = None
    if result is not None and result.next_cursor:
        next_url = _list_url(page, {**shown, "after": result.next_cursor})
    return page.render(
        "executions.html",
        200 if not problems else 422,
        nav="executions",
        filters=filters,
        problems=problems,
        rows=rows,
        total=None if result is None else result.total,
        paged=bool(after),
        first_url=_list_url(page, shown),
        next_url=next_url,
        size=size,
        sizes=PAGE_SIZES,
        statuses=STATUSES,
        actors=_actor_names(page),
        now=now,
        refresh=_refresh(refresh),
        refresh_url=_list_url(page, {**shown, **({"after": after} if after else {})}),
    )


@router.get("/executions/{execution_id:path}", name="dashboard_execution")
def execution(execution_id: str, page: Reader, refresh: str | None = None) -> Response:
    return _execution_page(page, execution_id, refresh=_refresh(refresh))


def _execution_page(
    page: Page,
    execution_id: str,
    *,
    status: int = 200,
    refresh: int | None = None,
    event_form: dict[str, str] | None = None,
) -> Response:
    try:
        info = client.get_execution(execution_id, broker=page.broker)
    except UnknownExecution:
        return page.render(
            "message.html",
            404,
            title="No such execution",
            message=f"No execution has id {execution_id!r}. It may never have existed, or "
            "it ended long enough ago to have been purged.",
        )
    now = page.reads.now()
    found: list[Flag] = flags(info, now, page.dashboard.thresholds)
    if info.status == "running":
        holder = page.reads.run_holder(info.id)
        if holder is not None and not holder[1]:
            found.insert(
                0,
                Flag(
                    "stuck",
                    "no live worker holds its run: the worker was lost, and the message "
                    "runs again once its lease times out",
                ),
            )
    shown_steps, hidden_steps = present.steps(info.steps)
    awaited = present.awaited_event(info)
    form = event_form or {"name": awaited or "", "payload": "{}", "key": ""}
    return page.render(
        "execution.html",
        status,
        nav="executions",
        info=info,
        now=now,
        flags=found,
        waiting=present.waiting(info),
        timeline=present.timeline(info, now),
        steps=shown_steps,
        hidden_steps=hidden_steps,
        step_duration=present.step_duration,
        branches=present.branches,
        event_form=form,
        can_cancel=info.status in ACTIVE,
        can_pause=info.status in ACTIVE and info.paused_at is None,
        actor_paused=info.actor_name
        in {p.actor_name for p in client.paused_actors(broker=page.broker)},
        can_retry=info.status in RETRYABLE,
        can_rerun=info.status in TERMINAL,
        takes_events=info.status in ACTIVE or info.status == "failed",
        refresh=refresh,
        list_url=lambda **filters: _list_url(page, filters),
    )


# -- Actions ------------------------------------------------------------------------


@router.post("/executions/{execution_id:path}/cancel", name="dashboard_cancel")
def cancel(execution_id: str, page: Admin) -> Response:
    try:
        previous = client.cancel(execution_id, broker=page.broker)
    except ZartError as e:
        page.session.tell("error", str(e))
    else:
        if previous == "cancelled":
            page.session.tell("ok", "It was already cancelled.")
        elif previous in TERMINAL:
            page.session.tell("error", f"Not cancelled: it had already ended {previous}.")
        else:
            page.session.tell("ok", f"Cancelled (it was {previous}).")
    return page.redirect(page.execution_path(execution_id))


@router.post("/executions/{execution_id:path}/retry", name="dashboard_retry")
def retry(execution_id: str, page: Admin) -> Response:
    try:
        client.retry(execution_id, broker=page.broker)
    except ZartError as e:
        page.session.tell("error", str(e))
    else:
        page.session.tell("ok", "Retrying: it resumes from the step that stopped it.")
    return page.redirect(page.execution_path(execution_id))


@router.post("/executions/{execution_id:path}/pause", name="dashboard_pause")
def pause(execution_id: str, page: Admin) -> Response:
    try:
        client.pause(execution_id, broker=page.broker)
    except ZartError as e:
        page.session.tell("error", str(e))
    else:
        page.session.tell("ok", "Paused: no run of it starts until it is resumed.")
    return page.redirect(page.execution_path(execution_id))


@router.post("/executions/{execution_id:path}/resume", name="dashboard_resume")
def resume(execution_id: str, page: Admin) -> Response:
    try:
        due = client.resume(execution_id, broker=page.broker)
    except ZartError as e:
        page.session.tell("error", str(e))
    else:
        page.session.tell("ok", "Resumed: it runs now." if due else "Resumed.")
    return page.redirect(page.execution_path(execution_id))


@router.post("/actors/{actor_name}/pause", name="dashboard_pause_actor")
def pause_actor(actor_name: str, page: Admin) -> Response:
    try:
        client.pause_actor(actor_name, broker=page.broker)
    except ZartError as e:
        page.session.tell("error", str(e))
    else:
        page.session.tell("ok", f"Paused {actor_name}: none of its executions runs until resumed.")
    return page.redirect(page.path("dashboard_queues"))


@router.post("/actors/{actor_name}/resume", name="dashboard_resume_actor")
def resume_actor(actor_name: str, page: Admin) -> Response:
    resent = client.resume_actor(actor_name, broker=page.broker)
    page.session.tell("ok", f"Resumed {actor_name}; {resent} due execution(s) sent to run.")
    return page.redirect(page.path("dashboard_queues"))


@router.post("/executions/{execution_id:path}/rerun", name="dashboard_rerun")
def rerun(execution_id: str, page: Admin, from_step: Annotated[str, Form()] = "") -> Response:
    if not from_step:
        page.session.tell("error", "Not rerun: no step was named to rerun from.")
        return page.redirect(page.execution_path(execution_id))
    try:
        key = client.rerun(execution_id, from_step, broker=page.broker)
    except (ZartError, ValueError) as e:
        page.session.tell("error", str(e))
    else:
        page.session.tell(
            "ok",
            f"Rerunning from step {key!r}: it and the steps after it run again; "
            "the steps before it keep their results.",
        )
    return page.redirect(page.execution_path(execution_id))


@router.post("/executions/{execution_id:path}/events", name="dashboard_send_event")
def send_event(
    execution_id: str,
    page: Events,
    name: Annotated[str, Form()] = "",
    payload: Annotated[str, Form()] = "",
    key: Annotated[str, Form()] = "",
) -> Response:
    form = {"name": name, "payload": payload, "key": key}
    problem = None
    data: Any = None
    if not name.strip():
        problem = "An event needs a name."
    elif payload.strip():
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as e:
            problem = f"The payload is not valid JSON: {e}. Fix it and send again."
    if problem is not None:
        page.session.tell("error", problem)
        return _execution_page(page, execution_id, status=422, event_form=form)
    try:
        stored = client.send_event(
            execution_id, name.strip(), data, key.strip() or None, broker=page.broker
        )
    except ZartError as e:
        page.session.tell("error", str(e))
    else:
        if stored:
            page.session.tell("ok", f"Sent event {name.strip()!r}.")
        else:
            page.session.tell(
                "ok", f"An event with key {key.strip()!r} was delivered before: not sent again."
            )
    return page.redirect(page.execution_path(execution_id))


# -- Queues and dead letters (broker_pg) --------------------------------------------------


def _postgres_broker(page: Page) -> PostgresBroker | None:
    """The app's broker if it is broker_pg, which keeps queues and dead letters in tables."""
    return page.broker if isinstance(page.broker, PostgresBroker) else None


def _not_broker_pg(page: Page) -> str:
    return (
        f"Queues and dead letters are kept by broker_pg; this app's broker is "
        f"{type(page.broker).__name__}: use its own tools to see them."
    )


@router.get("/queues", name="dashboard_queues")
def queues(page: Reader, refresh: str | None = None) -> Response:
    broker = _postgres_broker(page)
    found = broker.queue_stats() if broker is not None else []
    workers = broker.live_workers() if broker is not None else []
    paused = {p.actor_name: p.paused_at for p in client.paused_actors(broker=page.broker)}
    return page.render(
        "queues.html",
        nav="queues",
        actors=[(name, paused.get(name)) for name in _actor_names(page)],
        unavailable=None if broker is not None else _not_broker_pg(page),
        queues=found,
        workers=workers,
        now=page.reads.now(),
        late_after=page.dashboard.thresholds.overdue_after.total_seconds(),
        refresh=_refresh(refresh),
        dead_letters_url=lambda queue: _dead_letters_url(page, queue),
    )


@router.get("/dead-letters", name="dashboard_dead_letters")
def dead_letters(page: Reader, queue: str = "", refresh: str | None = None) -> Response:
    broker = _postgres_broker(page)
    by_queue, letters = [], []
    if broker is not None:
        by_queue = [q for q in broker.queue_stats() if q.dead_letters]
        letters = broker.list_dead_letters(queue or None, limit=LISTED_DEAD_LETTERS)
    counted = [q for q in by_queue if not queue or q.queue_name == queue]
    return page.render(
        "dead_letters.html",
        nav="dead_letters",
        unavailable=None if broker is not None else _not_broker_pg(page),
        queue=queue,
        by_queue=by_queue,
        letters=letters,
        # Counted a moment before the list was read: never fewer than it lists.
        total=max(sum(q.dead_letters for q in counted), len(letters)),
        now=page.reads.now(),
        refresh=_refresh(refresh),
        here=_dead_letters_url(page, queue),
        dead_letters_url=lambda queue: _dead_letters_url(page, queue),
        call=present.call,
        execution_of=present.execution_of,
    )


@router.post("/dead-letters/requeue", name="dashboard_requeue")
def requeue(
    page: QueueAdmin,
    id: Annotated[str, Form()] = "",
    message_id: Annotated[str, Form()] = "",
    queue: Annotated[str, Form()] = "",
    back_to: Annotated[str, Form()] = "",
) -> Response:
    broker = _postgres_broker(page)
    if broker is None:
        page.session.tell("error", _not_broker_pg(page))
    elif not id.isdigit():
        page.session.tell("error", "Not requeued: the form named no dead letter.")
    elif broker.requeue_dead_letters([int(id)]):
        page.session.tell("ok", f"Requeued message {message_id}: it is back on queue {queue!r}.")
    else:
        page.session.tell(
            "error",
            f"Not requeued: message {message_id} is no longer a dead letter "
            "(requeued or purged meanwhile).",
        )
    return page.redirect(_dead_letters_url(page, back_to))


@router.get("/dead-letters/purge", name="dashboard_purge_confirm")
def purge_confirm(page: Reader, queue: str = "") -> Response:
    broker = _postgres_broker(page)
    if broker is None or not queue:
        page.session.tell(
            "error", _not_broker_pg(page) if broker is None else "Say which queue to purge."
        )
        return page.redirect(_dead_letters_url(page, ""))
    count = next((q.dead_letters for q in broker.queue_stats() if q.queue_name == queue), 0)
    return page.render(
        "purge.html",
        nav="dead_letters",
        queue=queue,
        count=count,
        # The purge deletes the dead letters of before this moment: those shown here.
        as_of=page.reads.now(),
        back=_dead_letters_url(page, queue),
    )


@router.post("/dead-letters/purge", name="dashboard_purge")
def purge(
    page: QueueAdmin,
    queue: Annotated[str, Form()] = "",
    as_of: Annotated[str, Form()] = "",
) -> Response:
    broker = _postgres_broker(page)
    try:
        shown_at = datetime.fromisoformat(as_of)
    except ValueError:
        shown_at = None
    if broker is None:
        page.session.tell("error", _not_broker_pg(page))
    elif not queue or shown_at is None or shown_at.tzinfo is None:
        page.session.tell(
            "error", "Not purged: confirm the purge of a queue from its confirmation page."
        )
    else:
        # Only those dead before the confirmation page was shown: a message that died
        # since, nobody has seen. (At least a microsecond: a zero age means "any age".)
        older_than = max(page.reads.now() - shown_at, timedelta(microseconds=1))
        count = broker.purge_dead_letters(queue_name=queue, older_than=older_than)
        page.session.tell(
            "ok", f"Purged {present.plural(count, 'dead letter')} of queue {queue!r}."
        )
    return page.redirect(_dead_letters_url(page, ""))


def _dead_letters_url(page: Page, queue: str) -> str:
    path = page.path("dashboard_dead_letters")
    return path + (f"?{urlencode({'queue': queue})}" if queue else "")


# -- Signing in and out ---------------------------------------------------------------


@router.get("/login", name="dashboard_login")
def login_form(page: Visitor, next: str = "") -> Response:
    if page.viewer is not None:
        return page.redirect(_local(page, next))
    return page.render("login.html", next=next, key_error=None)


@router.post("/login", name="dashboard_login_post")
def login(
    page: Visitor,
    key: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    if not page.auth:
        return page.redirect(_local(page, next))
    if not page.session.valid_csrf(csrf):
        return page.render("login.html", 403, next=next, key_error=_STALE_FORM)
    found = page.zart.keys.verify(key.strip())
    if found is None:
        return page.render(
            "login.html",
            401,
            next=next,
            key_error="This API key is unknown, malformed or revoked.",
        )
    viewer = Viewer.of(found)
    if not viewer.may("read"):
        return page.render(
            "login.html", 403, next=next, key_error=_lacks(viewer, "read", "to sign in")
        )
    page.session.sign_in(found)
    return page.redirect(_local(page, next))


@router.post("/logout", name="dashboard_logout")
def logout(page: Visitor, csrf: Annotated[str, Form()] = "") -> Response:
    if page.session.valid_csrf(csrf):
        page.session.sign_out()
        page.session.tell("ok", "Signed out.")
    target = page.path("dashboard_login") if page.auth else page.path("dashboard_overview")
    return page.redirect(target)


# -- Helpers --------------------------------------------------------------------------


def _local(page: Page, target: str) -> str:
    """``target`` if it is a path of this app, else the overview: never another site."""
    root = page.path("dashboard_overview")
    if target.startswith(root) and not target.startswith("//") and "\\" not in target:
        return target
    return root


def _list_url(page: Page, filters: dict[str, Any]) -> str:
    query = urlencode({k: v for k, v in filters.items() if v not in (None, "")})
    return page.path("dashboard_executions") + (f"?{query}" if query else "")


def _parse_time(text: str, label: str, problems: list[str]) -> datetime | None:
    """A time from a filter: ISO 8601, read as UTC when it names no zone."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"{label}: {text!r} is not a date and time (YYYY-MM-DD HH:MM)")
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _actor_names(page: Page) -> list[str]:
    actors = page.broker.actors.items()
    return sorted(name for name, actor in actors if isinstance(actor, DurableActor))


@dataclass(frozen=True)
class ChartBar:
    x: float
    y: float
    width: float
    height: float
    kind: str
    count: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[ChartBar]
    labels: list[tuple[float, str]]
    peak: int


def _chart(buckets: list[Any]) -> Chart:
    """Bars for each bucket: started, completed, failed, cancelled side by side."""
    width, height, top = 1200, 150, 12
    kinds = ("started", "completed", "failed", "cancelled")
    peak = max([1, *(getattr(b, k) for b in buckets for k in kinds)])
    slot = width / max(len(buckets), 1)
    bar = (slot - 8) / len(kinds)
    bars, labels = [], []
    for i, bucket in enumerate(buckets):
        for j, kind in enumerate(kinds):
            count = getattr(bucket, kind)
            tall = (height - top) * count / peak
            x = i * slot + 4 + j * bar
            bars.append(
                ChartBar(
                    round(x, 1), round(height - tall, 1), round(bar, 1), round(tall, 1), kind, count
                )
            )
        labels.append(
            (round(i * slot + slot / 2, 1), bucket.start.astimezone(UTC).strftime("%H:%M"))
        )
    return Chart(width, height, bars, labels, peak)
