"""The web console's pure parts (issue 17): sessions, the plain-HTTP rule, traffic counting,
charts, the message trace, masking in the configuration shown, and the Message-ID logged."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from mailgate.config.loader import ConfigError, is_loopback_host, load_text
from mailgate.config.show import config_text, mask_secrets
from mailgate.console.charts import line_chart, nice_maximum
from mailgate.console.server import _safe_next
from mailgate.console.sessions import Sessions, csrf_matches
from mailgate.console.trace import trace
from mailgate.console.traffic import LogFollower, Traffic
from mailgate.core.clock import FakeClock
from mailgate.observe import jsonlog
from mailgate.server.message_head import HeadBuilder

BASE = '[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n'


def test_a_session_ends_after_its_lifetime_or_when_idle() -> None:
    clock = FakeClock()
    sessions = Sessions(clock, lifetime=8 * 3600)
    token, session = sessions.open("root", "127.0.0.1")
    assert sessions.find(token) is session and sessions.idle_limit == 2 * 3600
    clock.advance(2 * 3600 - 1)
    assert sessions.find(token) is session  # used: the idle clock starts again
    for _ in range(3):
        clock.advance(2 * 3600 - 1)
        assert sessions.find(token) is session
    clock.advance(2 * 3600)  # past 8 hours since the log-in, however busy
    assert sessions.find(token) is None
    idle_token, _ = sessions.open("root", "127.0.0.1")
    clock.advance(2 * 3600)
    assert sessions.find(idle_token) is None
    assert sessions.find("") is None and sessions.find("forged") is None


def test_csrf_tokens_are_per_session_and_never_empty() -> None:
    sessions = Sessions(FakeClock(), 3600)
    _, one = sessions.open("a", "::1")
    _, two = sessions.open("a", "::1")
    assert one.csrf != two.csrf and len(one.csrf) >= 40
    assert csrf_matches(one, one.csrf) and not csrf_matches(one, two.csrf)
    assert not csrf_matches(one, "") and not csrf_matches(one, None)


@pytest.mark.parametrize("address", ["0.0.0.0:8025", "[::]:8025", "192.0.2.7:8025", "console.example:443"])
def test_plain_http_off_loopback_is_a_config_error_naming_the_key(address: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_text(BASE + f'[console]\nenabled = true\naddress = "{address}"\n')
    assert raised.value.errors == [f"console.address: {address} is not a loopback address; plain HTTP is refused "
                                   "there: set console.cert_file and console.key_file (HTTPS)"]


def test_loopback_plain_http_https_elsewhere_and_an_off_console_are_accepted() -> None:
    for address in ("127.0.0.1:8025", "127.9.9.9:1", "[::1]:8025", "localhost:8025"):
        load_text(BASE + f'[console]\nenabled = true\naddress = "{address}"\n')
    load_text(BASE + '[console]\nenabled = true\naddress = "0.0.0.0:443"\ncert_file = "c"\nkey_file = "k"\n')
    load_text(BASE + '[console]\naddress = "0.0.0.0:8025"\n')  # off: nothing listens
    with pytest.raises(ConfigError, match="console.cert_file: HTTPS needs both"):
        load_text(BASE + '[console]\ncert_file = "c"\n')
    assert not is_loopback_host("0.0.0.0") and is_loopback_host("::1")


def test_the_embedded_default_serves_the_console_on_loopback_only() -> None:
    from mailgate.config.loader import load_embedded

    console = load_embedded().console
    assert console.enabled and console.address.startswith("127.0.0.1:") and not console.cert_file


@pytest.mark.parametrize("target, expected", [("/queue?state=held", "/queue?state=held"), ("//evil.example/", "/"),
                                              ("/\\evil.example", "/"), ("https://evil.example/", "/"),
                                              ("javascript:alert(1)", "/"), ("", "/")])
def test_after_log_in_only_our_own_paths(target: str, expected: str) -> None:
    assert _safe_next(target) == expected


def test_credentials_inside_urls_are_masked() -> None:
    assert mask_secrets('"ldap://cn=bind:pw@dir.example:389"') == '"ldap://***@dir.example:389"'
    assert mask_secrets('"http://127.0.0.1:11333"') == '"http://127.0.0.1:11333"'
    config = load_text(BASE + '[spam]\nrspamd_url = "http://u:hunter2@127.0.0.1:11333"\n')
    text = config_text(config)
    assert "hunter2" not in text and 'rspamd_url = "http://***@127.0.0.1:11333"' in text
    assert config_text(config, non_default=True).startswith("[[listener]]")


def record(event: str, when: float, **fields) -> dict:
    item = jsonlog.record(event, when, **fields)
    item["_when"] = when
    return item


def test_traffic_counts_series_per_minute_and_hour_and_drops_old_buckets() -> None:
    now = 1_800_000_040.0  # 40 s into a minute
    traffic = Traffic(days=1)
    traffic.add(record("transaction.accepted", now - 30, sender="a@x", recipients=["b@y"], tls="TLSv1.3 X"))
    traffic.add(record("transaction.accepted", now - 30, sender="a@x", recipients=["c@y"]))
    traffic.add(record("transaction.refused", now - 90, rule="dnsbl", client_ip="192.0.2.9"))
    traffic.add(record("delivery.attempt", now - 5, outcome="deferred"))
    traffic.add(record("delivery.attempt", now - 5, outcome="failed"))
    traffic.add(record("connection.refused", now - 5, reason="limit", client_ip="192.0.2.9"))
    traffic.add(record("transaction.accepted", now - 3 * 86400, sender="old@x", recipients=[]))
    minutes = traffic.per_minute(now)
    assert len(minutes) == 60 and minutes[-1][1] == {"accepted": 2, "refused": 0, "delivered": 0, "deferred": 1,
                                                     "bounced": 1}
    assert minutes[-2][1]["refused"] == 1
    assert len(traffic.per_hour(now)) == 24
    totals = traffic.totals(now)
    assert (totals["accepted"], totals["tls"]) == (2, 1)
    assert traffic.top(now, "senders") == [("a@x", 2)]
    assert traffic.top(now, "refused_clients") == [("192.0.2.9", 2)]
    traffic.prune(now)
    assert traffic.totals(now, hours=24 * 5)["accepted"] == 2  # the 3-day-old one is gone


def test_traffic_does_not_count_our_own_dsns_as_deliveries() -> None:
    """As `mailgate stats`: a DSN's delivery attempts are not messages delivered or bounced."""
    now = 1_800_000_040.0
    traffic = Traffic(days=1)
    traffic.add(record("delivery.attempt", now - 9, queue_id="Q1", outcome="failed"))
    traffic.add(record("bounce", now - 8, queue_id="Q1", dsn_queue_id="D1", kind="failure"))
    traffic.add(record("delivery.attempt", now - 5, queue_id="D1", outcome="delivered"))
    traffic.add(record("delivery.attempt", now - 4, queue_id="D1", outcome="deferred"))
    assert traffic.per_minute(now)[-1][1] == {"accepted": 0, "refused": 0, "delivered": 0, "deferred": 0, "bounced": 1}


def test_the_follower_reads_only_what_was_appended_and_waits_for_a_whole_line(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    json_file = tmp_path / "t.jsonl"
    daily = jsonlog.naming(json_file).path(__import__("mailgate.observe.writer", fromlist=["utc_day"]).utc_day(now))
    line = jsonlog.render(jsonlog.record("transaction.accepted", now - 10, sender="a@x", recipients=["b@y"]))
    daily.write_text(line + line[:20])  # the second line is still being written
    import os
    os.utime(daily, (now, now))
    traffic = Traffic(days=1)
    follower = LogFollower(str(json_file), traffic)
    follower.poll(now)
    assert traffic.totals(now)["accepted"] == 1
    with open(daily, "a") as handle:
        handle.write(line[20:])
    os.utime(daily, (now, now))
    follower.poll(now)
    follower.poll(now)
    assert traffic.totals(now)["accepted"] == 2


def test_a_chart_has_a_point_per_non_zero_value_and_escapes_labels() -> None:
    svg = str(line_chart("t<", ["00:00", "<b>"], {"accepted": [0, 3], "refused": [2, 0]}, chart_id="c"))
    points = re.findall(r'<circle class="point" data-series="(\w+)" data-value="(\d+)"', svg)
    assert points == [("accepted", "3"), ("refused", "2")]
    assert "<b>" not in svg and "&lt;b&gt;" in svg and svg.startswith('<svg id="c"')
    assert [nice_maximum(v) for v in (0, 1, 3, 7, 11, 250)] == [1, 1, 5, 10, 20, 500]


def test_trace_tells_the_whole_story_of_a_message_found_by_message_id(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    lines = [
        jsonlog.record("connection.opened", now, session_id="s1", client_ip="192.0.2.1"),
        jsonlog.record("transaction.accepted", now + 1, session_id="s1", queue_id="Q1", sender="a@x",
                       recipients=["b@y"], message_id="<m1@x>", client_ip="192.0.2.1", rule="hosted_domain screen:clean"),
        jsonlog.record("transaction.accepted", now + 2, session_id="s1", queue_id="Q2", sender="a@x",
                       recipients=["c@y"], message_id="<m2@x>", client_ip="192.0.2.1"),
        jsonlog.record("connection.closed", now + 3, session_id="s1"),
        jsonlog.record("delivery.attempt", now + 4, queue_id="Q1", recipient="b@y", outcome="delivered"),
        jsonlog.record("delivery.attempt", now + 5, queue_id="Q2", recipient="c@y", outcome="deferred"),
        jsonlog.record("admin.action", now + 6, admin="root", action="hold", queue_ids=["Q1"]),
        jsonlog.record("delivery.attempt", now + 7, queue_id="Q9", recipient="old@y", outcome="failed"),
    ]
    path = tmp_path / "t-20270115.jsonl"
    path.write_text("".join(jsonlog.render(line) for line in lines) + "garbage\n")
    (story,) = trace([path], "m1@x", "message_id").stories
    assert story.queue_id == "Q1" and story.accepted["sender"] == "a@x"
    assert [r["event"] for r in story.records] == ["connection.opened", "transaction.accepted", "connection.closed",
                                                   "delivery.attempt", "admin.action"]
    assert [s.queue_id for s in trace([path], "192.0.2.1", "client").stories] == ["Q1", "Q2"]
    assert [s.queue_id for s in trace([path], "old@y", "auto").stories] == ["Q9"]  # accepted before the log
    assert trace([path], "", "auto").stories == []
    with pytest.raises(ValueError):
        trace([path], "x", "everything")


def test_the_message_id_is_kept_for_the_log_unfolded_and_bounded() -> None:
    head = HeadBuilder(add_message_id_and_date=False, hostname="mx.test", queue_id="Q")
    head.feed(b"Subject: x\r\nMessage-ID:\r\n <folded@example.net>\r\n\r\nbody")
    head.completed_head()
    assert head.message_id == "<folded@example.net>"
    added = HeadBuilder(add_message_id_and_date=True, hostname="mx.test", queue_id="Q7")
    added.feed(b"Subject: x\r\n\r\n")
    added.completed_head()
    assert re.fullmatch(r"<Q7\.[0-9a-f]{12}@mx\.test>", added.message_id)
    huge = HeadBuilder(add_message_id_and_date=False, hostname="mx.test", queue_id="Q")
    huge.feed(b"Message-ID: <" + b"a" * 5000 + b">\r\n\r\n")
    huge.completed_head()
    assert len(huge.message_id) == 256


def test_the_dashboard_waits_for_the_log_flush_off_the_event_loop(tmp_path: Path) -> None:
    """Worker 0 serves SMTP on the loop that serves the console: a flush that waits for the log
    writer thread (up to 1 s) must not hold every session of that worker."""
    import threading
    from types import SimpleNamespace

    from mailgate.console.dashboard import Dashboard

    flushed_on: list[threading.Thread] = []
    log = SimpleNamespace(flush=lambda timeout: flushed_on.append(threading.current_thread()) or True)
    config = SimpleNamespace(log=SimpleNamespace(json_file=str(tmp_path / "t.jsonl")))
    services = SimpleNamespace(config=lambda: config, log=log, clock=SimpleNamespace(now=lambda: 1_800_000_000.0))
    dashboard = Dashboard(SimpleNamespace(services=services))  # type: ignore[arg-type]
    asyncio.run(dashboard._fresh_traffic())
    assert flushed_on and flushed_on[0] is not threading.main_thread()
