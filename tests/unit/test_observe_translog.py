"""The typed transaction log: what each event writes to the W3C and JSON logs and counts."""

from __future__ import annotations

import json

import pytest

from mailgate.core.clock import FakeClock
from mailgate.core.reply import Reply
from mailgate.core.status import classify
from mailgate.observe import w3c
from mailgate.observe.metrics import Metrics
from mailgate.observe.translog import TransactionLog, new_session_id, open_transaction_log

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def setup(tmp_path):
    clock = FakeClock()  # 2027-01-15 08:00:00 UTC
    metrics = Metrics()
    log = open_transaction_log(
        clock, "relay.example", w3c_dir=str(tmp_path / "w3c"), json_file=str(tmp_path / "t.jsonl"),
        retention_days=7, metrics=metrics,
    )
    yield clock, metrics, log, tmp_path
    log.close()


def _json(tmp_path):
    return [json.loads(line) for line in (tmp_path / "t-20270115.jsonl").read_text().splitlines()]


def _w3c_rows(tmp_path):
    fields, rows = w3c.parse((tmp_path / "w3c" / "ex270115.log").read_text())
    assert fields == list(w3c.FIELDS)
    return rows


def _session(log: TransactionLog, clock: FakeClock, sid="s1") -> None:
    log.connection_opened(sid, "192.0.2.7", 40000, "mx", "10.0.0.1", 25)
    log.command(sid, "EHLO", "client.example", 250, 21, 120, 0)
    log.command(sid, "auth", "PLAIN AGFsaWNlAHNlY3JldA==", 235, 40, 30, 2, helo="client.example")
    log.command(sid, "MAIL", "FROM:<a@example.com>", 250, 30, 14, 1, helo="client.example")
    clock.advance(2)
    log.command(sid, "DATA", "<Q1>", 250, 1500, 30, 40, helo="client.example")


def test_commands_become_iis_w3c_lines(setup):
    clock, _metrics, log, tmp_path = setup
    _session(log, clock)
    assert log.flush()
    rows = _w3c_rows(tmp_path)
    assert [r["cs-method"] for r in rows] == ["EHLO", "AUTH", "MAIL", "DATA"]
    ehlo, auth, mail, data = rows
    assert ehlo["cs-username"] == "-" and mail["cs-username"] == "client.example"
    assert mail == {
        "date": "2027-01-15", "time": "08:00:00", "c-ip": "192.0.2.7", "cs-username": "client.example",
        "s-sitename": "mx", "s-computername": "relay.example", "s-ip": "10.0.0.1", "s-port": "25",
        "cs-method": "MAIL", "cs-uri-stem": "-", "cs-uri-query": "+FROM:<a@example.com>", "sc-status": "250",
        "sc-win32-status": "0", "sc-bytes": "14", "cs-bytes": "30", "time-taken": "1", "cs-version": "SMTP",
        "cs-host": "-", "cs(User-Agent)": "-", "cs(Cookie)": "-", "cs(Referer)": "-",
    }
    assert data["time"] == "08:00:02" and data["cs-bytes"] == "1500" and data["cs-uri-query"] == "+<Q1>"


def test_auth_credentials_never_reach_the_log(setup):
    clock, _metrics, log, tmp_path = setup
    _session(log, clock)
    log.connection_closed("s1")
    assert log.flush()
    everything = (tmp_path / "w3c" / "ex270115.log").read_text() + (tmp_path / "t-20270115.jsonl").read_text()
    assert "AGFsaWNl" not in everything
    assert _w3c_rows(tmp_path)[1]["cs-uri-query"] == "+PLAIN"


def test_json_records_for_a_whole_journey(setup):
    clock, metrics, log, tmp_path = setup
    _session(log, clock)
    log.transaction_refused("s1", "rcpt", Reply(550, "5.7.1", "Unable to relay for <x@other.example>"),
                            "unable_to_relay", sender="a@example.com", recipient="x@other.example")
    log.transaction_accepted("s1", "Q1", "a@example.com", ["b@hosted.example"], 1500, "hosted_domain",
                             tls="TLSv1.3 TLS_AES_256_GCM_SHA384", direction="inbound", helo="client.example",
                             elapsed=0.004)
    clock.advance(8)
    log.connection_closed("s1", "quit")
    log.delivery_attempt("Q1", "b@hosted.example", "hosted.example",
                         classify(Reply(451, "4.3.0", "try later"), "dns; mx.hosted.example"),
                         sender="a@example.com", tls="", elapsed=0.5, delay=10.0, size=1500)
    log.bounce("Q1", "Q2", "failed", "a@example.com", ["b@hosted.example"])
    assert log.flush()
    records = _json(tmp_path)
    assert [r["event"] for r in records] == [
        "connection.opened", "transaction.refused", "transaction.accepted", "connection.closed",
        "delivery.attempt", "bounce",
    ]
    opened, refused, accepted, closed, attempt, bounce = records
    assert opened["client_ip"] == "192.0.2.7" and opened["server_port"] == 25 and opened["listener"] == "mx"
    assert refused["rule"] == "unable_to_relay" and refused["reply_code"] == 550
    assert refused["reply_enhanced"] == "5.7.1" and refused["client_ip"] == "192.0.2.7"
    assert accepted["queue_id"] == "Q1" and accepted["rule"] == "hosted_domain"
    assert accepted["recipients"] == ["b@hosted.example"] and accepted["size"] == 1500
    assert accepted["tls"].startswith("TLSv1.3") and "auth_user" not in accepted
    assert closed["duration"] == 10.0 and closed["commands"] == 4 and closed["messages"] == 1
    assert closed["bytes_in"] == 21 + 40 + 30 + 1500
    assert attempt["outcome"] == "deferred" and attempt["reply_code"] == 451
    assert attempt["remote_mta"] == "dns; mx.hosted.example" and "tls" not in attempt
    assert bounce == {**bounce, "queue_id": "Q1", "dsn_queue_id": "Q2", "kind": "failed"}
    assert all(r["@timestamp"].endswith("Z") for r in records)


def test_metrics_follow_the_events(setup):
    clock, metrics, log, _tmp = setup
    value = metrics.registry.get_sample_value
    _session(log, clock)
    assert value("mailgate_connections_open", {"listener": "mx"}) == 1
    log.transaction_accepted("s1", "Q1", "", ["b@hosted.example"], 900, "hosted_domain", tls="TLSv1.2 X")
    log.transaction_refused("s1", "mail", Reply(550, "5.7.1", "blocked"), "sender_blocklist")
    log.connection_closed("s1")
    log.connection_refused("198.51.100.1", 5555, "mx", "limit", Reply(421, "4.7.0", "Too many connections"))
    log.delivery_attempt("Q1", "b@hosted.example", "hosted.example", classify(Reply(250, "2.0.0", "ok")),
                         tls="TLSv1.3 Y", elapsed=0.1, delay=5)
    log.bounce("Q1", "Q2", "delayed", "a@example.com", ["c@x.example"])
    assert value("mailgate_connections_open", {"listener": "mx"}) == 0
    assert value("mailgate_connections_total", {"listener": "mx"}) == 1
    assert value("mailgate_connections_refused_total", {"listener": "mx", "reason": "limit"}) == 1
    assert value("mailgate_transactions_accepted_total", {"direction": "inbound", "rule": "hosted_domain"}) == 1
    assert value("mailgate_transactions_refused_total", {"stage": "mail", "rule": "sender_blocklist"}) == 1
    assert value("mailgate_received_message_bytes_total", {"direction": "inbound"}) == 900
    assert value("mailgate_deliveries_total", {"outcome": "delivered", "next_hop": "hosted.example"}) == 1
    assert value("mailgate_tls_transactions_total", {"side": "receive", "protocol": "TLSv1.2"}) == 1
    assert value("mailgate_tls_transactions_total", {"side": "deliver", "protocol": "TLSv1.3"}) == 1
    assert value("mailgate_dsn_sent_total", {"kind": "delayed"}) == 1
    assert value("mailgate_delivery_delay_seconds_count") == 1
    assert value("mailgate_smtp_bytes_total", {"direction": "in"}) == 21 + 40 + 30 + 1500


def test_session_bytes_reach_the_metrics_at_each_transaction_end_and_at_the_close_once(setup):
    """A long session's bytes show before it closes (each accepted or refused transaction adds
    them), and nothing is counted twice."""
    clock, metrics, log, _tmp = setup
    value = lambda direction: metrics.registry.get_sample_value("mailgate_smtp_bytes_total", {"direction": direction})  # noqa: E731
    _session(log, clock)
    log.transaction_accepted("s1", "Q1", "", ["b@hosted.example"], 900, "hosted_domain")
    assert (value("in"), value("out")) == (21 + 40 + 30 + 1500, 120 + 30 + 14 + 30)
    log.command("s1", "MAIL", "FROM:<c@example.com>", 550, 30, 20, 0)
    log.transaction_refused("s1", "mail", Reply(550, "5.7.1", "blocked"), "sender_blocklist")
    assert value("in") == 21 + 40 + 30 + 1500 + 30
    log.command("s1", "QUIT", "", 221, 6, 12, 0)
    log.connection_closed("s1")
    assert (value("in"), value("out")) == (21 + 40 + 30 + 1500 + 30 + 6, 120 + 30 + 14 + 30 + 20 + 12)
    log.command("gone", "NOOP", "", 250, 6, 8, 0)  # an unknown session: counted at once
    assert value("in") == 21 + 40 + 30 + 1500 + 30 + 6 + 6


def test_unknown_or_closed_sessions_are_harmless(setup):
    clock, metrics, log, tmp_path = setup
    log.connection_closed("never-opened")
    log.command("never-opened", "NOOP", "", 250, 6, 20, 0)
    assert log.flush()
    assert _w3c_rows(tmp_path)[0]["c-ip"] == "-"
    assert metrics.registry.get_sample_value("mailgate_connections_open", {"listener": "mx"}) is None


def test_without_files_only_metrics_are_kept(tmp_path):
    metrics = Metrics()
    log = open_transaction_log(FakeClock(), "relay.example", metrics=metrics)
    assert log.writer is None
    log.connection_opened("s", "192.0.2.1", 1, "mx", "10.0.0.1", 25)
    log.command("s", "HELO", "x", 250, 8, 20, 0)
    log.connection_closed("s")
    assert log.flush()
    log.close()
    assert list(tmp_path.iterdir()) == []
    assert metrics.registry.get_sample_value("mailgate_connections_total", {"listener": "mx"}) == 1


def test_session_ids_are_distinct():
    assert len({new_session_id() for _ in range(1000)}) == 1000
