"""Screenshots of the dashboard for the README, in docs/screenshots/.

    python docs/screenshots.py    # DATABASE_URL, else the embedded PostgreSQL

Makes a schema of its own, runs a worker in this process on a few demo
workflows (orders waiting for a shipment event, a monthly report that fans out
and starts a child, a failed onboarding, one order whose wake-up is overdue
and one on a queue no worker consumes, and a few CRM syncs that failed for good, now dead
letters), serves the dashboard with uvicorn,
signs in with a new API key in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) and saves:

- ``overview.png``: the overview;
- ``executions.png``: the executions list;
- ``execution.png``: an order waiting for its event;
- ``execution-report.png``: the report, with its groups and its child;
- ``queues.png``: queues and workers;
- ``dead-letters.png``: the dead letters.

The schema is dropped at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
import psycopg  # noqa: E402
import uvicorn  # noqa: E402
from dramatiq import Worker  # noqa: E402
from psycopg import sql  # noqa: E402

import zart_dramatiq as zart  # noqa: E402
from broker_pg import PostgresBroker, migrate, resolve_url  # noqa: E402
from zart_dramatiq.api_keys import ApiKeys  # noqa: E402
from zart_dramatiq.http import create_app, dashboard  # noqa: E402
from zart_dramatiq.middleware import middleware_for  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
WIDTH = 1360


# --- Demo workflows -------------------------------------------------------------------------


def charge_card(order_id: int) -> str:
    return f"txn-{order_id}-{uuid.uuid4().hex[:6]}"


def reserve_stock(order_id: int) -> dict[str, Any]:
    return {"warehouse": "LYS-2", "items": order_id % 4 + 1}


def notify(order_id: int, tracking: str) -> str:
    return f"mail to customer {order_id}: {tracking}"


def fetch_invoices(month: str) -> int:
    time.sleep(0.05)
    return 42


def fetch_usage(month: str) -> int:
    time.sleep(0.08)
    return 1337


def score(customer: int) -> float:
    time.sleep(0.02 * (customer % 3))
    return round(0.5 + customer / 40, 2)


def create_account(user: str) -> str:
    return f"acct-{user}"


def send_welcome_email(user: str) -> None:
    raise ConnectionError("SMTP server smtp.example.net refused the connection")


def declare(broker: dramatiq.Broker) -> dict[str, Any]:
    @dramatiq.actor(actor_name="sync_crm", queue_name="integrations", max_retries=0)
    def sync_crm(customer: int) -> None:
        raise ConnectionError(f"crm.example.net timed out syncing customer {customer}")

    @zart.durable(actor_name="fulfil_order", queue_name="orders")
    def fulfil_order(order_id: int) -> str:
        txn = zart.step("charge", charge_card, order_id)
        zart.step("reserve", reserve_stock, order_id)
        zart.sleep("settle", timedelta(seconds=1))
        shipment = zart.wait_for_event("shipment_ready", timeout=timedelta(days=2))
        zart.step("notify", notify, order_id, shipment["tracking"])
        return f"{txn}:{shipment['tracking']}"

    @zart.durable(actor_name="render_pdf", queue_name="reports")
    def render_pdf(month: str, total: int) -> str:
        return f"s3://reports/{month}.pdf"

    @zart.durable(actor_name="monthly_report", queue_name="reports")
    def monthly_report(month: str, customers: list[int]) -> dict[str, Any]:
        invoices, usage = zart.parallel(
            zart.call("invoices", fetch_invoices, month), zart.call("usage", fetch_usage, month)
        )
        scores = zart.map("score", score, customers, max_concurrency=4)
        pdf = zart.start_child(render_pdf, month, invoices).result()
        return {"pdf": pdf, "customers": len(scores), "usage": usage}

    @zart.durable(actor_name="onboard_user", queue_name="default", max_retries=0)
    def onboard_user(user: str) -> str:
        account = zart.step("create_account", create_account, user)
        zart.step("send_welcome_email", send_welcome_email, user)
        return account

    @zart.durable(actor_name="invoice_customer", queue_name="billing")
    def invoice_customer(customer: int) -> str:
        return f"invoice-{customer}"

    return {
        "fulfil_order": fulfil_order,
        "monthly_report": monthly_report,
        "onboard_user": onboard_user,
        "invoice_customer": invoice_customer,
        "sync_crm": sync_crm,
    }


def wait_for(execution_id: str, *statuses: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while zart.get_execution(execution_id).status not in statuses:
        if time.monotonic() > deadline:
            status = zart.get_execution(execution_id).status
            raise RuntimeError(f"{execution_id} is {status}, not {' or '.join(statuses)}")
        time.sleep(0.05)


def populate(actors: dict[str, Any], database_url: str, schema: str) -> None:
    orders = [f"order-{n}" for n in range(1001, 1013)]
    for n, execution_id in enumerate(orders, start=1001):
        zart.start(actors["fulfil_order"], n, execution_id=execution_id)
    zart.start(
        actors["monthly_report"], "2026-10", list(range(1, 13)), execution_id="report-2026-10"
    )
    for user in ("ada", "grace"):
        zart.start(actors["onboard_user"], user, execution_id=f"onboard-{user}")
    zart.start(actors["invoice_customer"], 77, execution_id="invoice-77")
    for execution_id in orders:
        wait_for(execution_id, "waiting")
    for n, execution_id in enumerate(orders[:7], start=1):
        zart.send_event(execution_id, "shipment_ready", {"tracking": f"1Z{n:04d}"})
    for execution_id in orders[:7]:
        wait_for(execution_id, "completed")
    wait_for("report-2026-10", "completed")
    # A worker that consumed "orders" went away while order-1012 waited: what a
    # missing worker looks like, with its wake-up (the wait's timeout) long past.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {}.executions SET wake_at = now() - interval '14 minutes', "
                "updated_at = now() - interval '2 days 3 hours' WHERE id = 'order-1012'"
            ).format(sql.Identifier(schema))
        )
        # And nothing consumes "billing" here: invoice-77 was never picked up.
        conn.execute(
            sql.SQL(
                "UPDATE {}.executions SET updated_at = now() - interval '6 minutes', "
                "created_at = now() - interval '6 minutes' WHERE id = 'invoice-77'"
            ).format(sql.Identifier(schema))
        )
    zart.cancel("order-1011")
    for customer in (311, 312, 340):
        actors["sync_crm"].send(customer)
    broker = dramatiq.get_broker()
    assert isinstance(broker, PostgresBroker)
    deadline = time.monotonic() + 30
    while len(broker.list_dead_letters("integrations")) < 3:
        if time.monotonic() > deadline:
            raise RuntimeError("the CRM syncs were not dead-lettered")
        time.sleep(0.05)


# --- Serving and photographing --------------------------------------------------------------


@contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def photograph(base: str, token: str) -> list[Path]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM") or shutil.which("chromium") or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WIDTH},900")
    driver_path = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or ""
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    wait = WebDriverWait(driver, 20)
    saved = []
    try:
        driver.get(base + "/login")
        driver.find_element(By.ID, "key").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        wait.until(ec.presence_of_element_located((By.ID, "status-counts")))
        for name, path in (
            ("overview", "/"),
            ("executions", "/executions"),
            ("execution", "/executions/order-1009"),
            ("execution-report", "/executions/report-2026-10"),
            ("queues", "/queues"),
            ("dead-letters", "/dead-letters"),
        ):
            driver.get(base + path)
            wait.until(ec.presence_of_element_located((By.TAG_NAME, "main")))
            # The whole page, not only what a window shows.
            height = driver.execute_script("return document.documentElement.scrollHeight")
            metrics = {
                "width": WIDTH,
                "height": int(height),
                "deviceScaleFactor": 1,
                "mobile": False,
            }
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            target = OUT / f"{name}.png"
            driver.save_screenshot(str(target))
            saved.append(target)
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    finally:
        driver.quit()
    return saved


def main() -> None:
    # The failed onboardings are on purpose: no tracebacks on the terminal.
    logging.getLogger("dramatiq").setLevel(logging.CRITICAL)
    database_url = os.environ.get("DATABASE_URL") or resolve_url()
    schema = f"screenshots_{uuid.uuid4().hex[:8]}"
    migrate(database_url, schema=schema)
    broker = PostgresBroker(database_url, schema=schema)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    actors = declare(broker)
    queues = {"orders", "reports", "default", "integrations"}
    worker = Worker(broker, queues=queues | {f"{q}.DQ" for q in queues}, worker_threads=8)
    worker.start()
    try:
        populate(actors, database_url, schema)
        _, token = ApiKeys(middleware_for(broker).store).create(["admin"], name="screenshots")
        OUT.mkdir(parents=True, exist_ok=True)
        with serve(dashboard.install(create_app(broker))) as base:
            for path in photograph(base, token):
                print(path.relative_to(ROOT))
    finally:
        worker.stop()
        broker.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
