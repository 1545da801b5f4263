"""Where the database is, and a fork-safe connection pool to it."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool.pool
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from .errors import ConfigurationError, DatabaseUnavailable, SchemaMissing

if TYPE_CHECKING:
    from .notifications import Notifications

# psycopg_pool catches only Exception while a thread waits for a connection. An
# asynchronous BaseException there (Dramatiq's TimeLimit, a KeyboardInterrupt) left the
# waiter queued: the next connection returned was handed to it and lost for good, until
# the pool had none left. Catching BaseException marks the waiter failed, so that
# connection goes to the next waiter (or back to the pool) and the exception still
# propagates. (psycopg#509, #1214 and #1407 fixed the same for CancelledError and checks.)
psycopg_pool.pool.CLIENT_EXCEPTIONS = BaseException  # type: ignore[assignment]

#: The schema every table lives in unless told otherwise.
DEFAULT_SCHEMA = "zart"

#: Longest pause between the pool's attempts to reconnect after the server went away.
RECONNECT_DELAY_MAX = 0.5

#: Pooled connections per process and database, unless ``pool_size`` or ZART_POOL_SIZE
#: says otherwise: 16 worker processes (4 + 1 LISTEN session each) fit in PostgreSQL's
#: default max_connections of 100, with room for producers and tools.
DEFAULT_POOL_SIZE = 4
POOL_SIZE_ENV = "ZART_POOL_SIZE"
#: Set (``1``) where the URL leads to a transaction-pooling proxy such as pgbouncer's
#: ``pool_mode = transaction``, unless ``transaction_pooling`` is given.
TRANSACTION_POOLING_ENV = "ZART_TRANSACTION_POOLING"
#: Seconds a pooled connection may stay unused before the pool closes it (one at a
#: time, down to one connection): a burst does not hold its connections for ever.
POOL_MAX_IDLE = 60.0

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: SQLSTATEs of a statement naming a table (42P01) or a schema (3F000) that does not exist.
_UNDEFINED_OBJECT_STATES = frozenset({"42P01", "3F000"})


def resolve_url(url: str | None = None) -> str:
    """Return the PostgreSQL URL to use.

    In order: the explicit ``url``, else ``DATABASE_URL``, else the embedded
    PostgreSQL (pgserver, when the ``embedded`` extra is installed; see
    ``broker_pg.embedded``), started if it is not running.
    """
    if url:
        return url
    if env_url := os.environ.get("DATABASE_URL"):
        return env_url
    from . import embedded

    try:
        return embedded.url()
    except embedded.NotInstalled:
        raise ConfigurationError(
            "No PostgreSQL configured. Pass url=... or set DATABASE_URL, e.g. "
            "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres, or install the "
            "embedded server with: pip install 'zart-dramatiq[embedded]'"
        ) from None


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain SQL identifier, else raise ConfigurationError."""
    if not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"Invalid schema name {schema!r}: use letters, digits and underscores, "
            "starting with a letter or underscore (at most 63 characters)."
        )
    return schema


def channel_name(schema: str, topic: str) -> str:
    """The NOTIFY channel of ``topic`` in ``schema``, cut to PostgreSQL's 63-byte identifier limit.

    LISTEN would silently truncate a longer name while pg_notify() rejects it.
    """
    return f"{schema}.{topic}"[:63]


def describe(url: str) -> str:
    """Name the server of ``url`` as host:port/dbname, without the password."""
    params = conninfo.conninfo_to_dict(url)
    host = params.get("host") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def unreachable(url: str, error: BaseException) -> DatabaseUnavailable:
    """Build the error raised when the server of ``url`` cannot be reached."""
    reason = str(error).strip() or type(error).__name__
    return DatabaseUnavailable(
        f"Cannot reach PostgreSQL at {describe(url)}: {reason}. "
        "Check that the server is running and accepts connections, and that "
        "DATABASE_URL (or the url argument) names the right host, port, database and user."
    )


def is_connection_error(error: psycopg.Error) -> bool:
    """Whether ``error`` means the connection is gone (not a failed statement)."""
    state = error.sqlstate
    return state is None or state.startswith("08") or state in {"57P01", "57P02", "57P03"}


def connect(
    url: str, *, application_name: str = "zart-dramatiq", transaction_pooling: bool = False
) -> psycopg.Connection:
    """Open one autocommit connection, translating failures into DatabaseUnavailable.

    Its statements are bounded (``configure_session``) unless ``transaction_pooling``:
    a proxy pooling by transaction would pass the session's SET on to other clients.
    """
    try:
        conn = psycopg.connect(url, **_connection_kwargs(application_name, transaction_pooling))
        if not transaction_pooling:
            configure_session(conn)
        return conn
    except psycopg.OperationalError as e:
        raise unreachable(url, e) from e


def configure_session(conn: psycopg.Connection) -> None:
    """Settle how the statements of ``conn`` run (SETs, which session poolers pass on).

    Each is bounded: none waits more than STATEMENT_TIMEOUT_MS. And each is
    planned once per session, not at every call: our statements are written to
    be served by the same indexes whatever their parameters (the tests read
    their generic plans), while PostgreSQL would otherwise re-plan the claim and
    the checkpoint at nearly every call, a quarter of its CPU per workflow. A
    plan made once must not scan a table because it was empty when the plan
    was made (a worker that starts on an empty queue, then meets a backlog):
    sequential scans are a last resort. That makes the cost of the few plans
    that still scan look huge, which would JIT-compile them at every call
    (hundreds of ms of server CPU for a background batch): no JIT.
    """
    conn.execute(
        f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}; "
        "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off"
    )


#: No statement of ours waits longer than this, lock waits included: a server that
#: hangs (rather than vanishes) cannot hold a worker thread for ever.
STATEMENT_TIMEOUT_MS = 300_000


_POOL_SIZE_HINT = (
    f" is not a number of connections: use a whole number of at least 1 "
    f"(default {DEFAULT_POOL_SIZE}), e.g. {POOL_SIZE_ENV}={DEFAULT_POOL_SIZE}."
)


def resolve_pool_size(pool_size: int | None = None) -> int:
    """``pool_size``, else ZART_POOL_SIZE, else DEFAULT_POOL_SIZE; at least 1."""
    if pool_size is None:
        raw = os.environ.get(POOL_SIZE_ENV, "").strip()
        if not raw:
            return DEFAULT_POOL_SIZE
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigurationError(f"{POOL_SIZE_ENV}={raw!r}{_POOL_SIZE_HINT}")
        return int(raw)
    if pool_size < 1:
        raise ConfigurationError(f"pool_size={pool_size!r}{_POOL_SIZE_HINT}")
    return pool_size


def resolve_transaction_pooling(transaction_pooling: bool | None = None) -> bool:
    """``transaction_pooling``, else whether ZART_TRANSACTION_POOLING is set to a true value."""
    if transaction_pooling is not None:
        return transaction_pooling
    raw = os.environ.get(TRANSACTION_POOLING_ENV, "").strip().lower()
    if raw in {"", "0", "false", "no", "off"}:
        return False
    if raw in {"1", "true", "yes", "on"}:
        return True
    raise ConfigurationError(
        f"{TRANSACTION_POOLING_ENV}={raw!r} is neither true nor false: set it to 1 where "
        "DATABASE_URL leads to pgbouncer in pool_mode=transaction, else leave it unset."
    )


def _connection_kwargs(application_name: str, transaction_pooling: bool) -> dict[str, Any]:
    return {
        "autocommit": True,
        # Server-side prepared statements belong to a server session, which a
        # transaction-pooling proxy hands to another client after each transaction.
        **({"prepare_threshold": None} if transaction_pooling else {}),
        "application_name": application_name,
        "connect_timeout": 5,
        # Notice a vanished server or peer within seconds, not hours.
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


class Database:
    """A lazily opened connection pool to one schema of one database.

    The pool is re-created in a forked child, since connections cannot be
    shared across processes. Connections are in autocommit mode: use
    ``with conn.transaction():`` for several statements that must commit together.

    ``notifications`` is the process's one LISTEN session on this database,
    shared by everything that waits for NOTIFY; with the pool it makes the
    budget of ``pool_size + 1`` connections. The pool keeps one connection and
    opens more, up to ``pool_size``, as threads need them (each for one
    statement or transaction); a thread that finds them all lent waits up to
    ``connect_timeout`` seconds for one. Connections unused for
    ``POOL_MAX_IDLE`` seconds are closed again.

    ``pool_size`` defaults to ZART_POOL_SIZE, else ``DEFAULT_POOL_SIZE``.
    ``transaction_pooling`` (default: ZART_TRANSACTION_POOLING) says that ``url``
    leads to a proxy that pools by transaction (pgbouncer's ``pool_mode =
    transaction``): connections then prepare no statements and set nothing for
    the session (no ``statement_timeout``: set the proxy's ``query_timeout``), and
    waiters look again every ``notifications.POLL_INTERVAL`` seconds instead of
    listening. Producers work so; a worker needs a session of its own (directly,
    or through a proxy in session mode) and refuses to start.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_size: int | None = None,
        connect_timeout: float = 10.0,
        application_name: str = "zart-dramatiq",
        transaction_pooling: bool | None = None,
    ) -> None:
        self.url = resolve_url(url)
        self.schema = validate_schema(schema)
        self.pool_size = resolve_pool_size(pool_size)
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.transaction_pooling = resolve_transaction_pooling(transaction_pooling)
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid = os.getpid()
        #: Connections lent out now: all of them means an exhausted pool, not an outage.
        self._lent = 0
        self._lent_lock = threading.Lock()
        self._notifications: Notifications | None = None

    @property
    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                # The pool retries a refused connection until its timeout: one direct
                # attempt first fails at once, naming the server.
                self._connect(self.application_name).close()
                self._pid = os.getpid()
                self._lent = 0
                self._pool = _Pool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    max_idle=POOL_MAX_IDLE,
                    kwargs=_connection_kwargs(self.application_name, self.transaction_pooling),
                    configure=None if self.transaction_pooling else configure_session,
                    name=f"{self.application_name}-{self.schema}",
                    open=True,
                )
            return self._pool

    @property
    def notifications(self) -> Notifications:
        """This process's shared LISTEN session on this database (a forked child gets its own)."""
        from .notifications import Notifications

        with self._lock:
            hub = self._notifications
            if hub is None or hub.pid != os.getpid():
                # A parent's session is left alone: closing it here would end it for the parent.
                hub = self._notifications = Notifications(self)
            return hub

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Lend a pooled connection; raise DatabaseUnavailable if none can be had.

        A statement that fails because this schema or one of its tables does not
        exist raises SchemaMissing.
        """
        try:
            with self.pool.connection(timeout=self.connect_timeout) as conn:
                self._count_lent(1)
                try:
                    yield conn
                finally:
                    self._count_lent(-1)
        except PoolTimeout as e:
            if self._lent >= self.pool_size:
                raise self._exhausted() from e
            # The pool only says it timed out: one direct attempt names the real cause.
            try:
                self._connect(self.application_name).close()
            except DatabaseUnavailable as cause:
                raise cause from e
            raise unreachable(self.url, e) from e
        except psycopg.OperationalError as e:
            if is_connection_error(e):
                # Other idle connections likely broke too (a server restart): replace
                # them now, so this failure is the only one.
                self._check_pool()
                raise unreachable(self.url, e) from e
            raise
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as e:
            if (missing := self.schema_missing(e)) is not None:
                raise missing from e
            raise

    def schema_missing(self, error: BaseException) -> SchemaMissing | None:
        """The SchemaMissing that ``error`` means, if it names this schema or one of its tables."""
        if not isinstance(error, psycopg.Error) or error.sqlstate not in _UNDEFINED_OBJECT_STATES:
            return None
        detail = error.diag.message_primary or str(error).strip()
        # 'relation "zart.messages" does not exist' or 'schema "zart" does not exist'.
        if f'"{self.schema}.' not in detail and f'"{self.schema}"' not in detail:
            return None
        where = "" if self.schema == DEFAULT_SCHEMA else f" --schema {self.schema}"
        return SchemaMissing(
            f"The schema {self.schema!r} at {describe(self.url)} is not set up ({detail}): "
            f"run `zart-dramatiq migrate` first (`zart-dramatiq{where} migrate`), "
            f"or call broker_pg.migrate(url, schema={self.schema!r})."
        )

    def _count_lent(self, change: int) -> None:
        with self._lent_lock:
            self._lent += change

    def _exhausted(self) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"No pooled connection to {describe(self.url)} came free within "
            f"{self.connect_timeout:g}s: all {self.pool_size} were in use. Raise pool_size "
            f"(PostgresBroker(pool_size=...) or {POOL_SIZE_ENV}) within the server's "
            "max_connections, or run fewer threads per process."
        )

    def _check_pool(self) -> None:
        with suppress(Exception):
            self.pool.check()

    def _connect(self, application_name: str) -> psycopg.Connection:
        return connect(
            self.url,
            application_name=application_name,
            transaction_pooling=self.transaction_pooling,
        )

    def listen_connection(self) -> psycopg.Connection:
        """Open a dedicated connection outside the pool (for LISTEN)."""
        return self._connect(self.listener_name)

    @property
    def listener_name(self) -> str:
        """The application_name of this database's LISTEN session."""
        return f"{self.application_name}-listener"

    def close(self) -> None:
        """Close the LISTEN session and the pool; both reopen if used again."""
        with self._lock:
            hub, self._notifications = self._notifications, None
        if hub is not None and hub.pid == os.getpid():
            hub.close()
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None


class _Attempt(AttemptWithBackoff):
    """psycopg_pool's reconnection backoff, capped.

    Uncapped it doubles (1, 2, 4, 8 s...) for as long as the server is down,
    so after a long outage the pool would wait many seconds after the server
    is back; capped, it reconnects within ``RECONNECT_DELAY_MAX`` of it.
    """

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_DELAY_MAX)


class _Pool(ConnectionPool):
    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _Attempt(timeout=self.reconnect_timeout), growing)
