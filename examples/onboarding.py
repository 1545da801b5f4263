"""User onboarding: a flaky email step retried with backoff, and a compensation branch.

Run a worker, then sign a user up and wait for the outcome::

    dramatiq examples.onboarding
    python -m examples.onboarding u1 u1@example.com free

The welcome email fails twice before it goes through; its retries are
recorded as attempts of the step. On the free plan the team workspace is
refused with a non-retryable error, which the flow catches and compensates
for with a personal workspace; since the error is recorded, every replay
takes the same branch.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

import dramatiq
from pydantic import BaseModel

import zart_dramatiq as zart

from .app import broker

logger = logging.getLogger(__name__)


class Signup(BaseModel):
    user_id: str
    email: str
    plan: Literal["free", "team"]


class Onboarded(BaseModel):
    user_id: str
    welcome_message_id: str
    workspace: str


class WorkspaceQuotaExceeded(Exception):
    """The plan allows no team workspace; trying again cannot help."""


#: Calls per address of the simulated mail server, which fails the first two.
_mail_server_calls: Counter[str] = Counter()


@zart.step(
    "send-welcome-email",
    retry=zart.Retry.exponential(attempts=5, initial=timedelta(milliseconds=200), jitter=True),
)
def send_welcome_email(email: str) -> str:
    """Send the welcome email; return the mail provider's message id."""
    _mail_server_calls[email] += 1
    if _mail_server_calls[email] <= 2:
        raise ConnectionError(f"the mail server did not answer (call {_mail_server_calls[email]})")
    logger.info("Sent the welcome email to %s", email)
    return f"msg-{email}"


@zart.step(
    "create-team-workspace",
    retry=zart.Retry.fixed(
        attempts=3, delay=timedelta(milliseconds=200), non_retryable=(WorkspaceQuotaExceeded,)
    ),
)
def create_team_workspace(user_id: str, plan: str) -> str:
    """Create a shared workspace; return its id."""
    if plan != "team":
        raise WorkspaceQuotaExceeded(f"the {plan} plan of {user_id} includes no team workspace")
    return f"team-{user_id}"


@zart.step("create-personal-workspace")
def create_personal_workspace(user_id: str) -> str:
    """Create a single-user workspace; return its id."""
    return f"personal-{user_id}"


@zart.durable(timeout=timedelta(minutes=10))
@dramatiq.actor(queue_name="onboarding", broker=broker)
def onboard_user(signup: Signup) -> Onboarded:
    """Welcome a new user and give them a workspace their plan allows."""
    message_id = send_welcome_email(signup.email)
    try:
        workspace = create_team_workspace(signup.user_id, signup.plan)
    except WorkspaceQuotaExceeded:
        workspace = create_personal_workspace(signup.user_id)
    return Onboarded(user_id=signup.user_id, welcome_message_id=message_id, workspace=workspace)


def main(argv: Sequence[str] | None = None) -> int:
    """Onboard a user through a running worker; print the outcome as JSON."""
    parser = argparse.ArgumentParser(prog="python -m examples.onboarding", description=main.__doc__)
    parser.add_argument("user_id")
    parser.add_argument("email")
    parser.add_argument("plan", choices=["free", "team"])
    args = parser.parse_args(argv)
    signup = Signup(user_id=args.user_id, email=args.email, plan=args.plan)
    handle = zart.start(onboard_user, signup, execution_id=f"onboarding-{signup.user_id}")
    print(handle.result(timeout=60).model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
