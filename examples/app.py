"""The broker every example shares: messages, results and executions in PostgreSQL.

The database is ``DATABASE_URL``, else an embedded PostgreSQL (pgserver); the
schema is ``ZART_SCHEMA``, else ``zart``. Create it once with
``zart-dramatiq migrate``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.results import Results

from broker_pg import PostgresBackend, PostgresBroker

broker = PostgresBroker(schema=os.environ.get("ZART_SCHEMA", "zart"))
broker.add_middleware(Results(backend=PostgresBackend(broker.db.url, schema=broker.db.schema)))
dramatiq.set_broker(broker)
