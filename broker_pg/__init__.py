"""broker_pg: a Dramatiq broker on PostgreSQL.

``PostgresBroker`` replaces Redis or RabbitMQ with one line; run it with the
standard ``dramatiq`` worker. Apply the schema first with ``migrate()`` or
``zart-dramatiq migrate``.
"""

from .broker import DeadLetter, LiveWorker, PostgresBroker, QueueStats
from .consumer import PostgresMessageProxy
from .database import DEFAULT_SCHEMA, Database, resolve_url
from .errors import ConfigurationError, DatabaseUnavailable, MessageEncodeError, SchemaMissing
from .migrations import migrate
from .rate_limits import PostgresRateLimiterBackend
from .results import PostgresBackend

__all__ = [
    "DEFAULT_SCHEMA",
    "ConfigurationError",
    "Database",
    "DatabaseUnavailable",
    "DeadLetter",
    "LiveWorker",
    "MessageEncodeError",
    "PostgresBackend",
    "PostgresBroker",
    "PostgresMessageProxy",
    "PostgresRateLimiterBackend",
    "QueueStats",
    "SchemaMissing",
    "migrate",
    "resolve_url",
]
