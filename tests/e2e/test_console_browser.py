"""The web console in a real headless Chromium (issue 17), driven by Selenium through Debian's
chromedriver (named by path: Selenium Manager never downloads anything).

One browser session walks what an administrator does: logs in (the session cookie is Secure,
and Chromium keeps it on http://127.0.0.1, a secure context); watches a message sent over SMTP
appear in the dashboard's counters, which refresh by themselves, and in the queue (its next hop
refuses connections, so it stays deferred); holds and releases it with the confirmation step;
traces it by Message-ID; runs relay-test from the form; and checks that the charts are SVG with
data points. It takes a screenshot at each step, into the test's temporary directory; with
MAILGATE_DOCS_SCREENSHOTS=1 it writes them over the ones docs/console.md and the README show
(docs/img/console-*.png), so a plain test run never changes files in the checkout.
"""

from __future__ import annotations

import os
import smtplib
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port, require_capabilities
from tests.support import peers
from tests.support.console_server import add_admin, console_config
from tests.support.mailgate_server import InProcessMailgate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOTS = ROOT / "docs" / "img"
ADMIN, PASSWORD = "admin", "browser-test-password"
WAIT = 30  # seconds for anything the page shows after an action (the dashboard refreshes every 5)


@pytest.fixture
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    require_capabilities(peers.BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = peers.CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1366,900", "--lang=en-GB"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=peers.CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def mailgate(tmp_path: Path):  # type: ignore[no-untyped-def]
    add_admin(tmp_path / "users", ADMIN, PASSWORD)
    console_port, smtp_port = free_port(), free_port()
    config = console_config(tmp_path, console_port, smtp_port, hostname="mx.demo.test", domain="demo.test")
    with InProcessMailgate(config) as mg:
        mg.console_url, mg.smtp_port = f"http://127.0.0.1:{console_port}", smtp_port
        yield mg


def send(port: int, message_id: str, sender: str, recipient: str, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.sendmail(sender, [recipient], f"Message-ID: {message_id}\r\nSubject: console demo\r\n\r\nhello\r\n")


def refused(port: int, source: str) -> None:
    """An outside client trying to relay: 550 at RCPT, counted as refused."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("spammer@example.net", ["victim@example.com"], "Subject: x\r\n\r\nx\r\n")


def test_an_admin_logs_in_watches_holds_releases_traces_and_tests(  # type: ignore[no-untyped-def]
    browser, mailgate, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import Select, WebDriverWait

    started = time.monotonic()
    wait = WebDriverWait(browser, WAIT)

    def text_of(css: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, css).text

    screenshots = DOCS_SCREENSHOTS if os.environ.get("MAILGATE_DOCS_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)

    def screenshot(name: str) -> None:
        assert browser.save_screenshot(str(screenshots / f"console-{name}.png"))

    # Log in: a page behind the guard sends us to the log-in form and back.
    browser.get(mailgate.console_url + "/queue")
    assert "/login?next=" in browser.current_url
    screenshot("login")
    browser.find_element(By.ID, "user").send_keys(ADMIN)
    browser.find_element(By.ID, "password").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    assert "Wrong name or password" in wait.until(shown.presence_of_element_located((By.ID, "login-error"))).text
    browser.find_element(By.ID, "user").send_keys(ADMIN)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait.until(shown.url_to_be(mailgate.console_url + "/queue"))
    assert text_of("#who") == ADMIN
    cookie = browser.get_cookie("mailgate_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"  # kept on loopback http

    # The dashboard counts a message sent over SMTP by itself (no reload by us).
    browser.get(mailgate.console_url + "/")
    assert text_of("#count-accepted") == "0"
    message_id = f"<{uuid.uuid4().hex}@example.org>"
    send(mailgate.smtp_port, message_id, "alice@example.org", "bob@demo.test")
    for number in range(3):
        send(mailgate.smtp_port, f"<extra-{number}-{uuid.uuid4().hex}@example.org>", f"user{number}@example.org",
             "team@demo.test")
    for source in ("127.0.0.5", "127.0.0.6"):
        refused(mailgate.smtp_port, source)
    wait.until(lambda _: text_of("#count-accepted") == "4")
    wait.until(lambda _: text_of("#count-refused") == "2")
    wait.until(lambda _: int(text_of("#count-deferred")) >= 1)  # the next hop refuses: deferred
    points = browser.find_elements(By.CSS_SELECTOR, "svg#chart-minutes circle.point[data-series='accepted']")
    assert points and sum(int(p.get_attribute("data-value")) for p in points) == 4
    assert browser.find_elements(By.CSS_SELECTOR, "svg#chart-hours polyline.series")
    assert browser.find_element(By.CSS_SELECTOR, "svg#chart-minutes").size["height"] > 100
    screenshot("dashboard")

    # The queue lists it; its page shows the envelope and the attempt.
    browser.get(mailgate.console_url + "/queue?sender=alice")
    rows = browser.find_elements(By.CSS_SELECTOR, "#queue-list tr[data-queue-id]")
    assert len(rows) == 1
    queue_id = rows[0].get_attribute("data-queue-id")
    browser.get(mailgate.console_url + "/queue")
    screenshot("queue")
    browser.find_element(By.LINK_TEXT, queue_id).click()
    wait.until(lambda _: "Delivery attempts" in browser.page_source)
    assert "alice@example.org" in text_of("#envelope")

    # Hold, with the confirmation step, then release.
    browser.find_element(By.ID, "action-hold").click()
    assert "Put the message on hold" in browser.page_source
    browser.find_element(By.NAME, "reason").send_keys("checking with alice")
    browser.find_element(By.ID, "confirm").click()
    wait.until(lambda _: "held" in text_of("#message-state"))
    assert "checking with alice" in text_of("#message-state")
    screenshot("message")
    browser.find_element(By.ID, "action-release").click()
    browser.find_element(By.ID, "confirm").click()
    wait.until(lambda _: text_of("#message-state") == "in queue")

    # Trace it by its Message-ID: the whole story, the admin's actions included.
    browser.get(mailgate.console_url + "/trace")
    browser.find_element(By.ID, "trace-query").send_keys(message_id)
    Select(browser.find_element(By.ID, "trace-kind")).select_by_value("message_id")
    browser.find_element(By.ID, "trace-search").click()
    story = wait.until(shown.presence_of_element_located((By.CSS_SELECTOR, f"section.story[data-queue-id='{queue_id}']")))
    events = [row.find_elements(By.TAG_NAME, "td")[1].text
              for row in story.find_elements(By.CSS_SELECTOR, "tr.event")]
    for event in ("connection.opened", "transaction.accepted", "delivery.attempt", "admin.action"):
        assert event in events, events
    screenshot("trace")

    # relay-test from the form: the same report as the command; from an untrusted source, closed.
    browser.get(mailgate.console_url + "/tools")
    browser.find_element(By.ID, "relay-server").send_keys(f"127.0.0.1:{mailgate.smtp_port}")
    browser.find_element(By.ID, "relay-source").send_keys("127.0.0.2")
    browser.find_element(By.ID, "run-relay-test").click()
    output = WebDriverWait(browser, 90).until(shown.presence_of_element_located((By.ID, "tool-output")))
    assert f"relay test of 127.0.0.1:{mailgate.smtp_port}" in output.text and "verdict: CLOSED" in output.text
    screenshot("tools")
    assert time.monotonic() - started < 150
