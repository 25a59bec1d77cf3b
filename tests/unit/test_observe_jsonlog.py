"""JSON-lines records: shape, escaping, daily file names and reading back."""

from __future__ import annotations

import json
from datetime import date

from mailgate.core.reply import Reply
from mailgate.observe import jsonlog

WHEN = 1_800_000_000.25


def test_record_starts_with_timestamp_and_event_and_drops_none():
    item = jsonlog.record(jsonlog.BOUNCE, WHEN, queue_id="Q1", kind="failed", rule=None)
    assert list(item) == ["@timestamp", "event", "queue_id", "kind"]
    assert item["@timestamp"] == "2027-01-15T08:00:00.250Z"


def test_timestamp_round_trips():
    assert jsonlog.parse_timestamp(jsonlog.timestamp(WHEN)) == WHEN


def test_render_is_one_line_even_with_control_characters():
    line = jsonlog.render(jsonlog.record("x", WHEN, sender="evil\r\n{\"event\":\"forged\"}", name="café"))
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert parsed["sender"] == "evil\r\n{\"event\":\"forged\"}"
    assert "café" in line  # UTF-8 kept readable


def test_reply_fields():
    assert jsonlog.reply_fields(Reply(550, "5.7.1", "Unable to relay")) == {
        "reply_code": 550, "reply_enhanced": "5.7.1", "reply_text": "Unable to relay",
    }
    assert jsonlog.reply_fields(None) == {}


def test_daily_files_beside_the_configured_name(tmp_path):
    current = tmp_path / "t.jsonl"
    assert jsonlog.naming(current).path(date(2027, 1, 15)) == tmp_path / "t-20270115.jsonl"
    for name in ("t-20270114.jsonl", "t-20270113.jsonl", "t.jsonl", "t-old.jsonl", "other-20270101.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in jsonlog.log_files(current)] == ["t-20270113.jsonl", "t-20270114.jsonl"]


def test_read_records_filters_by_since_and_skips_bad_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [
        jsonlog.render(jsonlog.record("a", WHEN - 100)),
        "not json\n",
        '{"event": "no timestamp"}\n',
        '{"@timestamp": "2027-01-15T08:00:0',  # cut by a crash
        "\n",
        jsonlog.render(jsonlog.record("b", WHEN)),
    ]
    path.write_text("".join(lines))
    assert [r["event"] for r in jsonlog.read_records([path])] == ["a", "b"]
    assert [r["event"] for r in jsonlog.read_records([path], since=WHEN - 1)] == ["b"]
    assert list(jsonlog.read_records([tmp_path / "missing"])) == []
