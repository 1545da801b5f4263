"""Bounds on what one execution stores: its journal, and each document in it.

The journal of a generation is loaded whole at the start of every run, so its
length bounds the cost of a replay; ``zart.continue_as_new`` starts a fresh one.
Documents (step results, event payloads, an execution's input) travel through
that journal and the broker, so each one is bounded too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import PayloadTooLarge

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one execution may store; set them with ``DurableMiddleware(limits=Limits(...))``.

    journal_entries: steps, sleeps and event waits in one generation's journal.
      Each run loads all of them, so this bounds a replay's cost and memory
      (about 20 ms per thousand small entries on a 2-core machine: 0.3 s at the
      default). A body that needs more calls ``zart.continue_as_new``; past the
      limit it fails with JournalTooLarge.
    payload_bytes: the JSON size of one step result (past it the step fails
      with StepResultTooLarge), event payload or execution input (refused with
      PayloadTooLarge before anything is written). Below the 2 MB payload limits
      of Temporal and DBOS, so a workflow that runs there runs here; large data
      belongs in a table or object storage, with a reference in the journal.
    """

    journal_entries: int = 10_000
    payload_bytes: int = MiB

    def __post_init__(self) -> None:
        for name in ("journal_entries", "payload_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")

    def check_payload(self, data: Any, *, what: str) -> None:
        """Raise PayloadTooLarge if the JSON document ``data`` (named by ``what``) is too large."""
        size = json_size(data)
        if size > self.payload_bytes:
            raise PayloadTooLarge(what, size, self.payload_bytes)


DEFAULT_LIMITS = Limits()


def json_size(data: Any) -> int:
    """Bytes of ``data`` as compact UTF-8 JSON: about what PostgreSQL stores for it."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
