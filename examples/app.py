"""The broker every example shares: messages and executions in PostgreSQL.

The database is ``DATABASE_URL``, else an embedded PostgreSQL (pgserver); the
schema is ``ZART_SCHEMA``, else ``zart``. Create it once with
``zart-dramatiq migrate``.

There is no Results middleware: the examples read results from their
executions (``handle.result()``). With one, Dramatiq would expect each actor
to set ``store_results=True`` and warn that their return values are discarded.
"""

from __future__ import annotations

import os

import dramatiq

from broker_pg import PostgresBroker

broker = PostgresBroker(schema=os.environ.get("ZART_SCHEMA", "zart"))
dramatiq.set_broker(broker)
