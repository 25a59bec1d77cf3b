"""The transaction logs and the metrics endpoint of a real session (SPEC §6, issue "Operations").

A real mailgate with `[log] json_file`, `w3c_dir` and `[metrics] address`; an untrusted client
sends one accepted message (to a hosted domain delivered to a maildir, so the runner really
delivers it) and one refused relay attempt. Then:
- the W3C file `exYYMMDD.log` has the IIS directives (#Software, #Version, #Date, #Fields) with
  the IIS SMTP field list in its order, and every data line has exactly as many fields;
- the JSON-lines log has the connection, the accepted transaction (queue id, rule), the refusal
  (rule, reply) and the delivery attempt (next hop, reply);
- /metrics, scraped over HTTP, counts the same connections, acceptances by rule, refusals and
  deliveries as the JSON log holds (the logs and the counters never disagree); /healthz is 200.
The expected field list is written out here, not imported, so the test checks the code against
the IIS format rather than against itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailgate import __version__
from mailgate.observe.jsonlog import log_files, read_records
from tests.conftest import free_port
from tests.support.config_text import hosted_domain, log_and_metrics, relay_config
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import EXTERNAL, HOSTED, RawSmtp, SmtpReply, queued

pytestmark = pytest.mark.timeout(60)

CLIENT = "127.0.0.4"  # untrusted (trusted_networks is 127.0.0.1/32), not the self-audit's 127.0.0.2
HELO = "client.test"
SENDER = "sender@external.test"
MESSAGE = b"Subject: logged\r\n\r\nhello\r\n"
IIS_SMTP_FIELDS = [
    "date", "time", "c-ip", "cs-username", "s-sitename", "s-computername", "s-ip", "s-port",
    "cs-method", "cs-uri-stem", "cs-uri-query", "sc-status", "sc-win32-status", "sc-bytes",
    "cs-bytes", "time-taken", "cs-version", "cs-host", "cs(User-Agent)", "cs(Cookie)", "cs(Referer)",
]


def _config(tmp_path: Path, metrics_port: int) -> str:
    return relay_config(tmp_path / "spool", free_port(), hosted_domain(f"maildir:{tmp_path / 'mbox'}", HOSTED),
                        log_and_metrics(tmp_path, metrics_port), listener='profile = "mx"\n')


async def _one_accepted_one_refused(port: int) -> list[SmtpReply]:
    client = await RawSmtp.connect(port, source=CLIENT)
    try:
        replies = [await client.reply(), await client.command(f"EHLO {HELO}"),
                   await client.command(f"MAIL FROM:<{SENDER}>"),
                   await client.command(f"RCPT TO:<user@{HOSTED}>"), await client.command("DATA")]
        await client.send(MESSAGE + b".\r\n")
        replies.append(await client.reply())
        replies += [await client.command(f"MAIL FROM:<{SENDER}>"),
                    await client.command(f"RCPT TO:<friend@{EXTERNAL}>"),
                    await client.command("RSET"), await client.command("QUIT")]
        return replies
    finally:
        await client.close()


def _await_delivery(mg: InProcessMailgate, maildir: Path) -> list[Path]:
    """Bounded wait until the runner has delivered and removed the message from the queue."""
    deadline = time.monotonic() + 20
    while True:
        delivered = sorted((maildir / "new").glob("*")) if (maildir / "new").is_dir() else []
        if delivered and not queued(mg):
            return delivered
        assert time.monotonic() < deadline, f"not delivered: {delivered}, queue {queued(mg)}"
        time.sleep(0.05)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_logs_and_metrics_of_a_real_session(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics_port = free_port()
    caplog.set_level(logging.INFO, logger="mailgate")
    with InProcessMailgate(_config(tmp_path, metrics_port)) as mg:
        port = mg.port("mx")
        replies = asyncio.run(_one_accepted_one_refused(port))
        delivered = _await_delivery(mg, tmp_path / "mbox")
        assert mg.app is not None and mg.app.log.flush()
        health = _get(f"http://127.0.0.1:{metrics_port}/healthz")
        status, scraped = _get(f"http://127.0.0.1:{metrics_port}/metrics")

    assert [r.code for r in replies] == [220, 250, 250, 250, 354, 250, 250, 550, 250, 221]
    queue_id = replies[5].text.split()[-1]  # "2.0.0 OK queued as <id>"
    assert len(delivered) == 1
    assert delivered[0].read_bytes().endswith(MESSAGE)
    assert health == (200, b"ok\n")
    assert status == 200

    records = list(read_records(log_files(tmp_path / "log" / "tx.jsonl")))
    _check_w3c(tmp_path / "w3c", port, queue_id)
    _check_json(records, queue_id, tmp_path / "mbox")
    _check_metrics(_samples(scraped.decode()), records, tmp_path / "mbox")
    # The diagnostic log alone tells what happened to the message (issue 20 item 8).
    assert f"queued {queue_id} from <{SENDER}>" in caplog.text
    assert f"{queue_id}: to=<user@{HOSTED}>, relay=maildir:{tmp_path / 'mbox'}" in caplog.text
    assert "status=sent (250 2.0.0" in caplog.text


def _check_w3c(directory: Path, port: int, queue_id: str) -> None:
    rows = []
    files = sorted(directory.iterdir())
    assert 1 <= len(files) <= 2  # two only when the test straddles midnight UTC
    for log_file in files:
        lines = log_file.read_bytes().decode("utf-8").split("\r\n")
        assert lines[-1] == ""  # every line ends with CRLF
        assert lines[0] == f"#Software: mailgate {__version__}"
        assert lines[1] == "#Version: 1.0"
        opened = datetime.strptime(lines[2], "#Date: %Y-%m-%d %H:%M:%S")
        assert log_file.name == opened.strftime("ex%y%m%d.log")  # IIS naming, UTC days
        assert lines[3] == "#Fields: " + " ".join(IIS_SMTP_FIELDS)
        assert all(len(line.split(" ")) == len(IIS_SMTP_FIELDS) for line in lines[4:-1])
        rows += [dict(zip(IIS_SMTP_FIELDS, line.split(" "))) for line in lines[4:-1]]
    ours = [row for row in rows if row["c-ip"] == CLIENT]
    assert [(row["cs-method"], row["cs-uri-query"], row["sc-status"]) for row in ours] == [
        ("EHLO", f"+{HELO}", "250"),
        ("MAIL", f"+FROM:<{SENDER}>", "250"),
        ("RCPT", f"+TO:<user@{HOSTED}>", "250"),
        ("DATA", f"+{queue_id}", "250"),  # IIS style: DATA logged once, with the queue id
        ("MAIL", f"+FROM:<{SENDER}>", "250"),
        ("RCPT", f"+TO:<friend@{EXTERNAL}>", "550"),
        ("RSET", "-", "250"),
        ("QUIT", "-", "221"),
    ]
    for row in ours:
        assert (row["cs-username"], row["s-sitename"], row["s-computername"]) == (HELO, "mx", "mx.test")
        assert (row["s-ip"], row["s-port"], row["sc-win32-status"], row["cs-version"]) == ("127.0.0.1", str(port), "0", "SMTP")
        assert [row[name] for name in ("cs-uri-stem", "cs-host", "cs(User-Agent)", "cs(Cookie)", "cs(Referer)")] == ["-"] * 5
        assert int(row["sc-bytes"]) > 0 and int(row["time-taken"]) >= 0
        datetime.strptime(f"{row['date']} {row['time']}", "%Y-%m-%d %H:%M:%S")
    assert int(ours[3]["cs-bytes"]) >= len(MESSAGE)  # DATA: the message size as bytes in (IIS)


def _check_json(records: list[dict], queue_id: str, maildir: Path) -> None:
    ours = [r for r in records if r.get("client_ip") == CLIENT]
    assert [r["event"] for r in ours] == [
        "connection.opened", "transaction.accepted", "transaction.refused", "connection.closed"
    ]
    opened, accepted, refused, closed = ours
    session = opened["session_id"]
    assert (opened["listener"], opened["server_ip"]) == ("mx", "127.0.0.1")
    assert {r["session_id"] for r in ours} == {session}
    assert (accepted["queue_id"], accepted["rule"], accepted["sender"], accepted["recipients"]) == (
        queue_id, "hosted_domain", SENDER, [f"user@{HOSTED}"])
    assert (accepted["direction"], accepted["helo"], accepted["size"] > len(MESSAGE)) == ("inbound", HELO, True)
    assert (refused["stage"], refused["rule"], refused["recipient"]) == ("rcpt", "default_reject", f"friend@{EXTERNAL}")
    assert (refused["reply_code"], refused["reply_enhanced"]) == (550, "5.7.1")
    assert (closed["reason"], closed["messages"]) == ("quit", 1)

    [attempt] = [r for r in records if r["event"] == "delivery.attempt"]
    assert (attempt["queue_id"], attempt["recipient"], attempt["outcome"]) == (queue_id, f"user@{HOSTED}", "delivered")
    assert attempt["next_hop"] == f"maildir:{maildir}"
    assert (attempt["reply_code"], attempt["reply_enhanced"]) == (250, "2.0.0")


def _check_metrics(samples: dict, records: list[dict], maildir: Path) -> None:
    """The counters agree with the JSON log; the start-up self-audit's sessions are in neither
    (one self_audit record instead)."""
    def count(event: str, **fields: str) -> int:
        return sum(1 for r in records if r["event"] == event and all(r.get(k) == v for k, v in fields.items()))

    def sample(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert sample("mailgate_connections_total", listener="mx") == count("connection.opened", listener="mx") == 1
    assert count("self_audit") == 1
    assert sample("mailgate_connections_open", listener="mx") == 0
    assert sample("mailgate_transactions_accepted_total", direction="inbound", rule="hosted_domain") == 1
    refused = count("transaction.refused", stage="rcpt", rule="default_reject")
    assert sample("mailgate_transactions_refused_total", stage="rcpt", rule="default_reject") == refused >= 1
    assert sample("mailgate_deliveries_total", outcome="delivered", next_hop=f"maildir:{maildir}") == 1
    assert sample("mailgate_log_records_written_total") >= len(records)
    assert sample("mailgate_log_records_lost_total", reason="queue_full") == 0
