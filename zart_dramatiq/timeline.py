"""The journal's recorded order, and a replay checked against it.

Every journal call of a body (a step, a sleep, an event wait, a group, a child, a
patch marker) is recorded with its *position*: its place among the body's calls in
this generation. Code outside steps is deterministic, so a replay makes the recorded
calls again, in the same order, before any new one: its call at position i must be
the entry recorded at position i. One that is not — another entry, or one the
journal lacks, while the journal goes on — and a body that ends before it has
replayed every entry, diverge: the code changed under the execution. ``Timeline``
says where, and how, before anything of the call runs or is written.

Zart calls made inside a step's function are part of that step: a replay returns
the step's recorded outcome without calling its function, so they are recorded out
of the order (position ``NESTED``) and never expected again.

A recorded patch marker (``zart.patched``) is expected like any other entry; one
recorded by ``zart.deprecate_patch`` may be passed over by code that no longer asks
for it (Temporal's rule: once the old branch is gone, so may the call be).

Where the journal is not one entry per position from 0 on, only its part up to the
first gap is checked in order; past it, a replay is checked by key, as before
positions existed: a retry forgets the entry of the step that failed the execution
(what follows it was recorded under that failure, and may rightly not be called
again), and a journal recorded before positions were (migration 0015) has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import NonDeterminismError

#: The position of an entry recorded inside a step's function: never replayed in order.
NESTED = -1
#: The ``fn`` of a patch marker recorded by ``zart.deprecate_patch``.
DEPRECATED = "deprecate_patch"


def patch_key(change_id: str) -> str:
    """The journal key of the marker of patch ``change_id``."""
    return f"patch:{change_id}"


class Timeline:
    """The recorded order of a run's journal, and where this run's calls have reached in it."""

    def __init__(self, journal: Mapping[str, Mapping[str, Any]]) -> None:
        at: dict[int, str] = {}
        shared: set[int] = set()
        legacy = False
        #: Entries, not recorded inside a step, that this run has not called yet.
        self._pending: set[str] = set()
        skippable = []
        for key, entry in journal.items():
            position = entry.get("position")
            if position is None:
                legacy = True
                self._pending.add(key)
            elif position >= 0:
                self._pending.add(key)
                if at.setdefault(position, key) != key:
                    shared.add(position)
            if entry.get("kind") == "patch" and entry.get("fn") == DEPRECATED:
                skippable.append(key)
        recorded: list[str] = []
        while not legacy and len(recorded) in at and len(recorded) not in shared:
            recorded.append(at[len(recorded)])
        #: The entries checked in order: one per position, from 0 up to the first gap.
        self.recorded = recorded
        #: Whether the journal is exactly that order (else, past it, calls go by key).
        self.exact = not legacy and not shared and len(recorded) == len(at)
        # (A live view: only patch markers are looked up in it, each once a run.)
        self._known = journal.keys()
        self._skippable = frozenset(skippable)
        #: The next recorded entry this run's calls must reach (an index into ``recorded``).
        self.cursor = 0
        #: Where this run's calls are recorded: their positions.
        self.positions: dict[str, int] = {}
        #: The answer of each patch this run asked about (asked again, it answers the same).
        self.patches: dict[str, bool] = {}

    @property
    def replaying(self) -> bool:
        """Whether entries recorded past this point wait for this run's calls."""
        if self.cursor < len(self.recorded):
            return True
        return not self.exact and bool(self._pending)

    def call(self, key: str) -> int:
        """The body's next journal call is ``key``: return the position to record it at.

        Raises NonDeterminismError where it departs from the recorded order.
        """
        self._pending.discard(key)
        self._pass_deprecated(key)
        if self.cursor < len(self.recorded) and self.recorded[self.cursor] != key:
            raise self._divergence(key, self.recorded[self.cursor])
        self.positions[key] = self.cursor
        self.cursor += 1
        return self.positions[key]

    def nested(self, key: str) -> None:
        """``key`` is called inside a step's function: it is part of that step."""
        self._pending.discard(key)
        self.positions[key] = NESTED

    def patch(self, change_id: str, *, deprecated: bool) -> tuple[bool, bool]:
        """Whether patch ``change_id`` applies, and whether to record its marker now.

        Temporal's rules: a replay that finds the marker here says yes; one that
        finds another entry here (the execution was recorded before the patch) says
        no and records nothing; past the journal, the answer is yes and the marker
        is recorded. ``deprecated`` (``zart.deprecate_patch``) takes the marker where
        it is, asks for it nowhere, and records a deprecated one past the journal.
        """
        key = patch_key(change_id)
        if key in self.patches:
            return self.patches[key], False
        record = False
        self._pass_deprecated(key)
        if self.cursor < len(self.recorded):
            answer = self.recorded[self.cursor] == key
            if answer:
                self.call(key)
        elif key in self._known:
            # Past the part checked in order: the marker is somewhere in the journal.
            answer = True
            self._pending.discard(key)
        elif self.replaying:
            answer = False
        else:
            answer = record = True
            self.call(key)
        self.patches[key] = answer or deprecated
        return self.patches[key], record

    def end(self) -> NonDeterminismError | None:
        """The body ended (or continues as new): the divergence, if it left entries unreplayed."""
        self._pass_deprecated(None)
        if self.cursor >= len(self.recorded):
            return None
        expected = self.recorded[self.cursor]
        return NonDeterminismError(
            f"the body ended before replaying {expected}, which the journal records at "
            f"position {self.cursor} (of {len(self.recorded)}): the call was removed, or the "
            "body now takes another way",
            step=expected,
            kind="missing",
        )

    def _pass_deprecated(self, key: str | None) -> None:
        """Go past deprecated patch markers that the code no longer asks for, before ``key``."""
        while (
            self.cursor < len(self.recorded)
            and self.recorded[self.cursor] != key
            and self.recorded[self.cursor] in self._skippable
        ):
            self.cursor += 1

    def _divergence(self, key: str, expected: str) -> NonDeterminismError:
        where = f"where the journal records {expected} (position {self.cursor})"
        if key in self.recorded[self.cursor :]:
            return NonDeterminismError(
                f"the body called {key} {where}; the journal records {key} later, at position "
                f"{self.recorded.index(key)}: the calls were reordered, or {expected} is no "
                "longer called",
                step=expected,
                kind="out_of_order",
            )
        return NonDeterminismError(
            f"the body called {key} {where}; the journal has no {key} there: a call was added "
            f"before {expected}, or {expected} was renamed",
            step=expected,
            kind="unrecorded",
        )
