"""When a durable body that raised is run again: Dramatiq's Retries options, applied durably.

Dramatiq's ``Retries`` re-enqueues a failed message from an ``after_*`` hook,
whose failure Dramatiq swallows before acking the delivery: during a database
outage an execution would be left with nothing to resume it. So the runner
makes the same decision here, from the same options (``max_retries``,
``min_backoff``, ``max_backoff``, ``retry_when``, ``throws``, and the
middleware's own defaults), and writes the pause, the resuming message and
the ack in one transaction. Without a ``Retries`` middleware, nothing is retried.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.common import compute_backoff
from dramatiq.middleware import Retries
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF

#: The message option counting the body's retries, as Dramatiq's Retries names it.
RETRIES = "retries"


def retry_delay_ms(
    actor: dramatiq.Actor[Any, Any], message: dramatiq.MessageProxy, error: BaseException
) -> int | None:
    """Milliseconds until the body runs again after ``error``, or None to fail for good."""
    retries = next((m for m in actor.broker.middleware if isinstance(m, Retries)), None)
    if retries is None:
        return None

    def option(name: str, default: Any) -> Any:
        return message.options.get(name, actor.options.get(name, default))

    throws = message.options.get("throws") or actor.options.get("throws")
    if throws and isinstance(error, throws):
        return None
    count = int(message.options.get(RETRIES, 0))
    retry_when = actor.options.get("retry_when", retries.retry_when)
    if retry_when is not None:
        if not retry_when(count, error):
            return None
    else:
        max_retries = option("max_retries", retries.max_retries)
        if max_retries is not None and count >= max_retries:
            return None
    if isinstance(error, dramatiq.Retry) and error.delay is not None:
        return int(error.delay)
    max_backoff = min(option("max_backoff", retries.max_backoff), DEFAULT_MAX_BACKOFF)
    _, delay = compute_backoff(
        count, factor=option("min_backoff", retries.min_backoff), max_backoff=max_backoff
    )
    return int(delay)
