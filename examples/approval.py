"""Human approval: an expense report waits for a decision without holding a worker.

Run a worker, then ask for an approval::

    dramatiq examples.approval
    python -m examples.approval EXP-7 ana 120.50     # prints the execution id: approval-EXP-7

See ``request_approval`` for how to approve it from the command line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Literal

import dramatiq
from pydantic import BaseModel

import zart_dramatiq as zart

from .app import broker

logger = logging.getLogger(__name__)


class ExpenseReport(BaseModel):
    id: str
    employee: str
    amount: Decimal


class Approval(BaseModel):
    approved: bool
    by: str
    comment: str | None = None


class Decision(BaseModel):
    report_id: str
    outcome: Literal["approved", "rejected", "expired"]
    by: str | None = None
    payment_id: str | None = None


def notify_approver(report_id: str, employee: str) -> bool:
    """Ask the employee's manager to review the report."""
    logger.info("Asked for a review of report %s by %s", report_id, employee)
    return True


def reimburse(report_id: str, amount: Decimal) -> str:
    """Pay the employee back; return the payment id."""
    logger.info("Reimbursed %s for report %s", amount, report_id)
    return f"pay-{report_id}"


@zart.durable(timeout=timedelta(days=8))
@dramatiq.actor(queue_name="approvals", broker=broker)
def request_approval(report: ExpenseReport) -> Decision:
    """Wait up to a week for a decision on ``report``, then reimburse it if approved.

    Approve (or reject, with ``"approved": false``) from anywhere::

        zart-dramatiq send-event approval-EXP-7 approval '{"approved": true, "by": "ana"}'

    and follow it with ``zart-dramatiq executions show approval-EXP-7``.
    """
    zart.step("notify-approver", notify_approver, report.id, report.employee)
    try:
        approval = zart.wait_for_event("approval", timeout=timedelta(days=7), model=Approval)
    except zart.EventTimeout:
        return Decision(report_id=report.id, outcome="expired")
    if not approval.approved:
        return Decision(report_id=report.id, outcome="rejected", by=approval.by)
    payment_id = zart.step("reimburse", reimburse, report.id, report.amount)
    return Decision(report_id=report.id, outcome="approved", by=approval.by, payment_id=payment_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Start an approval request for an expense report; print its execution id."""
    parser = argparse.ArgumentParser(prog="python -m examples.approval", description=main.__doc__)
    parser.add_argument("report_id")
    parser.add_argument("employee")
    parser.add_argument("amount", type=Decimal)
    args = parser.parse_args(argv)
    report = ExpenseReport(id=args.report_id, employee=args.employee, amount=args.amount)
    handle = zart.start(request_approval, report, execution_id=f"approval-{report.id}")
    print(handle.execution_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
