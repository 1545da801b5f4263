"""How a delivery of a durable actor ends without a result.

Each is a Dramatiq ``SkipMessage``, so Retries, Callbacks, Pipelines and
Results treat the delivery as neither a success nor a failure.
"""

from __future__ import annotations

from dramatiq.middleware import SkipMessage


class Interrupted(SkipMessage):
    """The delivery ended without a result; what happens next is already recorded."""


class Suspended(Interrupted):
    """The body paused durably; its resuming message is already scheduled."""


class ContinuedAsNew(Suspended):
    """The run ended in ``zart.continue_as_new``; the next generation's first message is sent."""


class BranchEnded(Interrupted):
    """A branch delivery ended, its outcome recorded in its group: it is not the actor's
    result, so Callbacks, Pipelines and Results leave it alone."""


class Stopped(Interrupted):
    """The delivery has nothing (more) to run: cancelled, timed out, stale or duplicate."""


class Refused(Stopped):
    """A write of this run was refused: another run took the execution, or it left ``running``."""


class DeadlinePassed(Stopped):
    """The execution passed its deadline; the runner records it as timed out."""


class Abandoned(Interrupted):
    """The run could not record its outcome (the database stayed unreachable).

    The delivery is handed back where the broker allows it, and the sweeper
    resumes the execution from its journal once the database answers.
    """


class Blocked(Suspended):
    """The replay diverged from the journal: the execution is parked as ``blocked``, and its
    resuming message tries the replay again later (``versioning``)."""
