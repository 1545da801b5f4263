"""Retention of ended executions: past it, they go with their steps and events.

Workers delete them by themselves (``ExecutionRetention``, run by the sweeper),
one worker of a schema at a time and in batches; ``purge`` deletes them at once,
for ``zart.purge_executions`` and ``zart-dramatiq executions purge``. Executions
that have not ended are never deleted, however old.
"""

from __future__ import annotations

from datetime import timedelta

from broker_pg import maintenance
from broker_pg.sqlfile import Queries

from .store import Store


def purge(store: Store, older_than: timedelta) -> int:
    """Delete the executions that ended more than ``older_than`` ago; return how many."""
    deleted = 0
    while True:
        # Batches keep each transaction short on a busy table.
        limit = maintenance.RETENTION_BATCH
        row = store.fetchone(
            "purge_executions", older_than_s=older_than.total_seconds(), limit=limit
        )
        count = int(row[0]) if row else 0
        deleted += count
        if count < limit:
            return deleted


class ExecutionRetention:
    """Deletes ended executions older than ``keep`` (None: never), from a worker's sweeper."""

    def __init__(self, store: Store, keep: timedelta | None) -> None:
        self.store = store
        #: The batches and their lock; None when executions are kept for ever.
        self.job = (
            None
            if keep is None
            else maintenance.Retention(
                Queries("broker_pg", "queries.sql", store.db.schema),
                store.db.schema,
                "executions",
                store.queries["purge_executions"],
                {"older_than_s": keep.total_seconds()},
            )
        )

    def run(self) -> int:
        """One batch, when due (see ``broker_pg.maintenance.Retention``); return how many went."""
        if self.job is None or not self.job.due:
            return 0
        with self.store.db.connection() as conn:
            return self.job.run(conn)
