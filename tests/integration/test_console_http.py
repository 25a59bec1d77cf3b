"""The web console over real HTTP on loopback (issue 17): authorisation on every endpoint, log-in
and its rate limit, cookie flags, CSRF refused, queue actions logged with the admin's name,
paging, trace by Message-ID, the tools, and the configuration shown with secrets masked.

A real mailgate runs in process (tests/support/mailgate_server.py) with the console on; mail
comes in over SMTP (smtplib) for a hosted domain whose next hop refuses connections, so every
message stays in the queue, deferred.
"""

from __future__ import annotations

import json
import re
import smtplib
import time
from pathlib import Path

import pytest

from mailgate.auth.store import FileUserStore
from mailgate.observe import jsonlog
from mailgate.queue.store import MessageState, QueueFilter
from tests.conftest import free_port
from tests.support.console_client import ConsoleClient, hidden
from tests.support.console_server import CHEAP, add_admin, console_config
from tests.support.mailgate_server import InProcessMailgate

pytestmark = pytest.mark.timeout(120)

ADMIN, PASSWORD = "root@example.org", "correct horse"


# A scanner URL with a password in it: the configuration page must mask it.
SPAM = '[spam]\nrspamd_url = "http://scanner:s3cret-pass@127.0.0.1:11333"\nfail_open = true\n'


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    add_admin(tmp_path / "users", ADMIN, PASSWORD).add("smtpuser@example.org", PASSWORD)
    console_port, smtp_port = free_port(), free_port()
    with InProcessMailgate(console_config(tmp_path, console_port, smtp_port, SPAM)) as mg:
        mg.console_port, mg.smtp_port, mg.tmp = console_port, smtp_port, tmp_path
        yield mg


def logged_in(mg) -> ConsoleClient:  # type: ignore[no-untyped-def]
    client = ConsoleClient(mg.console_port)
    answer = client.log_in(ADMIN, PASSWORD)
    assert answer.status == 303 and answer.location == "/", answer.body
    return client


def send(mg, message_id: str, sender: str = "a@example.net", to: str = "b@hosted.test") -> None:  # type: ignore[no-untyped-def]
    with smtplib.SMTP("127.0.0.1", mg.smtp_port, timeout=30) as smtp:
        smtp.sendmail(sender, [to], f"Message-ID: {message_id}\r\nSubject: hi\r\n\r\nhello\r\n")


def queued(mg, **query) -> list:  # type: ignore[no-untyped-def]
    return mg.call(mg.app.store.list(QueueFilter(**query)))


def json_records(mg) -> list[dict]:  # type: ignore[no-untyped-def]
    mg.app.log.flush()
    return list(jsonlog.read_records(jsonlog.log_files(mg.tmp / "log" / "transactions.jsonl")))


def routes(mg) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Every route the console serves, placeholders filled: new pages are covered by themselves."""
    found = []
    for route in mg.app.console.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or info.get("prefix", "") + "/console.css"
        found.append((route.method, path.replace("{queue_id}", "ABC123").replace("{action}", "hold")))
    return found


def test_every_endpoint_needs_an_admin_session(server) -> None:  # type: ignore[no-untyped-def]
    client = ConsoleClient(server.console_port)
    checked = 0
    for method, path in routes(server):
        if path in ("/login", "/favicon.ico") or path.startswith("/static/") or method == "HEAD":
            continue
        answer = client.request(method, path, {} if method == "POST" else None)
        if method == "GET":
            assert answer.status == 303 and answer.location.startswith("/login?next="), (method, path, answer.status)
        else:
            assert answer.status == 401, (method, path, answer.status)
        checked += 1
    assert checked >= 12
    # The log-in page and the static files are public, with the security headers on every answer.
    page = client.get("/login")
    assert page.status == 200 and client.get("/static/console.css").status == 200
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"


def test_log_in_sets_a_strict_cookie_and_refuses_others(server) -> None:  # type: ignore[no-untyped-def]
    plain_user = ConsoleClient(server.console_port)
    refused = plain_user.log_in("smtpuser@example.org", PASSWORD)  # a right password but no admin role
    assert refused.status == 401 and "not an admin" in refused.body
    assert ConsoleClient(server.console_port).log_in(ADMIN, "wrong").status == 401
    client = ConsoleClient(server.console_port)
    answer = client.log_in(ADMIN, PASSWORD)
    (cookie,) = [line for line in answer.set_cookies if line.startswith("mailgate_session=")]
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite=strict"} <= flags, cookie
    assert client.get("/").status == 200 and client.get("/queue").status == 200
    # A log-in POST without the form's token is refused (log-in CSRF).
    assert ConsoleClient(server.console_port).post("/login", {"user": ADMIN, "password": PASSWORD}).status == 403
    # An open redirect after log-in is refused: next= only names our own paths.
    other = ConsoleClient(server.console_port)
    form = other.get("/login")
    answer = other.post("/login", {"user": ADMIN, "password": PASSWORD, "next": "//evil.example/x",
                                   "login_token": hidden(form.body, "login_token")})
    assert answer.status == 303 and answer.location == "/"


def test_log_ins_are_rate_limited_per_client(server) -> None:  # type: ignore[no-untyped-def]
    for _ in range(5):
        assert ConsoleClient(server.console_port).log_in(ADMIN, "guess").status == 401
    locked = ConsoleClient(server.console_port).log_in(ADMIN, PASSWORD)  # even the right password now
    assert locked.status == 429 and "Too many failed log-ins" in locked.body


def test_log_out_and_a_lost_admin_role_end_the_session(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(server)
    assert client.post("/logout", {"csrf": client.csrf()}).status == 303
    assert client.get("/queue").status == 303
    client = logged_in(server)
    users = FileUserStore(tmp_path / "users", hasher=CHEAP)
    users.delete(ADMIN)
    users.add(ADMIN, PASSWORD)  # the same name, no longer an admin
    assert client.get("/queue").status == 303


def test_actions_refuse_a_missing_or_wrong_csrf_token_and_log_the_admin(server) -> None:  # type: ignore[no-untyped-def]
    send(server, "<csrf-1@example.net>")
    (row,) = queued(server)
    client = logged_in(server)
    target = f"/queue/{row.queue_id}/hold"
    assert client.get(target).status == 200  # the confirmation page
    assert client.post(target, {}).status == 403
    assert client.post(target, {"csrf": "forged"}).status == 403
    good = client.csrf()
    assert client.post(target, {"csrf": good}, headers={"Origin": "http://evil.example"}).status == 403
    assert queued(server, state=MessageState.HELD) == []  # nothing happened
    answer = client.post(target, {"csrf": good, "reason": "looks odd"})
    assert answer.status == 303 and answer.location.endswith("?done=hold")
    (held,) = queued(server, state=MessageState.HELD)
    assert held.hold_reason == "looks odd"
    assert client.post(f"/queue/{row.queue_id}/release", {"csrf": good}).status == 303
    assert queued(server, state=MessageState.HELD) == []
    assert client.post(f"/queue/{row.queue_id}/retry", {"csrf": good}).status == 303
    actions = [r for r in json_records(server) if r["event"] == "admin.action"]
    assert [(a["admin"], a["action"], a["queue_ids"]) for a in actions] == [
        (ADMIN, "hold", [row.queue_id]), (ADMIN, "release", [row.queue_id]), (ADMIN, "retry", [row.queue_id])]
    assert actions[0]["reason"] == "looks odd" and actions[0]["client_ip"] == "127.0.0.1"


def test_delete_and_bounce_remove_the_message(server) -> None:  # type: ignore[no-untyped-def]
    send(server, "<del@example.net>")
    send(server, "<bounce@example.net>")
    first, second = queued(server)
    client = logged_in(server)
    csrf = client.csrf()
    assert client.post(f"/queue/{first.queue_id}/delete", {"csrf": csrf}).location.startswith("/queue?done=delete")
    assert client.post(f"/queue/{second.queue_id}/bounce", {"csrf": csrf}).status == 303
    remaining = [row.queue_id for row in queued(server)]
    assert first.queue_id not in remaining and second.queue_id not in remaining
    assert any(r["event"] == "bounce" and r["queue_id"] == second.queue_id for r in json_records(server))
    assert client.get(f"/queue/{first.queue_id}").status == 404
    assert client.get("/queue/not%20valid").status == 404
    assert client.get(f"/queue/{first.queue_id}/explode").status == 404


def test_queue_list_filters_and_pages(server) -> None:  # type: ignore[no-untyped-def]
    for number in range(4):
        send(server, f"<page-{number}@example.net>", sender=f"s{number}@example.net", to=f"r{number}@hosted.test")
    client = logged_in(server)
    page = client.get("/queue?recipient=r2@")
    assert page.body.count('data-queue-id="') == 1 and "r2@hosted.test" in page.body
    assert client.get("/queue?state=held").body.count('data-queue-id="') == 0
    assert "age: must be a duration" in client.get("/queue?older=soon").body
    import mailgate.console.queue_pages as queue_pages
    size, queue_pages.PAGE_SIZE = queue_pages.PAGE_SIZE, 3
    try:
        first = client.get("/queue")
        next_link = re.search(r'id="next-page" href="([^"]+)"', first.body).group(1).replace("&amp;", "&")
        second = client.get(next_link)
    finally:
        queue_pages.PAGE_SIZE = size
    ids = re.findall(r'data-queue-id="([^"]+)"', first.body) + re.findall(r'data-queue-id="([^"]+)"', second.body)
    assert ids == [row.queue_id for row in queued(server)] and len(set(ids)) == 4


def test_message_view_trace_and_dashboard_show_the_message(server) -> None:  # type: ignore[no-untyped-def]
    send(server, "<story-7@example.net>", sender="story@example.net")
    (row,) = queued(server)
    deadline = time.monotonic() + 30  # the first attempt fails at once: the next hop refuses
    while not any(r["event"] == "delivery.attempt" for r in json_records(server)):
        assert time.monotonic() < deadline, "no delivery attempt logged"
        time.sleep(0.1)
    client = logged_in(server)
    view = client.get(f"/queue/{row.queue_id}")
    assert "story@example.net" in view.body and "Message-ID: &lt;story-7@example.net&gt;" in view.body
    assert re.search(r'id="attempts".*deferred', view.body, re.S) and "hosted.test" in view.body
    assert "accepted by rule" in view.body
    trace = client.get("/trace?q=%3Cstory-7%40example.net%3E&kind=message_id")
    assert f'data-queue-id="{row.queue_id}"' in trace.body
    for event in ("connection.opened", "transaction.accepted", "delivery.attempt", "connection.closed"):
        assert f">{event}<" in trace.body, event
    assert "No message found" in client.get("/trace?q=%3Cnobody%40x%3E&kind=message_id").body
    assert client.get("/trace?q=x&kind=bogus").status == 400
    live = client.get("/dashboard/live").body
    assert re.search(r'id="count-accepted">1<', live) and re.search(r'id="count-deferred">[1-9]', live)
    assert re.search(r'<circle class="point" data-series="accepted" data-value="1"', live)
    assert 'id="depth-deferred">1<' in live or 'id="depth-queued">1<' in live or 'id="depth-active">1<' in live


def test_tools_give_the_commands_output_and_config_is_masked(server) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(server)
    csrf = client.csrf("/tools")
    assert client.post("/tools/relay-test", {"server": "127.0.0.1:1"}).status == 403  # no token
    relay = client.post("/tools/relay-test", {"csrf": csrf, "server": f"127.0.0.1:{server.smtp_port}",
                                              "source": "127.0.0.2", "domain": "hosted.test"})
    assert relay.status == 200 and "verdict: CLOSED" in relay.body, relay.body[-2000:]
    explained = client.post("/tools/explain", {"csrf": csrf, "client": "203.0.113.5", "from": "a@example.org",
                                               "to": "b@example.com"})
    assert "RCPT TO:&lt;b@example.com&gt;" in explained.body and "REFUSED: 550 5.7.1" in explained.body
    bad = client.post("/tools/explain", {"csrf": csrf, "client": "not-an-ip", "to": "b@example.com"})
    assert bad.status == 400 and "--client not-an-ip" in bad.body
    assert client.post("/tools/mx", {"csrf": csrf, "domain": "bad domain!"}).status == 400
    config = client.get("/config").body
    assert "s3cret-pass" not in config and "http://***@127.0.0.1:11333" in config
    assert 'enabled = true' in config


def test_plain_http_is_refused_off_loopback_and_https_serves(tmp_path: Path) -> None:
    import trustme

    from mailgate.config.loader import ConfigError, load_text

    with pytest.raises(ConfigError, match=r"console.address: 192.0.2.1:8025 is not a loopback address"):
        load_text(console_config(tmp_path, 8025, 2525, SPAM).replace("127.0.0.1:8025", "192.0.2.1:8025"))
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    for path in ("key.pem", "cert.pem"):
        (tmp_path / path).chmod(0o600)
    add_admin(tmp_path / "users", ADMIN, PASSWORD)
    port = free_port()
    extra = f'cert_file = "{tmp_path}/cert.pem"\nkey_file = "{tmp_path}/key.pem"\n'
    with InProcessMailgate(console_config(tmp_path, port, free_port(), SPAM, console_extra=extra)):
        context = __import__("ssl").create_default_context()
        authority.configure_trust(context)
        client = ConsoleClient(port, tls=context)
        answer = client.log_in(ADMIN, PASSWORD)
        assert answer.status == 303 and answer.headers["Strict-Transport-Security"].startswith("max-age=")
        assert client.get("/queue").status == 200
