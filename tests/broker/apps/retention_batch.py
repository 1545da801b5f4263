"""``python -m tests.broker.apps.retention_batch``: a worker that dies in the middle of a batch.

It runs one retention batch of the broker's job inside a transaction it never
commits, prints how many rows that batch deleted, and then waits on stdin for
ever, holding the job's lock, until the test kills it. Reads DATABASE_URL and
ZART_TEST_SCHEMA.
"""

from __future__ import annotations

import os
import sys

import psycopg

from broker_pg import PostgresBroker


def main() -> None:
    url = os.environ["DATABASE_URL"]
    broker = PostgresBroker(url, schema=os.environ["ZART_TEST_SCHEMA"])
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        print(broker.maintenance.retention.run(conn), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
