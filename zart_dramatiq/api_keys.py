"""API keys of the HTTP API: created and revoked by an operator, checked on every request.

A key reads ``zk_<id>_<secret>``. The id is public: it names the key in
listings, in ``revoke`` and in logs. The secret is 32 random bytes
(``secrets.token_urlsafe(32)``) and is shown once, when the key is created:
the database keeps only its sha256, so a copy of the table yields no key.

Each key has scopes, some of :data:`SCOPES`; what each scope allows is the
HTTP API's business, not this module's.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from broker_pg.sqlfile import Queries

from .store import Store

#: The scopes a key may have, as the api_keys table's CHECK constraint lists them.
SCOPES = ("read", "events", "admin")

#: What every key starts with, so that one pasted in the wrong place is recognised.
PREFIX = "zk_"

#: A key's use is recorded at most this often: verifying a key writes to the
#: database once a minute, not on every request.
TOUCH_INTERVAL = timedelta(minutes=1)

#: Bytes of randomness in a secret, and characters in its URL-safe base64 form.
SECRET_BYTES = 32
_SECRET_CHARS = 43
#: Bytes of randomness in an id (12 hex digits): ids only need to be unique,
#: and a collision is drawn again.
_ID_BYTES = 6

_TOKEN = re.compile(
    rf"{PREFIX}(?P<id>[0-9a-f]{{{2 * _ID_BYTES}}})_(?P<secret>[A-Za-z0-9_-]{{{_SECRET_CHARS}}})"
)

#: Random ids drawn before giving up on creating a key (one is nearly always enough).
_ID_ATTEMPTS = 5


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: everything but its secret, which is never kept."""

    id: str
    name: str | None
    scopes: frozenset[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class ApiKeys:
    """Create, list, revoke and verify the API keys kept in ``store``'s schema."""

    def __init__(self, store: Store) -> None:
        self.db = store.db
        self.queries = Queries("zart_dramatiq", "api_keys.sql", store.db.schema)

    def create(self, scopes: Iterable[str], name: str | None = None) -> tuple[ApiKey, str]:
        """Create a key with ``scopes``; return it and its token, which is not kept anywhere.

        Raises ValueError, before writing anything, when ``scopes`` is empty or
        names a scope not in :data:`SCOPES`.
        """
        wanted = validate_scopes(scopes)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        params = {"name": name or None, "scopes": wanted, "hash": _digest(secret)}
        with self.db.connection() as conn:
            for _ in range(_ID_ATTEMPTS):
                key_id = secrets.token_hex(_ID_BYTES)
                row = conn.execute(self.queries["insert_key"], {**params, "id": key_id}).fetchone()
                if row is not None:
                    return _api_key(row), f"{PREFIX}{key_id}_{secret}"
        raise RuntimeError(f"no free API key id after {_ID_ATTEMPTS} random draws")

    def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self.db.connection() as conn:
            return [_api_key(row) for row in conn.execute(self.queries["list_keys"]).fetchall()]

    def get(self, key_id: str) -> ApiKey | None:
        """The key ``key_id``, revoked or not; None if there is none."""
        row = self._row(key_id)
        return None if row is None else _api_key(row)

    def revoke(self, key_id: str) -> bool:
        """Revoke ``key_id`` at once; False if there is no such key or it was already revoked."""
        with self.db.connection() as conn:
            return conn.execute(self.queries["revoke_key"], {"id": key_id}).fetchone() is not None

    def verify(self, token: str) -> ApiKey | None:
        """The key that ``token`` is, or None if it is malformed, unknown, wrong or revoked.

        Records the key's use (``last_used_at``) at most once a minute.
        """
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return None
        key_id, secret = match["id"], match["secret"]
        row = self._row(key_id)
        if row is None:
            # The id is public: answering sooner for an unknown one gives nothing away.
            return None
        # Constant time: how long the comparison takes says nothing about the hash.
        if not hmac.compare_digest(bytes(row[6]), _digest(secret)):
            return None
        key = _api_key(row)
        if key.revoked:
            return None
        now = datetime.now(UTC)
        if key.last_used_at is None or now - key.last_used_at >= TOUCH_INTERVAL:
            # The caller's clock, both for the check above and for the guard in
            # the statement, so that the two agree.
            with self.db.connection() as conn:
                touched = conn.execute(
                    self.queries["touch_key"],
                    {"id": key_id, "now": now, "stale": now - TOUCH_INTERVAL},
                ).fetchone()
            if touched is not None:
                key = replace(key, last_used_at=touched[0])
        return key

    def _row(self, key_id: str) -> tuple[Any, ...] | None:
        with self.db.connection() as conn:
            return conn.execute(self.queries["key_by_id"], {"id": key_id}).fetchone()


def validate_scopes(scopes: Iterable[str]) -> builtins.list[str]:
    """``scopes``, checked, without repeats, in the order of :data:`SCOPES`.

    Raises ValueError when there are none or one is not a scope.
    """
    if isinstance(scopes, str):
        raise TypeError(f"scopes must be a collection of scope names, not the string {scopes!r}")
    given = set(scopes)
    valid = ", ".join(SCOPES)
    if unknown := sorted(given - set(SCOPES), key=repr):
        raise ValueError(
            f"unknown scope{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}: the scopes are {valid}"
        )
    if not given:
        raise ValueError(f"an API key needs at least one scope, of {valid}")
    return [scope for scope in SCOPES if scope in given]


def _digest(secret: str) -> bytes:
    # A fast hash is right here: the secret is 256 random bits, not a password, so
    # no amount of guessing per hash finds it and a slow hash (bcrypt, argon2)
    # would only make every request slower.
    return hashlib.sha256(secret.encode("ascii")).digest()


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, name, scopes, created_at, last_used_at, revoked_at = row[:6]
    return ApiKey(key_id, name, frozenset(scopes), created_at, last_used_at, revoked_at)
