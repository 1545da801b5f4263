"""A dramatiq.results backend on the broker's database, woken by NOTIFY."""

from __future__ import annotations

import time
from typing import Any

from dramatiq import Message
from dramatiq.encoder import Encoder
from dramatiq.results import ResultBackend, ResultMissing, ResultTimeout
from dramatiq.results.backend import DEFAULT_TIMEOUT, Missing, MResult

from .database import DEFAULT_SCHEMA, Database, channel_name
from .sqlfile import Queries


class PostgresBackend(ResultBackend):
    """Stores actor results in the ``results`` table of ``schema``.

    ``get_result(block=True)`` waits on LISTEN/NOTIFY rather than polling, on
    the LISTEN session its database shares with everything else in the process
    (``pool_size + 1`` connections, whatever the number of waiting threads).
    Expired results are purged by the workers' maintenance.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        namespace: str = "dramatiq-results",
        encoder: Encoder | None = None,
        pool_size: int = 4,
        application_name: str = "broker_pg",
    ) -> None:
        super().__init__(namespace=namespace, encoder=encoder)
        self.db = Database(
            url, schema=schema, pool_size=pool_size, application_name=application_name
        )
        self.queries = Queries("broker_pg", "queries.sql", self.db.schema)
        self.channel = channel_name(self.db.schema, "results")

    def get_result(
        self, message: Message[Any], *, block: bool = False, timeout: int | None = None
    ) -> Any:
        key = self.build_message_key(message)
        if not block:
            result = self._get(key)
            if result is Missing:
                raise ResultMissing(message)
            return self.unwrap_result(result)

        deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else timeout) / 1000
        # Subscribed first, then looked: a result stored in between still wakes us.
        with self.db.notifications.subscribe(self.channel, payload=key) as stored:
            while (result := self._get(key)) is Missing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ResultTimeout(message)
                stored.wait(remaining)
        return self.unwrap_result(result)

    def _get(self, message_key: str) -> MResult:
        with self.db.connection() as conn:
            row = conn.execute(self.queries["get_result"], {"key": message_key}).fetchone()
        return Missing if row is None else self.encoder.decode(row[0])

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self.queries["store_result"],
                {
                    "key": message_key,
                    "value": self.encoder.encode(result),
                    "ttl_ms": ttl,
                    "channel": self.channel,
                },
            )

    def close(self) -> None:
        self.db.close()
