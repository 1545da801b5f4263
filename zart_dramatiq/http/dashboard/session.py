"""The dashboard's session: a signed cookie naming the API key a person signed in with.

The cookie holds the key's *id* (public; never the key itself), when the
person signed in, a CSRF token and a one-shot notice, signed with itsdangerous
under a secret of the app. It is HttpOnly, SameSite=Strict, Secure over HTTPS,
and scoped to the app's path. Each request looks the key up again, so a
revoked key's sessions end at once, and the scopes are the key's own.

Why a signed cookie of our own rather than Starlette's SessionMiddleware: the
middleware would wrap the whole application, the JSON API included, for a
cookie only the dashboard uses; this one is read and written by the
dashboard's routes alone, and holds nothing but what they need.

Forms carry the CSRF token of the session; a POST whose token is missing or is
not the session's is refused. A visitor who has not signed in (or any visitor,
when authentication is off) has a session too, with a token but no key: the
sign-in form is protected like every other.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from ...api_keys import ApiKey

COOKIE = "zart_dashboard"
#: How long a sign-in lasts; then the person pastes the key again.
MAX_AGE = timedelta(hours=12)


@dataclass(frozen=True)
class Viewer:
    """Who looks at the dashboard: a key's id and scopes, or anyone when auth is off."""

    key_id: str | None
    name: str | None
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @classmethod
    def of(cls, key: ApiKey) -> Viewer:
        return cls(key.id, key.name, key.scopes)


#: The viewer when authentication is off: every scope.
ANYONE = Viewer(None, None, frozenset({"read", "events", "admin"}))


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    key_id: str | None = None
    #: When the key was pasted (seconds since the epoch).
    signed_in: float | None = None
    #: A notice for the next page: (level, text), level "ok" or "error".
    notice: tuple[str, str] | None = None
    #: Whether the cookie must be written again.
    changed: bool = False

    def valid_csrf(self, token: str | None) -> bool:
        return bool(token) and secrets.compare_digest(str(token), self.csrf)

    def tell(self, level: str, text: str) -> None:
        self.notice = (level, text)
        self.changed = True

    def take_notice(self) -> tuple[str, str] | None:
        notice, self.notice = self.notice, None
        if notice is not None:
            self.changed = True
        return notice

    def sign_in(self, key: ApiKey) -> None:
        """A new session for ``key``: a new CSRF token too, so none from before carries over."""
        self.csrf = secrets.token_urlsafe(24)
        self.key_id = key.id
        self.signed_in = time.time()
        self.changed = True

    def sign_out(self) -> None:
        self.csrf = secrets.token_urlsafe(24)
        self.key_id = None
        self.signed_in = None
        self.changed = True

    @property
    def expired(self) -> bool:
        return self.signed_in is not None and time.time() - self.signed_in > MAX_AGE.total_seconds()


class Sessions:
    """Reads and writes sessions in a cookie signed with ``secret``."""

    def __init__(self, secret: str | bytes) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="zart-dramatiq dashboard session")

    def load(self, request: Request) -> Session:
        """The request's session; a new one (to be written) when it has none or a bad one."""
        raw = request.cookies.get(COOKIE)
        if raw:
            try:
                data: Any = self.serializer.loads(raw, max_age=int(MAX_AGE.total_seconds()))
                return Session(
                    csrf=str(data["c"]),
                    key_id=data.get("k"),
                    signed_in=data.get("t"),
                    notice=tuple(data["n"]) if data.get("n") else None,  # type: ignore[arg-type]
                )
            except (BadSignature, KeyError, TypeError, ValueError):
                pass
        return Session(changed=True)

    def save(self, request: Request, response: Response, session: Session) -> None:
        """Write the session's cookie on ``response`` if it changed."""
        if not session.changed:
            return
        data = {"c": session.csrf, "k": session.key_id, "t": session.signed_in, "n": session.notice}
        response.set_cookie(
            COOKIE,
            self.serializer.dumps(data),
            max_age=int(MAX_AGE.total_seconds()),
            path=cookie_path(request),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )


def cookie_path(request: Request) -> str:
    """The app's own path: mounted under /zart, the cookie goes only to /zart."""
    root = str(request.scope.get("root_path") or "").rstrip("/")
    return root or "/"
