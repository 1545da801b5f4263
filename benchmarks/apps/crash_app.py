"""Worker app for `benchmarks.recovery`: `dramatiq benchmarks.apps.crash_app`.

With ZRECOVERY_HANG set, every message hangs (the worker that will be killed);
without it, each message records its completion time in `recovery_done`.
"""

from __future__ import annotations

import os
import threading

import dramatiq
import psycopg
from psycopg import sql

from broker_pg import PostgresBroker

URL = os.environ.get("ZRECOVERY_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = os.environ.get("ZRECOVERY_SCHEMA", "zbench_recovery")

broker = PostgresBroker(URL, schema=SCHEMA)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="zrecovery_work", max_retries=0)
def work(seq: int) -> None:
    if os.environ.get("ZRECOVERY_HANG"):
        threading.Event().wait()  # held until the process is SIGKILLed
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {}.recovery_done VALUES (%s, clock_timestamp())").format(
                sql.Identifier(SCHEMA)
            ),
            (seq,),
        )
