"""The web dashboard, in a real headless Chromium against uvicorn, a real worker and PostgreSQL.

The browser tests drive the pages as a person would: sign in with a key, read
the overview, filter the list, open an execution, send it an event and see it
complete, cancel one; a wrong key and a missing scope are refused. Tests of
what a browser does not show (cookie flags, CSRF refusals, query plans) use
FastAPI's test client.

They need Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package (the dev extra): outside CI a missing one skips them, saying how to get
it; in CI (``CI=true``) it fails them.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import dramatiq
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

import zart_dramatiq as zart
from broker_pg import PostgresBroker
from broker_pg.broker import DeadLetter
from tests.support import Effects, executed_plan, scalar, unavailable, wait_until
from zart_dramatiq.api_keys import ApiKeys
from zart_dramatiq.http import create_app
from zart_dramatiq.http.dashboard.reads import Reads, Thresholds
from zart_dramatiq.http.dashboard.session import COOKIE
from zart_dramatiq.middleware import middleware_for

BROWSER_HOW_TO = (
    "install Debian's browser and its driver (`apt-get install chromium chromium-driver`) "
    "and selenium (`pip install -e '.[dev]'`); CHROMIUM and CHROMEDRIVER may name the binaries"
)

#: How long a page may take to show what a test waits for.
PAGE_WAIT = 20


# --- Actors -----------------------------------------------------------------------------------


def reserve(order: int) -> str:
    return f"stock-{order}"


def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def actors(broker: dramatiq.Broker) -> dict[str, zart.DurableActor]:
    @zart.durable(actor_name="greet")
    def greet(name: str) -> str:
        return f"hello {name}"

    @zart.durable(actor_name="approval")
    def approval(order: int) -> str:
        zart.step("reserve", reserve, order)
        decision = zart.wait_for_event("decision")
        return f"order {order}: {decision['verdict']}"

    @zart.durable(actor_name="nap")
    def nap() -> str:
        zart.sleep("long", timedelta(hours=1))
        return "rested"

    @zart.durable(actor_name="explode", max_retries=0)
    def explode() -> str:
        raise ValueError("boom")

    @zart.durable(actor_name="family")
    def family(n: int) -> list[int]:
        doubled = zart.map("doubles", double, range(n), max_concurrency=2)
        zart.start_child(greet, "child").result()
        return doubled  # type: ignore[no-any-return]

    return {
        "greet": greet,
        "approval": approval,
        "nap": nap,
        "explode": explode,
        "family": family,
    }


def status_of(execution_id: str) -> str:
    return zart.get_execution(execution_id).status


def wait_for_status(execution_id: str, status: str) -> None:
    wait_until(
        lambda: status_of(execution_id) == status,
        timeout=20,
        message=lambda: f"{execution_id!r} to be {status} (it is {status_of(execution_id)})",
    )


def start(actor: zart.DurableActor, *args: Any, execution_id: str, status: str) -> None:
    zart.start(actor, *args, execution_id=execution_id)
    wait_for_status(execution_id, status)


class Failing:
    """Plain Dramatiq actors whose messages end as dead letters: ``fragile`` fails
    until ``mended`` is set, then runs (counted in ``ran``); ``brittle`` always fails."""

    def __init__(self, broker: PostgresBroker) -> None:
        self.broker = broker
        self.mended = threading.Event()
        self.ran = Effects()

        @dramatiq.actor(queue_name="fragile", max_retries=0, broker=broker)
        def fragile(n: int) -> None:
            if not self.mended.is_set():
                raise RuntimeError(f"fragile {n} broke")
            self.ran(f"fragile {n}")

        @dramatiq.actor(queue_name="brittle", max_retries=0, broker=broker)
        def brittle(n: int) -> None:
            raise RuntimeError(f"brittle {n} broke")

        self.fragile = fragile
        self.brittle = brittle

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        return self.broker.list_dead_letters(queue)

    def wait_for_dead_letters(self, queue: str, count: int) -> list[DeadLetter]:
        """Wait until queue ``queue`` has ``count`` dead letters (a worker failed them)."""
        found: list[DeadLetter] = []

        def counted() -> bool:
            found[:] = self.dead_letters(queue)
            return len(found) == count

        wait_until(counted, timeout=20, message=lambda: f"{count} dead letters in {queue!r}")
        return found


@pytest.fixture
def failing(broker: PostgresBroker) -> Failing:
    return Failing(broker)


Keys = Callable[..., str]


@pytest.fixture
def keys(broker: dramatiq.Broker) -> Keys:
    """A new API key's token, with the scopes given."""

    def make(*scopes: str) -> str:
        return ApiKeys(middleware_for(broker).store).create(scopes, name="tests")[1]

    return make


def dashboard_app(broker: dramatiq.Broker, **options: Any) -> FastAPI:
    """The app, with its dashboard."""
    return create_app(broker, **options)


# --- A real server and a real browser ----------------------------------------------------------


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread, on a free port of 127.0.0.1; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, message="uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def site(broker: dramatiq.Broker, actors: Any, worker: dramatiq.Worker) -> Iterator[str]:
    """The dashboard with authentication, served for real; a worker runs the actors."""
    with serve(dashboard_app(broker)) as url:
        yield url


def browser_binaries() -> tuple[str, str]:
    """The paths of Chromium and its driver; skip (fail in CI) without them or selenium."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("selenium", f"selenium is not installed: {BROWSER_HOW_TO}")
    chromium = shutil.which(os.environ.get("CHROMIUM") or "chromium")
    driver = shutil.which(os.environ.get("CHROMEDRIVER") or "chromedriver")
    if not chromium or not driver:
        missing = " and ".join(
            n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p
        )
        unavailable("Chromium", f"{missing} not found: {BROWSER_HOW_TO}")
    return chromium, driver


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    """One headless Chromium for the module's tests, driven by selenium through chromedriver."""
    chromium, driver_path = browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in containers and CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


class Browser:
    """The module's Chromium, with the few moves the tests make, each waiting explicitly."""

    def __init__(self, driver: Any, base: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base = base
        self.wait = WebDriverWait(driver, PAGE_WAIT)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def shown(self, css: str) -> Any:
        """Wait until an element matching ``css`` is on the page; return it."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def path(self) -> str:
        return str(self.driver.current_url).removeprefix(self.base)

    def click_through(self, css: str, *, confirm: bool = False) -> None:
        """Click ``css`` and wait for the page it leads to (accepting its confirmation)."""
        from selenium.webdriver.support import expected_conditions as ec

        old = self.find("html")
        self.find(css).click()
        if confirm:
            self.wait.until(ec.alert_is_present()).accept()
        self.wait.until(ec.staleness_of(old))

    def sign_in(self, token: str) -> None:
        self.shown("#key").send_keys(token)
        self.click_through("#login button[type=submit]")

    def reload_until(self, css: str, text: str) -> None:
        """Reload until the element ``css`` reads ``text`` (an execution moving on)."""

        def reads(driver: Any) -> bool:
            driver.refresh()
            found = self.find_all(css)
            return bool(found) and found[0].text == text

        self.wait.until(reads, message=f"{css} to read {text!r}")


def forget_cookies(chrome: Any) -> None:
    """Every cookie of the browser, whatever page it shows (servers of earlier tests
    shared the host 127.0.0.1, and cookies do not tell ports apart)."""
    chrome.execute_cdp_cmd("Network.clearBrowserCookies", {})


@pytest.fixture
def browser(chrome: Any, site: str) -> Iterator[Browser]:
    forget_cookies(chrome)
    yield Browser(chrome, site)


# --- In the browser -----------------------------------------------------------------------------


def test_sign_in_read_the_overview_filter_open_and_send_an_event(
    browser: Browser, actors: dict[str, zart.DurableActor], keys: Keys
) -> None:
    start(actors["greet"], "ada", execution_id="greet-1", status="completed")
    start(actors["greet"], "bob", execution_id="greet-2", status="completed")
    start(actors["approval"], 7, execution_id="order-7", status="waiting")
    start(actors["explode"], execution_id="boom-1", status="failed")

    browser.open("/")
    assert browser.path().startswith("/login?next=%2F")
    browser.sign_in(keys("read", "events"))

    # The overview: counts by status and by actor.
    browser.shown("#status-counts")
    assert browser.path() == "/"
    counts = {
        tile.get_attribute("data-status"): tile.find_element("css selector", ".n").text
        for tile in browser.find_all("#status-counts .tile")
    }
    assert (counts["completed"], counts["waiting"], counts["failed"]) == ("2", "1", "1")
    assert browser.text("#started-count") == "4"
    assert {row.get_attribute("data-actor") for row in browser.find_all("#by-actor tbody tr")} == {
        "approval",
        "explode",
        "greet",
    }
    assert browser.find_all("#all-clear")

    # The list, filtered by status, then by actor.
    browser.click_through("header nav a[href='/executions']")
    assert len(browser.find_all("#executions tbody tr[data-id]")) == 4
    from selenium.webdriver.support.ui import Select

    Select(browser.find("#f-status")).select_by_value("waiting")
    browser.click_through("#apply")
    assert browser.path() == "/executions?status=waiting"  # the filters left empty dropped
    assert [r.get_attribute("data-id") for r in browser.find_all("#executions tbody tr")] == [
        "order-7"
    ]
    assert browser.text("#summary").startswith("1 execution matches")
    browser.open("/executions")
    browser.find("#f-actor").send_keys("greet")
    browser.click_through("#apply")
    ids = sorted(r.get_attribute("data-id") for r in browser.find_all("#executions tbody tr"))
    assert ids == ["greet-1", "greet-2"]

    # The execution: what it waits for, its steps, and an event sent from its page.
    browser.open("/executions?status=waiting")
    browser.click_through("#executions a[href='/executions/order-7']")
    assert browser.text("#execution-status") == "waiting"
    assert browser.text("#waiting-for") == "event 'decision'"
    reserve_row = browser.find("#steps tr[data-step='step:reserve']")
    assert reserve_row.get_attribute("data-status") == "completed"
    assert '"stock-7"' in reserve_row.text
    assert browser.find("#event-name").get_attribute("value") == "decision"
    assert browser.find("#cancel").get_attribute("disabled") is not None  # no admin scope
    payload = browser.find("#event-payload")
    payload.clear()
    payload.send_keys('{"verdict": "approved"}')
    browser.click_through("#send-event")
    assert browser.text("#notice") == "Sent event 'decision'."
    browser.reload_until("#execution-status", "completed")
    assert browser.text("#result") == '"order 7: approved"'
    inbox = browser.find("#inbox tr[data-event='decision']")
    assert "event:decision" in inbox.text and "approved" in inbox.text


def test_cancel_and_retry_from_the_execution_page(
    browser: Browser, actors: dict[str, zart.DurableActor], keys: Keys
) -> None:
    start(actors["nap"], execution_id="nap-1", status="sleeping")
    browser.open("/executions/nap-1")
    browser.sign_in(keys("admin"))
    assert browser.path() == "/executions/nap-1"
    assert browser.text("#waiting-for") == "sleep 'long'"

    browser.click_through("#cancel", confirm=True)
    assert browser.text("#notice") == "Cancelled (it was sleeping)."
    assert browser.text("#execution-status") == "cancelled"
    assert status_of("nap-1") == "cancelled"

    browser.click_through("#retry", confirm=True)
    assert browser.text("#notice").startswith("Retrying")
    wait_for_status("nap-1", "sleeping")
    browser.reload_until("#execution-status", "sleeping")


def test_a_wrong_key_and_a_missing_scope_are_refused(
    browser: Browser, actors: dict[str, zart.DurableActor], keys: Keys, broker: dramatiq.Broker
) -> None:
    start(actors["nap"], execution_id="nap-2", status="sleeping")

    browser.open("/")
    browser.sign_in("zk_0123456789ab_" + "x" * 43)
    assert browser.text("#key-error") == "This API key is unknown, malformed or revoked."
    assert browser.path() == "/login"

    browser.sign_in(keys("events"))
    assert "lacks the 'read' scope" in browser.text("#key-error")
    assert browser.path() == "/login"

    reader = keys("read")
    browser.sign_in(reader)
    browser.open("/executions/nap-2")
    cancel = browser.find("#cancel")
    assert cancel.get_attribute("disabled") is not None
    # The page only greys the button out: the server refuses the post itself.
    browser.driver.execute_script("arguments[0].disabled = false", cancel)
    browser.click_through("#cancel", confirm=True)
    assert browser.text("h1") == "Not allowed"
    assert "lacks the 'admin' scope" in browser.text("#message")
    assert status_of("nap-2") == "sleeping"

    # A revoked key's session ends at its next page.
    ApiKeys(middleware_for(broker).store).revoke(reader.split("_")[1])
    browser.open("/executions/nap-2")
    assert browser.path().startswith("/login")
    assert "revoked" in browser.text("#notice")


def test_a_link_from_another_site_opens_the_page_signed_in(
    browser: Browser, actors: dict[str, zart.DurableActor], keys: Keys
) -> None:
    start(actors["nap"], execution_id="nap-linked", status="sleeping")
    browser.open("/")
    browser.sign_in(keys("read"))
    # A page of another site (a chat message, a ticket) links to the execution:
    # the browser sends no SameSite=Strict cookie with that navigation.
    link = f'<a id="go" href="{browser.base}/executions/nap-linked">nap-linked</a>'
    browser.driver.get("data:text/html," + quote(link))
    browser.find("#go").click()
    browser.shown("#execution-id")
    assert browser.path() == "/executions/nap-linked"
    assert browser.text("#execution-status") == "sleeping"


def test_a_stuck_execution_stands_out(
    browser: Browser,
    actors: dict[str, zart.DurableActor],
    keys: Keys,
    db: psycopg.Connection,
    schema: str,
) -> None:
    start(actors["nap"], execution_id="nap-overdue", status="sleeping")
    start(actors["nap"], execution_id="nap-fine", status="sleeping")
    # Its wake-up passed ten minutes ago and nothing resumed it (its message is
    # still due in an hour): what a missing worker looks like.
    scalar(
        db,
        schema,
        "UPDATE {s}.executions SET wake_at = now() - interval '10 minutes' "
        "WHERE id = 'nap-overdue' RETURNING id",
    )
    browser.open("/")
    browser.sign_in(keys("read"))
    panel = browser.shown("#attention .panel[data-panel='Wake-up overdue']")
    assert "nap-overdue" in panel.text and "nap-fine" not in panel.text

    browser.open("/executions?actor=nap")
    rows = {r.get_attribute("data-id"): r for r in browser.find_all("#executions tbody tr")}
    assert rows["nap-overdue"].get_attribute("class") == "stuck"
    assert "wake-up overdue by 10 min" in rows["nap-overdue"].text
    assert rows["nap-fine"].get_attribute("class") == ""

    browser.open("/executions/nap-overdue")
    assert browser.text("#stuck-banner").startswith("⚠ Wake-up overdue by 10 min")


def test_with_authentication_off_nobody_signs_in(
    chrome: Any, broker: dramatiq.Broker, actors: dict[str, zart.DurableActor], worker: Any
) -> None:
    start(actors["nap"], execution_id="nap-open", status="sleeping")
    with serve(dashboard_app(broker, auth=False)) as url:
        forget_cookies(chrome)
        browser = Browser(chrome, url)
        browser.open("/")
        browser.shown("#status-counts")
        assert browser.path() == "/"
        assert not browser.find_all("#logout")
        browser.open("/executions/nap-open")
        browser.click_through("#cancel", confirm=True)
        assert browser.text("#execution-status") == "cancelled"


def test_requeue_a_dead_letter_from_its_page(
    browser: Browser, failing: Failing, keys: Keys
) -> None:
    browser.open("/dead-letters")
    browser.sign_in(keys("admin"))
    assert browser.path() == "/dead-letters"
    assert browser.find_all("#no-dead-letters")

    message_id = failing.fragile.send(1).message_id
    failing.wait_for_dead_letters("fragile", 1)
    browser.open("/dead-letters")
    row = browser.find(f"#dead-letters tr[data-message='{message_id}']")
    assert row.get_attribute("data-queue") == "fragile"
    assert "fragile" in row.text and "(1)" in row.text
    assert "RuntimeError: fragile 1 broke" in row.text
    assert browser.text("#summary") == "1 dead letter, oldest first."
    by_queue = browser.find("#dead-letter-queues tr[data-queue='fragile']")
    assert by_queue.find_element("css selector", "td.num").text == "1"

    failing.mended.set()
    browser.click_through(f"#dead-letters tr[data-message='{message_id}'] .requeue", confirm=True)
    assert browser.text("#notice") == (
        f"Requeued message {message_id}: it is back on queue 'fragile'."
    )
    # Back on its queue: the worker consuming it runs it, and it is a dead letter no more.
    wait_until(lambda: failing.ran["fragile 1"] == 1, timeout=20, message="fragile 1 to run")
    assert failing.dead_letters("fragile") == []
    browser.open("/dead-letters")
    assert browser.find_all("#no-dead-letters")


def test_purge_a_queue_s_dead_letters_after_confirming(
    browser: Browser, failing: Failing, keys: Keys
) -> None:
    for n in (1, 2):
        failing.fragile.send(n)
    failing.brittle.send(3)
    failing.wait_for_dead_letters("fragile", 2)
    failing.wait_for_dead_letters("brittle", 1)
    browser.open("/dead-letters")
    browser.sign_in(keys("admin"))
    counts = {
        row.get_attribute("data-queue"): row.find_element("css selector", "td.num").text
        for row in browser.find_all("#dead-letter-queues tbody tr")
    }
    assert counts == {"brittle": "1", "fragile": "2"}

    # Purge asks first, on a page of its own; leaving it changes nothing.
    browser.click_through("#dead-letter-queues tr[data-queue='fragile'] .purge")
    assert browser.path() == "/dead-letters/purge?queue=fragile"
    assert browser.text("#purge-warning").startswith("2 dead letters of queue fragile")
    browser.click_through("#keep")
    assert len(failing.dead_letters("fragile")) == 2

    browser.click_through("#dead-letter-queues tr[data-queue='fragile'] .purge")
    browser.click_through("#purge")
    assert browser.text("#notice") == "Purged 2 dead letters of queue 'fragile'."
    assert failing.dead_letters("fragile") == []
    assert len(failing.dead_letters("brittle")) == 1  # another queue's are kept
    assert [
        row.get_attribute("data-queue") for row in browser.find_all("#dead-letter-queues tbody tr")
    ] == ["brittle"]

    browser.click_through("#dead-letter-queues tr[data-queue='brittle'] .purge")
    browser.click_through("#purge")
    assert failing.dead_letters("brittle") == []
    assert browser.find_all("#no-dead-letters")
    assert not browser.find_all("#dead-letter-queues")


def test_the_queues_page_shows_depths_and_live_workers(
    chrome: Any,
    broker: PostgresBroker,
    actors: Any,
    keys: Keys,
    start_worker: Callable[..., dramatiq.Worker],
) -> None:
    @dramatiq.actor(queue_name="backlog")
    def backlog(n: int) -> None:
        pass

    # A worker that consumes "default" only: the backlog stays where it is.
    start_worker(broker, threads=2, queues={"default"})
    for n in range(3):
        backlog.send(n)
    backlog.send_with_options(args=(9,), delay=3_600_000)
    wait_until(
        lambda: any(q.queue_name == "backlog" and q.queued == 3 for q in broker.queue_stats()),
        message="three messages queued on backlog",
    )
    with serve(dashboard_app(broker)) as url:
        forget_cookies(chrome)
        browser = Browser(chrome, url)
        browser.open("/")
        browser.sign_in(keys("read"))
        browser.click_through("header nav a[href='/queues']")
        assert browser.path() == "/queues"
        row = browser.find("#queues tr[data-queue='backlog']")
        cells = {
            cell.get_attribute("data-state"): cell.text
            for cell in row.find_elements("css selector", "td")
        }
        assert (cells["queued"], cells["delayed"], cells["parked"], cells["claimed"]) == (
            "3",
            "1",
            "0",
            "0",
        )
        assert cells["oldest"] != "\N{EN DASH}"  # how long the oldest of the three has waited
        assert cells["dead_letters"] == "0"
        workers = [w.get_attribute("data-worker") for w in browser.find_all("#workers tbody tr")]
        assert str(broker.worker_id) in workers


def test_pause_and_resume_an_execution_and_an_actor(
    browser: Browser, actors: dict[str, zart.DurableActor], keys: Keys
) -> None:
    start(actors["approval"], 7, execution_id="held-7", status="waiting")
    browser.open("/executions/held-7")
    browser.sign_in(keys("admin"))
    browser.click_through("#pause", confirm=True)
    assert browser.text("#notice").startswith("Paused")
    assert zart.get_execution("held-7").paused_at is not None
    # The event is stored, but the paused execution does not take it.
    zart.send_event("held-7", "decision", {"verdict": "yes"})
    browser.click_through("#resume")
    assert browser.text("#notice").startswith("Resumed")
    wait_for_status("held-7", "completed")

    browser.open("/queues")
    browser.click_through("#actors tr[data-actor='greet'] [data-action='pause']", confirm=True)
    assert browser.text("#notice").startswith("Paused greet")
    assert [p.actor_name for p in zart.paused_actors()] == ["greet"]
    zart.start(actors["greet"], "again", execution_id="greet-held")
    browser.open("/executions/greet-held")
    assert "is paused" in browser.text("#actor-paused")
    browser.open("/queues")
    browser.click_through("#actors tr[data-actor='greet'] [data-action='resume']")
    assert browser.text("#notice").startswith("Resumed greet")
    wait_for_status("greet-held", "completed")


def test_rerun_a_completed_execution_from_a_step(
    browser: Browser, actors: dict[str, zart.DurableActor], keys: Keys
) -> None:
    ran = Effects()

    @zart.durable(actor_name="three_steps")
    def three_steps() -> list[str]:
        return [zart.step(name, lambda n=name: ran(n) or n) for name in ("a", "b", "c")]

    start(three_steps, execution_id="abc-1", status="completed")
    start(actors["nap"], execution_id="nap-rerun", status="sleeping")
    browser.open("/executions/nap-rerun")
    browser.sign_in(keys("admin"))
    assert browser.find_all("#steps tr[data-step='sleep:long']")
    assert not browser.find_all("#steps .rerun")  # not ended: nothing to rerun

    browser.open("/executions/abc-1")
    assert len(browser.find_all("#steps .rerun")) == 3
    browser.click_through("#steps tr[data-step='step:b'] .rerun", confirm=True)
    assert browser.text("#notice").startswith("Rerunning from step 'step:b'")
    wait_until(
        lambda: ran["c"] == 2 and status_of("abc-1") == "completed",
        timeout=20,
        message=lambda: f"abc-1 to complete again (it is {status_of('abc-1')})",
    )
    assert [ran[n] for n in ("a", "b", "c")] == [1, 2, 2]  # a kept its result
    browser.reload_until("#execution-status", "completed")
    assert browser.text("#result") == '["a", "b", "c"]'


# --- Through the test client ---------------------------------------------------------------------


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None, html
    return match[1]


@pytest.fixture
def client(broker: dramatiq.Broker, actors: Any) -> Iterator[TestClient]:
    with TestClient(dashboard_app(broker), follow_redirects=False) as test_client:
        yield test_client


def sign_in(client: TestClient, token: str, prefix: str = "") -> Any:
    form = client.get(f"{prefix}/login")
    return client.post(
        f"{prefix}/login", data={"key": token, "csrf": csrf_of(form.text), "next": f"{prefix}/"}
    )


def test_the_session_cookie_is_signed_http_only_strict_and_holds_no_key(
    client: TestClient, keys: Keys
) -> None:
    token = keys("read")
    signed_in = sign_in(client, token)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert {"HttpOnly", "SameSite=strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
    secret = token.split("_", 2)[2]
    assert secret not in cookie
    page = client.get("/")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"

    # A cookie altered by hand is no session: back to signing in.
    client.cookies.set(COOKIE, client.cookies[COOKIE][:-2] + "xx")
    assert client.get("/").headers["location"] == "/login?next=%2F"


def test_forms_need_the_session_csrf_token(
    client: TestClient, keys: Keys, actors: dict[str, zart.DurableActor], worker: Any
) -> None:
    start(actors["nap"], execution_id="nap-csrf", status="sleeping")
    with TestClient(client.app, follow_redirects=False) as other:
        sign_in(other, keys("admin"))
        foreign = csrf_of(other.get("/executions/nap-csrf").text)
    sign_in(client, keys("admin"))
    page = client.get("/executions/nap-csrf")
    for data in ({}, {"csrf": ""}, {"csrf": foreign}):
        refused = client.post("/executions/nap-csrf/cancel", data=data)
        assert refused.status_code == 403, data
        assert "did not come from your current dashboard session" in refused.text
    assert status_of("nap-csrf") == "sleeping"
    done = client.post("/executions/nap-csrf/cancel", data={"csrf": csrf_of(page.text)})
    assert (done.status_code, done.headers["location"]) == (303, "/executions/nap-csrf")
    assert status_of("nap-csrf") == "cancelled"
    # The sign-in form itself carries a token.
    assert client.post("/login", data={"key": keys("read")}).status_code == 403


def test_bad_filters_and_unknown_executions_are_pages_not_errors(
    client: TestClient, keys: Keys
) -> None:
    sign_in(client, keys("read"))
    for query, problem in (
        ("status=bogus", "status 'bogus' is not one of"),
        ("created_after=yesterday", "'yesterday' is not a date and time"),
        ("after=garbage", "is not a page cursor"),
    ):
        page = client.get(f"/executions?{query}")
        assert page.status_code == 422, query
        assert page.headers["content-type"].startswith("text/html")
        assert problem in html.unescape(page.text)
    missing = client.get("/executions/no-such-thing")
    assert missing.status_code == 404
    assert "No execution has id 'no-such-thing'" in html.unescape(missing.text)
    assert client.get("/executions?refresh=oops&limit=7").status_code == 200


def test_the_api_answers_json_and_takes_no_cookie_for_a_key(client: TestClient, keys: Keys) -> None:
    sign_in(client, keys("admin"))
    assert client.get("/").status_code == 200
    api = client.get("/api/v1/executions")
    assert api.status_code == 401
    assert api.json()["error"]["code"] == "unauthenticated"
    assert client.get("/no/such/route").json()["error"]["code"] == "not_found"
    assert "/executions" not in client.get("/openapi.json").json()["paths"]


def test_groups_children_and_the_inbox_on_the_execution_page(
    client: TestClient, keys: Keys, actors: dict[str, zart.DurableActor], worker: Any
) -> None:
    zart.start(actors["family"], 3, execution_id="fam-1").result(timeout=20)
    sign_in(client, keys("read"))
    page = client.get("/executions/fam-1").text
    assert 'data-group="group:doubles"' in page
    assert page.count('data-branch="') == 3
    child = "fam-1/child:greet"
    assert f'<a href="/executions/fam-1%2Fchild%3Agreet">{child}</a>' in page
    child_page = client.get("/executions/fam-1%2Fchild%3Agreet")
    assert child_page.status_code == 200
    assert 'id="parent-link"' in child_page.text


def test_mounted_under_a_prefix(broker: dramatiq.Broker, actors: Any, keys: Keys) -> None:
    outer = FastAPI()
    outer.mount("/zart", dashboard_app(broker))
    with TestClient(outer, follow_redirects=False) as client:
        assert client.get("/zart/").headers["location"] == "/zart/login?next=%2Fzart%2F"
        signed_in = sign_in(client, keys("read"), prefix="/zart")
        assert signed_in.headers["location"] == "/zart/"
        assert "Path=/zart" in signed_in.headers["set-cookie"]
        page = client.get("/zart/")
        assert 'href="/zart/executions"' in page.text
        assert 'href="/zart/static/dashboard.css"' in page.text
        assert client.get("/zart/static/dashboard.css").status_code == 200


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("started", "executions_created"),
        ("ended", "executions_finished"),
        ("oldest", "executions_active"),
        ("overdue", "executions_overdue"),
        ("unclaimed", "executions_active"),
        ("orphaned", "executions_active"),
        ("run_holder", "executions_pkey"),
    ],
)
def test_dashboard_queries_read_an_index_not_the_whole_table(
    broker: dramatiq.Broker, db: psycopg.Connection, query: str, index: str
) -> None:
    reads = Reads(middleware_for(broker).store, Thresholds())
    now = datetime.now(UTC)
    params = {
        "now": now,
        "since": now - timedelta(hours=1),
        "bucket_s": 300.0,
        "before": now - timedelta(seconds=30),
        "cap": 1000,
        "limit": 10,
        "id": "x",
    }
    plan = executed_plan(db, reads.queries[query], params, generic=True)
    scans = plan.scans()
    assert ("Seq Scan", None) not in scans, scans
    assert index in {node.get("Index Name") for node in plan.nodes()}, scans


def test_event_form_mistakes_and_refused_actions_come_back_as_notices(
    client: TestClient, keys: Keys, actors: dict[str, zart.DurableActor], worker: Any
) -> None:
    start(actors["approval"], 1, execution_id="order-1", status="waiting")
    start(actors["greet"], "eve", execution_id="greet-eve", status="completed")
    sign_in(client, keys("admin"))
    token = csrf_of(client.get("/executions/order-1").text)

    bad = client.post(
        "/executions/order-1/events",
        data={"csrf": token, "name": "decision", "payload": "{verdict: yes}"},
    )
    assert bad.status_code == 422
    text = html.unescape(bad.text)
    assert "The payload is not valid JSON" in text
    assert "{verdict: yes}</textarea>" in text  # kept, to be corrected
    nameless = client.post("/executions/order-1/events", data={"csrf": token, "payload": "1"})
    assert nameless.status_code == 422 and "An event needs a name." in nameless.text
    assert status_of("order-1") == "waiting"

    for action, data, notice in (
        ("events", {"name": "late", "payload": "{}"}, "already ended completed"),
        ("retry", {}, "only failed, cancelled or timed-out executions can be retried"),
        ("cancel", {}, "Not cancelled: it had already ended completed."),
        ("rerun", {"from_step": "nope"}, "has no step 'nope' in its journal"),
    ):
        done = client.post(f"/executions/greet-eve/{action}", data={"csrf": token, **data})
        assert done.status_code == 303, action
        shown = html.unescape(client.get(done.headers["location"]).text)
        assert notice in shown, (action, shown)
    # Not ended: nothing to rerun (the page offers no button; a post is told why).
    early = client.post(
        "/executions/order-1/rerun", data={"csrf": token, "from_step": "step:reserve"}
    )
    shown = html.unescape(client.get(early.headers["location"]).text)
    assert "cannot rerun execution 'order-1': it is waiting" in shown
    assert status_of("order-1") == "waiting"

    sent = client.post(
        "/executions/order-1/events",
        data={"csrf": token, "name": "decision", "payload": '{"verdict": "ok"}', "key": "k1"},
    )
    assert sent.status_code == 303
    again = client.post(
        "/executions/order-1/events",
        data={"csrf": token, "name": "decision", "payload": '{"verdict": "ok"}', "key": "k1"},
    )
    shown = html.unescape(client.get(again.headers["location"]).text)
    assert "An event with key 'k1' was delivered before: not sent again." in shown
    wait_for_status("order-1", "completed")


def test_signing_out_needs_the_form_token(client: TestClient, keys: Keys) -> None:
    sign_in(client, keys("read"))
    token = csrf_of(client.get("/").text)
    client.post("/logout", data={"csrf": "forged"})
    assert client.get("/").status_code == 200  # still signed in
    out = client.post("/logout", data={"csrf": token})
    assert out.headers["location"] == "/login"
    assert "Signed out." in client.get("/login").text
    assert client.get("/").headers["location"] == "/login?next=%2F"


def test_the_dashboard_can_be_turned_off(broker: dramatiq.Broker) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(broker, dashboard=False)) as api:
        home = api.get("/")
    assert home.status_code == 404
    assert home.json()["error"]["code"] == "not_found"


def test_a_read_only_key_sees_queues_and_dead_letters_but_cannot_act(
    client: TestClient,
    keys: Keys,
    failing: Failing,
    actors: dict[str, zart.DurableActor],
    worker: Any,
) -> None:
    ran = Effects()

    @zart.durable(actor_name="counted")
    def counted() -> str:
        return str(zart.step("count", lambda: ran("count") or "counted"))

    start(counted, execution_id="counted-1", status="completed")
    message_id = failing.fragile.send(1).message_id
    (letter,) = failing.wait_for_dead_letters("fragile", 1)
    sign_in(client, keys("read"))

    dead = client.get("/dead-letters")
    assert dead.status_code == 200
    assert f'data-message="{message_id}"' in dead.text
    assert re.search(r'class="small requeue" disabled', dead.text)
    assert re.search(r'class="danger small purge" disabled', dead.text)
    assert client.get("/queues").status_code == 200
    confirm = client.get("/dead-letters/purge?queue=fragile")
    assert confirm.status_code == 200
    assert re.search(r'id="purge" disabled', confirm.text)
    execution = client.get("/executions/counted-1")
    assert re.search(r'class="small rerun" disabled', execution.text)

    token = csrf_of(dead.text)
    as_of = re.search(r'name="as_of" value="([^"]+)"', confirm.text)
    assert as_of is not None
    for path, data in (
        ("/dead-letters/requeue", {"id": str(letter.id)}),
        ("/dead-letters/purge", {"queue": "fragile", "as_of": as_of[1]}),
        ("/executions/counted-1/rerun", {"from_step": "step:count"}),
    ):
        refused = client.post(path, data={"csrf": token, **data})
        assert refused.status_code == 403, path
        assert "lacks the &#39;admin&#39; scope" in refused.text, path
    assert [d.id for d in failing.dead_letters("fragile")] == [letter.id]
    assert status_of("counted-1") == "completed" and ran["count"] == 1

    # With the admin scope the same forms act, but still only with the session's token.
    with TestClient(client.app, follow_redirects=False) as admin:
        sign_in(admin, keys("admin"))
        for data in ({}, {"csrf": token}):  # none, and the reader's session's
            refused = admin.post("/dead-letters/requeue", data={"id": str(letter.id), **data})
            assert refused.status_code == 403
            assert "did not come from your current dashboard session" in refused.text
    assert len(failing.dead_letters("fragile")) == 1


def test_the_purge_deletes_only_the_dead_letters_of_before_its_confirmation(
    client: TestClient,
    keys: Keys,
    failing: Failing,
    db: psycopg.Connection,
    schema: str,
    worker: Any,
) -> None:
    failing.fragile.send(1)
    (old,) = failing.wait_for_dead_letters("fragile", 1)
    scalar(
        db,
        schema,
        "UPDATE {s}.dead_letters SET dead_at = dead_at - interval '1 hour' WHERE id = %s "
        "RETURNING id",
        old.id,
    )
    failing.fragile.send(2)
    failing.wait_for_dead_letters("fragile", 2)
    sign_in(client, keys("admin"))
    confirm = client.get("/dead-letters/purge?queue=fragile").text
    assert "2 dead letters of queue" in confirm
    token = csrf_of(confirm)

    # A form without its moment is refused: it did not come from the confirmation page.
    refused = client.post("/dead-letters/purge", data={"csrf": token, "queue": "fragile"})
    assert "Not purged" in html.unescape(client.get(refused.headers["location"]).text)
    assert len(failing.dead_letters("fragile")) == 2

    # Confirmed as of half an hour ago: the letter dead an hour ago goes, the new one stays.
    as_of = (scalar(db, schema, "SELECT now()") - timedelta(minutes=30)).isoformat()
    done = client.post(
        "/dead-letters/purge", data={"csrf": token, "queue": "fragile", "as_of": as_of}
    )
    assert done.status_code == 303
    shown = html.unescape(client.get(done.headers["location"]).text)
    assert "Purged 1 dead letter of queue 'fragile'." in shown
    (kept,) = failing.dead_letters("fragile")
    assert kept.id != old.id


def test_queues_and_dead_letters_say_when_the_broker_is_not_broker_pg(
    database_url: str, schema: str
) -> None:
    from dramatiq.brokers.stub import StubBroker

    stub = StubBroker()
    stub.add_middleware(
        zart.DurableMiddleware(database_url, schema=schema), before=type(stub.middleware[0])
    )
    stub.emit_after("process_boot")

    @zart.durable(broker=stub, actor_name="idle")
    def idle() -> None:
        pass

    try:
        with TestClient(create_app(stub, auth=False), follow_redirects=False) as client:
            for path in ("/queues", "/dead-letters"):
                page = client.get(path)
                assert page.status_code == 200, path
                assert (
                    "Queues and dead letters are kept by broker_pg; this app&#39;s broker is "
                    "StubBroker" in page.text
                ), path
            # A form of this session, from a page that has one: a pending execution's.
            zart.start(idle, execution_id="idle-1")
            token = csrf_of(client.get("/executions/idle-1").text)
            requeue = client.post("/dead-letters/requeue", data={"csrf": token, "id": "1"})
            assert requeue.status_code == 303
            assert "StubBroker" in client.get(requeue.headers["location"]).text
    finally:
        stub.close()
