"""Monthly reports: a fan-out over customers, a child execution, and an exactly-once write.

Run a worker, then build the report of a month for some customers::

    dramatiq examples.reports
    python -m examples.reports 2024-05 1 2 3 4 5

``monthly_report`` fetches the month's invoices and usage in parallel,
scores every customer as a branch of its own (at most 20 at once, on any
worker), renders the PDF in a child execution (``render_pdf``), and records
the report in the ``monthly_reports`` table in a transactional step: the
row commits with the step's checkpoint, so it is written exactly once, even
if a worker dies around it. Every branch, the child and the step are
checkpointed: after a crash only the unfinished work runs again.

The table lives in the examples' schema (``ZART_SCHEMA``, else ``zart``),
in the database that keeps the executions: a transactional step writes
only there. ``python -m examples.reports`` creates it if it is missing
(``create_table``). The execution id is ``report-<month>``: running the
command again for the same month and customers prints the same report and
writes nothing; other customers for that month are refused as a conflict.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

import dramatiq
import psycopg
from psycopg import sql
from pydantic import BaseModel

import zart_dramatiq as zart

from .app import broker

logger = logging.getLogger(__name__)

#: The report's own table. It has no unique constraint on purpose: the
#: transactional step is what writes each report's row once.
TABLE = """
CREATE TABLE IF NOT EXISTS {s}.monthly_reports (
    id bigserial PRIMARY KEY,
    execution_id text NOT NULL,
    month text NOT NULL,
    pdf_url text NOT NULL,
    customers integer NOT NULL,
    total_invoiced numeric(12, 2) NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
)
"""


class Invoice(BaseModel):
    customer_id: int
    amount: Decimal


class Usage(BaseModel):
    customer_id: int
    api_calls: int


class Account(BaseModel):
    """A customer's month: what they were invoiced and how much they used."""

    customer_id: int
    invoiced: Decimal
    api_calls: int


class Row(BaseModel):
    """A customer's line in the report."""

    customer_id: int
    invoiced: Decimal
    api_calls: int
    tier: Literal["gold", "silver", "bronze"]


class Pdf(BaseModel):
    url: str
    pages: int


class Summary(BaseModel):
    month: str
    customers: int
    total_invoiced: Decimal
    gold: list[int]
    pdf_url: str
    report_id: int
    stamped_at: datetime


# -- The billing system and the PDF store, simulated -------------------------------------------
# Deterministic stand-ins: the same month and customers always give the same report.


def fetch_invoices(month: str, customer_ids: list[int]) -> list[Invoice]:
    """The month's invoices of these customers, from the billing system."""
    logger.info("Fetched the invoices of %s for %d customers", month, len(customer_ids))
    return [Invoice(customer_id=c, amount=Decimal(c * 10) + Decimal("0.50")) for c in customer_ids]


def fetch_usage(month: str, customer_ids: list[int]) -> list[Usage]:
    """The month's API usage of these customers, from the metering service."""
    logger.info("Fetched the usage of %s for %d customers", month, len(customer_ids))
    return [Usage(customer_id=c, api_calls=c * 1000) for c in customer_ids]


def score_customer(account: Account) -> Row:
    """Place one customer in a tier by their usage."""
    tier: Literal["gold", "silver", "bronze"] = (
        "gold" if account.api_calls >= 4000 else "silver" if account.api_calls >= 2000 else "bronze"
    )
    return Row(
        customer_id=account.customer_id,
        invoiced=account.invoiced,
        api_calls=account.api_calls,
        tier=tier,
    )


def upload_pdf(month: str, rows: list[Row]) -> Pdf:
    """Render the rows as a PDF and upload it, named by its content: a re-upload overwrites it."""
    content = "\n".join(row.model_dump_json() for row in rows).encode()
    digest = hashlib.sha256(content).hexdigest()[:16]
    url = f"https://files.example.com/reports/{month}-{digest}.pdf"
    logger.info("Uploaded the report of %s to %s", month, url)
    return Pdf(url=url, pages=1 + len(rows) // 40)


# -- The report's own table ---------------------------------------------------------------------


def create_table() -> None:
    """Create ``monthly_reports`` in the examples' schema unless it exists."""
    with psycopg.connect(broker.db.url, autocommit=True) as conn:
        conn.execute(sql.SQL(TABLE).format(s=sql.Identifier(broker.db.schema)))


def record_report(
    conn: psycopg.Connection, execution_id: str, month: str, pdf: Pdf, rows: list[Row]
) -> int:
    """Insert the report on the step's connection; return its id."""
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {}.monthly_reports "
            "(execution_id, month, pdf_url, customers, total_invoiced) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id"
        ).format(sql.Identifier(broker.db.schema)),
        (execution_id, month, pdf.url, len(rows), sum((r.invoiced for r in rows), Decimal(0))),
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- The workflow -------------------------------------------------------------------------------


@zart.durable(timeout=timedelta(minutes=10))
@dramatiq.actor(queue_name="reports", broker=broker)
def render_pdf(month: str, rows: list[Row]) -> Pdf:
    """Render and upload the report's PDF: a durable execution of its own, started as a child."""
    return zart.step("upload", upload_pdf, month, rows)


@zart.durable(timeout=timedelta(hours=1))
@dramatiq.actor(queue_name="reports", broker=broker)
def monthly_report(month: str, customer_ids: list[int]) -> Summary:
    """Build, render and record the report of ``month`` for ``customer_ids``."""
    invoices, usage = zart.parallel(
        zart.call("fetch-invoices", fetch_invoices, month, customer_ids),
        zart.call("fetch-usage", fetch_usage, month, customer_ids),
    )
    invoiced = {i.customer_id: i.amount for i in invoices}
    calls = {u.customer_id: u.api_calls for u in usage}
    accounts = [
        Account(customer_id=c, invoiced=invoiced.get(c, Decimal(0)), api_calls=calls.get(c, 0))
        for c in customer_ids
    ]
    rows = zart.map("score", score_customer, accounts, max_concurrency=20)
    pdf = zart.start_child(render_pdf, month, rows).result()
    execution_id = zart.context().execution_id
    report_id = zart.transactional_step(
        "record-report", record_report, execution_id, month, pdf, rows
    )
    stamp = zart.now("stamped-at")
    return Summary(
        month=month,
        customers=len(rows),
        total_invoiced=sum((r.invoiced for r in rows), Decimal(0)),
        gold=[r.customer_id for r in rows if r.tier == "gold"],
        pdf_url=pdf.url,
        report_id=report_id,
        stamped_at=stamp,
    )


def month(text: str) -> str:
    """``text`` if it names a month as YYYY-MM."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Build a month's report through a running worker; print the summary as JSON."""
    parser = argparse.ArgumentParser(prog="python -m examples.reports", description=main.__doc__)
    parser.add_argument("month", type=month, help="the month, as YYYY-MM")
    parser.add_argument("customer_ids", nargs="+", type=int, metavar="customer_id")
    args = parser.parse_args(argv)
    create_table()
    try:
        handle = zart.start(
            monthly_report, args.month, args.customer_ids, execution_id=f"report-{args.month}"
        )
    except zart.ExecutionConflict as error:
        # The month's report was started before, for other customers.
        parser.exit(1, f"{parser.prog}: {error}\n")
    print(handle.result(timeout=60).model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
