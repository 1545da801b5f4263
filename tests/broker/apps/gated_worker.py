"""Worker app: ``dramatiq tests.broker.apps.gated_worker``.

Reads DATABASE_URL and ZART_TEST_SCHEMA. Records in ``test_events`` the moment its
worker threads have been told to stop, so a test can tell shutdown has begun.
"""

from __future__ import annotations

import os

import dramatiq
import psycopg
from psycopg import sql

from broker_pg import PostgresBroker
from tests.broker.apps.actors import declare_actors

URL = os.environ["DATABASE_URL"]
SCHEMA = os.environ["ZART_TEST_SCHEMA"]


class ShutdownProbe(dramatiq.Middleware):
    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # What Worker.stop does next; done here first so the event is true when recorded.
        for thread in worker.workers:
            thread.stop()
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("INSERT INTO {}.test_events (event) VALUES ('stopping')").format(
                    sql.Identifier(SCHEMA)
                )
            )


broker = PostgresBroker(URL, schema=SCHEMA, heartbeat_interval=0.2)
broker.add_middleware(ShutdownProbe())
dramatiq.set_broker(broker)
gated = declare_actors(broker, URL, SCHEMA)
