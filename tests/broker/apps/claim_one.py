"""``python -m tests.broker.apps.claim_one``: a process that takes one message and hangs.

It consumes one message of the test queue as a direct consumer, prints its row id
and delivery number, and then waits on stdin for ever, holding the lease, until the
test kills it. Reads DATABASE_URL, ZART_TEST_SCHEMA and ZART_TEST_MAX_DELIVERIES.
"""

from __future__ import annotations

import os
import sys

from broker_pg import PostgresBroker
from tests.broker.apps.actors import QUEUE


def main() -> None:
    broker = PostgresBroker(
        os.environ["DATABASE_URL"],
        schema=os.environ["ZART_TEST_SCHEMA"],
        max_deliveries=int(os.environ["ZART_TEST_MAX_DELIVERIES"]),
    )
    broker.declare_queue(QUEUE)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=1000)
    message = None
    while message is None:
        message = next(consumer)
    print(message.row_id, message.delivery, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
