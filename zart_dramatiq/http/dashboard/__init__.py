"""The web dashboard: server-rendered pages over the same executions as the API.

``install(app)`` adds it to an app made by ``create_app``, at the app's root:
an overview (counts by status and actor, starts and ends over the last hour,
the oldest execution in each active status, and what looks stuck), the
executions list with the API's filters and keyset paging, each
execution's page (its steps on a time line, groups and their branches,
children, inbox) with cancel, retry, rerun-from-a-step and send-event forms,
and, on broker_pg, its queues with their live workers and its dead letters
(requeue one, purge a queue's after a confirmation page).

People sign in by pasting an API key: the scopes are the key's (``read`` to
look, ``admin`` to cancel, retry, rerun, requeue or purge, ``events`` to send
an event). With the app's authentication off, nobody signs in. See ``session``
for the cookie.
"""

from __future__ import annotations

import os
import secrets

import jinja2
from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from . import present
from .reads import Reads, Thresholds
from .session import Sessions
from .views import Dashboard, Respond, router

__all__ = ["Thresholds", "install"]

#: Read when ``install`` is given no secret: set it to one value for every
#: process serving the dashboard, so that a session works on all of them.
SECRET_VARIABLE = "ZART_DASHBOARD_SECRET"


def install(
    app: FastAPI,
    *,
    secret: str | bytes | None = None,
    thresholds: Thresholds | None = None,
) -> FastAPI:
    """Serve the dashboard at the root of ``app`` (made by ``create_app``); return ``app``.

    ``secret`` signs the session cookies: by default the ``ZART_DASHBOARD_SECRET``
    environment variable, else a random one drawn now, in which case sessions
    last as long as this process and work only on it (set the variable when
    several processes serve the app). ``thresholds`` say when an execution is
    highlighted as stuck or slow. Installing twice changes nothing.
    """
    if getattr(app.state, "dashboard", None) is not None:
        return app
    context = app.state.zart
    key = secret or os.environ.get(SECRET_VARIABLE) or secrets.token_bytes(32)
    thresholds = thresholds or Thresholds()
    app.state.dashboard = Dashboard(
        templates=_templates(),
        sessions=Sessions(key),
        reads=Reads(context.middleware.store, thresholds),
        thresholds=thresholds,
    )

    async def respond(request: Request, error: Exception) -> Response:
        assert isinstance(error, Respond)
        return error.response

    app.add_exception_handler(Respond, respond)
    app.include_router(router)
    app.mount("/static", StaticFiles(packages=[(__name__, "static")]), name="dashboard_static")
    return app


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__name__, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=present.when,
        duration=present.duration,
        pretty=present.pretty,
        data=present.data,
        compact=present.compact,
        error_text=present.error_text,
        sentence=present.sentence,
    )
    env.globals.update(ago=present.ago, plural=present.plural)
    return Jinja2Templates(env=env)
