"""`mailgate stats`: counting the JSON log like pflogsumm, text and JSON output, --since."""

from __future__ import annotations

import re

import argparse
import json
import time

import pytest

from mailgate.cli import stats_cmd
from mailgate.core.clock import FakeClock
from mailgate.core.reply import Reply
from mailgate.core.status import classify
from mailgate.observe import jsonlog
from mailgate.observe.stats import format_report, summarise
from mailgate.observe.translog import open_transaction_log

pytestmark = pytest.mark.timeout(30)

OK = Reply(250, "2.0.0", "ok")
LATER = Reply(451, "4.4.1", "no answer")
NEVER = Reply(550, "5.1.1", "no such user")
RELAY = Reply(550, "5.7.1", "Unable to relay")


def _write_day(path, clock: FakeClock) -> None:
    """Three messages, one refusal burst, mixed delivery outcomes, over two hours."""
    log = open_transaction_log(clock, "relay.example", json_file=str(path))
    log.connection_opened("s1", "192.0.2.1", 1000, "mx", "10.0.0.1", 25)
    log.transaction_accepted("s1", "Q1", "alice@Sender.example", ["bob@dest.example", "carol@dest.example"],
                             1000, "hosted_domain")
    log.transaction_accepted("s1", "Q2", "alice@sender.example", ["bob@Dest.Example"], 3000, "hosted_domain")
    log.transaction_refused("s1", "rcpt", RELAY, "unable_to_relay", recipient="x@else.example")
    log.transaction_refused("s1", "rcpt", RELAY, "unable_to_relay", recipient="y@else.example")
    log.transaction_refused("s1", "mail", Reply(550, "5.7.1", "blocked"), "sender_blocklist")
    log.connection_closed("s1")
    log.connection_refused("198.51.100.9", 2000, "mx", "limit", Reply(421, "4.7.0", "Too many"))
    log.delivery_attempt("Q1", "bob@dest.example", "dest.example", classify(OK), size=1000)
    log.delivery_attempt("Q1", "carol@dest.example", "dest.example", classify(LATER))
    clock.advance(3600)
    log.connection_opened("s2", "192.0.2.2", 1001, "submission", "10.0.0.1", 587)
    log.transaction_accepted("s2", "Q3", "", ["dave@far.example"], 500, "authenticated")
    log.connection_closed("s2")
    log.delivery_attempt("Q1", "carol@dest.example", "dest.example", classify(LATER))
    log.delivery_attempt("Q2", "bob@dest.example", "dest.example", classify(OK), size=3000)
    log.delivery_attempt("Q3", "dave@far.example", "far.example", classify(NEVER))
    log.bounce("Q3", "Q4", "failed", "", ["dave@far.example"])
    log.delivery_attempt("Q4", "@sender.example", "sender.example", classify(OK), size=800)  # the DSN itself
    assert log.flush()
    log.close()


@pytest.fixture
def day_log(tmp_path):
    clock = FakeClock()  # 2027-01-15 08:00:00 UTC
    _write_day(tmp_path / "t.jsonl", clock)
    return tmp_path / "t-20270115.jsonl"


def test_summary_counts_like_pflogsumm(day_log):
    s = summarise(jsonlog.read_records([day_log]), top=2)
    assert (s["received"], s["delivered"], s["deferred"], s["deferred_messages"], s["bounced"]) == (3, 2, 2, 1, 1)
    assert s["rejected"] == 3 and s["connections"] == 2
    assert s["received_bytes"] == 4500 and s["received_recipients"] == 4 and s["delivered_bytes"] == 4000
    assert s["dsn_sent"] == {"failed": 1}
    assert s["refused_by_rule"] == [{"name": "unable_to_relay", "count": 2}, {"name": "sender_blocklist", "count": 1}]
    assert s["connections_refused"] == [{"name": "limit", "count": 1}]
    assert s["top_senders"] == [{"name": "alice@sender.example", "count": 2}, {"name": "<>", "count": 1}]
    assert s["top_sender_domains"][0] == {"name": "sender.example", "count": 2}
    assert s["top_recipients"][0] == {"name": "bob@dest.example", "count": 2}
    assert s["top_recipient_domains"] == [
        {"domain": "dest.example", "delivered": 2, "deferred": 2, "bounced": 0},
        {"domain": "far.example", "delivered": 0, "deferred": 0, "bounced": 1},
    ]
    assert s["per_hour"] == [
        {"hour": "2027-01-15 08:00", "received": 2, "delivered": 1, "deferred": 1, "bounced": 0, "rejected": 3},
        {"hour": "2027-01-15 09:00", "received": 1, "delivered": 1, "deferred": 1, "bounced": 1, "rejected": 0},
    ]
    assert s["first"] == "2027-01-15T08:00:00.000Z" and s["last"] == "2027-01-15T09:00:00.000Z"


def test_null_sender_is_shown_as_angle_brackets(day_log):
    s = summarise(jsonlog.read_records([day_log]))
    assert {"name": "<>", "count": 1} in s["top_senders"]


def test_text_report_sections(day_log):
    report = format_report(summarise(jsonlog.read_records([day_log])))
    for title in ("Grand totals", "Refused by rule", "Senders by message count", "Recipients by message count",
                  "Recipient domains", "Per-hour traffic (UTC)"):
        assert title in report
    assert "unable_to_relay" in report and "2027-01-15 09:00" in report


def test_dsns_are_counted_apart_from_deliveries_in_their_own_column(day_log):
    """Issue 20 item 9: "failed 4  DSNs sent" put the label in the number column, and the DSN's
    own delivery counted as a message delivered."""
    s = summarise(jsonlog.read_records([day_log]))
    assert s["delivered"] == 2 and s["dsn_delivery_attempts"] == 1
    report = format_report(s)
    assert re.search(r"^ +1  DSNs sent$", report, re.M), report
    assert re.search(r"^ +1  DSNs sent \(failed\)$", report, re.M), report
    for line in report.split("Grand totals", 1)[1].split("\n\n", 1)[0].splitlines()[2:]:
        assert re.match(r"^ +[0-9.]+( [KMG]?i?B)?  [a-zA-Z]", line), line  # a number, then the label


def test_empty_log_gives_an_empty_summary():
    s = summarise([])
    assert s["received"] == 0 and s["per_hour"] == [] and s["first"] is None
    assert "none" in format_report(s)


def _args(**values) -> argparse.Namespace:
    defaults = {"config": None, "log": [], "since": None, "top": 10, "json": False}
    defaults.update(values)
    return argparse.Namespace(**defaults)


def test_command_reads_every_daily_file_of_the_configured_log(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    clock = FakeClock()
    _write_day(path, clock)
    clock.advance(86400)
    _write_day(path, clock)
    assert len(list(tmp_path.glob("t-*.jsonl"))) == 2
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[log]\njson_file = "{path}"\n[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n')
    assert stats_cmd.stats_command(_args(config=str(config), json=True)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["received"] == 6 and len(summary["per_hour"]) == 4


def test_command_since_filters_by_age(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    now = time.time()
    path.write_text(
        jsonlog.render(jsonlog.record(jsonlog.TRANSACTION_ACCEPTED, now - 3 * 86400, sender="old@x.example",
                                      recipients=[], size=1))
        + jsonlog.render(jsonlog.record(jsonlog.TRANSACTION_ACCEPTED, now - 60, sender="new@x.example",
                                        recipients=[], size=1))
    )
    assert stats_cmd.stats_command(_args(log=[str(path)], since="24h", json=True)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["top_senders"] == [{"name": "new@x.example", "count": 1}]


def test_command_errors(tmp_path, capsys):
    assert stats_cmd.stats_command(_args(log=[str(tmp_path / "absent")])) == 1
    assert stats_cmd.stats_command(_args(log=[str(tmp_path / "absent")], since="soon")) == 2
    assert "--since" in capsys.readouterr().err


def test_registered_in_a_parser(day_log, capsys):
    parser = argparse.ArgumentParser()
    stats_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["stats", "--log", str(day_log), "--top", "1"])
    assert args.handler(args) == 0
    assert "Grand totals" in capsys.readouterr().out
