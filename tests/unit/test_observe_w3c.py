"""W3C extended log lines as the IIS SMTP service writes them: fields, order, escaping, parsing."""

from __future__ import annotations

import pytest

from mailgate.observe import w3c

WHEN = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC

IIS_FIELDS = (
    "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-stem "
    "cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host "
    "cs(User-Agent) cs(Cookie) cs(Referer)"
)


def _record(**overrides):
    record = {
        "when": WHEN, "c-ip": "192.0.2.7", "cs-username": "client.example", "s-sitename": "mx",
        "s-computername": "relay.example", "s-ip": "10.0.0.1", "s-port": 25, "cs-method": "MAIL",
        "cs-uri-query": w3c.query_value("FROM:<a@example.com> SIZE=1000"), "sc-status": 250,
        "sc-bytes": 31, "cs-bytes": 40, "time-taken": 3,
    }
    record.update(overrides)
    return record


def test_fields_are_the_iis_smtp_selection_in_order():
    assert " ".join(w3c.FIELDS) == IIS_FIELDS
    assert len(w3c.FIELDS) == 21


def test_header_directives():
    lines = w3c.header(WHEN, "mailgate 0.1.0").split("\r\n")
    assert lines[:4] == [
        "#Software: mailgate 0.1.0",
        "#Version: 1.0",
        "#Date: 2027-01-15 08:00:00",
        "#Fields: " + IIS_FIELDS,
    ]


def test_line_values_in_field_order():
    line = w3c.line(_record())
    assert line.endswith("\r\n")
    assert line.rstrip("\r\n").split(" ") == [
        "2027-01-15", "08:00:00", "192.0.2.7", "client.example", "mx", "relay.example", "10.0.0.1",
        "25", "MAIL", "-", "+FROM:<a@example.com>+SIZE=1000", "250", "0", "31", "40", "3", "SMTP",
        "-", "-", "-", "-",
    ]


def test_missing_and_empty_fields_are_dashes():
    values = w3c.line({"when": WHEN, "cs-method": "QUIT", "cs-username": ""}).split()
    assert len(values) == 21
    row = dict(zip(w3c.FIELDS, values))
    assert row["cs-username"] == "-" and row["c-ip"] == "-" and row["cs-uri-query"] == "-"
    assert row["cs-method"] == "QUIT" and row["sc-win32-status"] == "0"


@pytest.mark.parametrize("hostile", [
    "FROM:<a@example.com>\r\n2027-01-15 08:00:00 6.6.6.6 forged",
    "x\ny", "tab\there", "nul\x00", "100%",
])
def test_hostile_arguments_stay_on_one_line_with_21_fields(hostile):
    line = w3c.line(_record(**{"cs-uri-query": w3c.query_value(hostile), "cs-username": hostile}))
    body = line[:-2]
    assert "\r" not in body and "\n" not in body and "\t" not in body and "\x00" not in body
    assert len(body.split(" ")) == 21


def test_percent_encoding_is_reversible_enough_to_read():
    assert w3c.field_value("a\r\nb") == "a%0D%0Ab"
    assert w3c.field_value("50%") == "50%25"


def test_long_fields_are_cut():
    assert len(w3c.field_value("x" * 5000)) == w3c.MAX_FIELD


def test_parse_reads_back_and_follows_fields_directives():
    text = (
        w3c.header(WHEN, "mailgate")
        + w3c.line(_record())
        + "#Fields: date time cs-method\r\n"
        + "2027-01-15 08:00:01 QUIT\r\n"
    )
    seen, rows = w3c.parse(text)
    assert seen == ["date", "time", "cs-method"]
    assert rows[0]["cs-uri-query"] == "+FROM:<a@example.com>+SIZE=1000"
    assert rows[0]["sc-status"] == "250"
    assert rows[1] == {"date": "2027-01-15", "time": "08:00:01", "cs-method": "QUIT"}


def test_parse_refuses_a_line_with_the_wrong_field_count():
    with pytest.raises(ValueError):
        w3c.parse(w3c.header(WHEN, "m") + "2027-01-15 08:00:00 too few\r\n")
