"""Errors raised by broker_pg, each naming what is wrong and what to check."""

from __future__ import annotations

from dramatiq.errors import BrokerConnectionError, BrokerError


class ConfigurationError(BrokerError, ValueError):
    """A setting is missing or malformed (database URL, schema name, ...)."""


class DatabaseUnavailable(BrokerConnectionError):
    """PostgreSQL could not be reached; the message names the host and what to check."""


class MessageEncodeError(BrokerError, TypeError):
    """A message argument cannot be encoded; nothing was enqueued."""


class SchemaMissing(ConfigurationError):
    """The schema, or one of its tables, does not exist: it has not been migrated."""
