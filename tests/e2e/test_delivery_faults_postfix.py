"""Issue 12's key faults against real Postfix as the next hop, through mailgate's whole pipeline.

The next hop is a Postfix receiver for hosted.test that refuses per address with a
check_recipient_access map (451 and 550, and 421, after which Postfix disconnects: access(5)),
and refuses at DATA for one sender (check_sender_access in smtpd_data_restrictions, 554).
Postfix offers PIPELINING and CHUNKING, and keeps the MAIL after "554 5.5.1 Error: no valid
recipients", so the next MAIL on a connection left as it was would get "503 nested MAIL".
DSNs go to the senders' MX, a second Postfix receiver for sender.test found in loopback DNS.
Every fault is followed by an unrelated message that must arrive once, intact, from its sender.
"""

from __future__ import annotations

import email
import email.utils
import json
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, require_binary
from tests.e2e.test_delivery_postfix import mailgate_config
from tests.support.dns_server import LoopbackDnsServer
from tests.support.mailgate_server import MailgateProcess
from tests.support.postfix import start_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RECIPIENT_ACCESS = (
    "inline:{ {deferred@hosted.test = 451 4.3.0 Try again later}, "
    "{refused@hosted.test = 550 5.1.1 No such user}, "
    "{closing@hosted.test = 421 4.3.2 Closing now} }"
)
NEXT_HOP_SETTINGS = {
    "smtpd_recipient_restrictions": f"check_recipient_access {RECIPIENT_ACCESS}, reject_unauth_destination",
    "smtpd_data_restrictions": "check_sender_access inline:{ {data554@sender.test = 554 5.7.1 Refused at DATA} }",
}


def message(name: str, sender: str) -> bytes:
    return (f"From: {sender}\r\nSubject: {name}\r\nMessage-ID: <{name}@sender.test>\r\n\r\n"
            f"Body of {name}, nothing else.\r\n").encode()


def send(port: int, sender: str, recipients: list[str], name: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, recipients, message(name, sender))


def arrived(receiver) -> dict[str, list[email.message.Message]]:
    """Delivered messages by Message-ID."""
    found: dict[str, list[email.message.Message]] = {}
    for path in receiver.delivered():
        parsed = email.message_from_bytes(path.read_bytes())
        found.setdefault(parsed["Message-ID"], []).append(parsed)
    return found


def recipient_states(mailgate: MailgateProcess) -> dict[str, str]:
    """address -> state of every recipient of the messages still in mailgate's queue."""
    result = subprocess.run(
        [sys.executable, "-m", "mailgate", "queue", "list", "--json", "--config", str(mailgate.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["messages"]
    return {r["address"]: r["state"] for message in listed for r in message["recipients"]}


def test_postfix_refusals_harm_only_their_own_message(tmp_path: Path) -> None:
    require_binary("postfix")
    with start_receiver(free_port(), ["hosted.test"], settings=NEXT_HOP_SETTINGS) as hop, \
            start_receiver(free_port(), ["sender.test"]) as senders_mx, \
            LoopbackDnsServer({"sender.test": {"MX": [(10, "mx.sender.test")]},
                               "mx.sender.test": {"A": ["127.0.0.1"]}}) as dns:
        port = free_port()
        config = mailgate_config(tmp_path, port, f"127.0.0.1:{hop.port}", dns_port=dns.port, mx_port=senders_mx.port)
        mailgate = MailgateProcess(tmp_path, config).start(wait=("127.0.0.1", port))
        try:
            # Each fault, then an unrelated message on the (pooled) connection it left behind.
            steps = [
                ("a@sender.test", ["refused@hosted.test"], "only-refused"),  # 550, then DATA 554
                ("b@sender.test", ["next1@hosted.test"], "next1"),
                ("a@sender.test", ["deferred@hosted.test"], "only-deferred"),  # 451, then DATA 554
                ("b@sender.test", ["next2@hosted.test"], "next2"),
                ("a@sender.test", ["refused@hosted.test", "deferred@hosted.test", "ok1@hosted.test"], "mixed"),
                ("b@sender.test", ["next3@hosted.test"], "next3"),
                ("data554@sender.test", ["ok2@hosted.test"], "data-refused"),  # 554 at DATA
                ("b@sender.test", ["next4@hosted.test"], "next4"),
                ("a@sender.test", ["ok3@hosted.test", "closing@hosted.test"], "closing"),  # 421
                ("b@sender.test", ["next5@hosted.test"], "next5"),
            ]
            for sender, recipients, name in steps:
                send(port, sender, recipients, name)
                time.sleep(0.3)  # one at a time, so each finds the connection the last one left
            expected = {f"<{name}@sender.test>" for name in ("next1", "next2", "next3", "next4", "next5", "mixed")}
            hop.wait_delivered(len(expected), timeout=90)
            assert expected <= set(arrived(hop)), (arrived(hop).keys(), mailgate.log())
            # Bounces: refused@ twice (only-refused, mixed) and the DATA refusal: three DSNs.
            assert len(senders_mx.wait_delivered(3, timeout=90)) >= 3, mailgate.log()
            time.sleep(3)  # retries of the deferred ones run meanwhile (retry_schedule 1s)
            delivered = arrived(hop)
            assert set(delivered) == expected, "a refused message arrived, or a bounce went to the hop"
            for message_id, copies in delivered.items():
                assert len(copies) == 1, f"{message_id} arrived {len(copies)} times"
                (copy,) = copies
                name = message_id.strip("<>").split("@")[0]
                assert copy["Return-Path"] == f"<{copy['From']}>", "delivered with another message's sender"
                assert copy.get_payload() == f"Body of {name}, nothing else.\r\n".replace("\r\n", "\n")
            mixed_recipients = hop.maillog().count("to=<ok1@hosted.test>")
            assert mixed_recipients == 1
            dsns = [email.message_from_bytes(path.read_bytes()) for path in senders_mx.delivered()]
            assert len(dsns) == 3 and all(dsn.get_content_type() == "multipart/report" for dsn in dsns)
            assert sorted(email.utils.parseaddr(dsn["To"])[1] for dsn in dsns) == [
                "a@sender.test", "a@sender.test", "data554@sender.test"]
            reports = " ".join(path.read_text(errors="replace") for path in senders_mx.delivered())
            assert "refused@hosted.test" in reports and "ok2@hosted.test" in reports
            assert "deferred@hosted.test" not in reports and "closing@hosted.test" not in reports
            # no 503 reply (RFC 5321 §4.2.4, bad sequence) quoted; a Message-ID's digits may hold "503"
            assert re.search(r"(?<![\w.])503[ -]", reports) is None, reports
            states = recipient_states(mailgate)  # the 451 and 421 recipients wait for a retry
            assert states["deferred@hosted.test"] == "queued" and states["closing@hosted.test"] == "queued"
            assert states["ok3@hosted.test"] == "queued"  # accepted before the 421, never finished
            assert states.get("refused@hosted.test", "failed") == "failed"
            assert "ok1@hosted.test" not in states or states["ok1@hosted.test"] == "delivered"
        finally:
            mailgate.stop()
