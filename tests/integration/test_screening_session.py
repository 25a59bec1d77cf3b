"""The screener inside reception: each action over real SMTP, with a real clamd for viruses.

Messages are the real-shaped samples in tests/data/mime; the verdict shows in the reply, in the
queue (quarantine held with its reason, strip rewritten) and in the log with the rule's name.
"""

from __future__ import annotations

import email
import email.policy
import logging
import smtplib
from pathlib import Path

import pytest

from mailgate.queue.store import MessageState, QueueFilter
from tests.conftest import free_port, require_binary
from tests.support.clamd import EICAR, SIGNATURE_NAME, start_clamd
from tests.support.config_text import hosted_domain, relay_config
from tests.support.mailgate_server import InProcessMailgate

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "mime"
pytestmark = pytest.mark.timeout(120)


def config(tmp_path: Path, port: int, extra: str) -> str:
    return relay_config(tmp_path / "spool", port, hosted_domain(f"127.0.0.1:{free_port()}"), SCREEN_RULES + extra,
                        hostname="relay.test", server="self_audit = false\n", trust_loopback=False)


SCREEN_RULES = """
[[screen_rule]]
name = "no-executables"
direction = "inbound"
action = "strip"
extension = ["exe", "com", "scr"]
sniffed_type = []
in_zip = true

[[screen_rule]]
name = "quarantine-invoices"
direction = "inbound"
action = "quarantine"
subject = ["(?i)urgent invoice"]

[[screen_rule]]
name = "banned-words"
direction = "both"
action = "reject"
text = "Message refused by content policy"
body = ["(?i)casino bonus"]

[[screen_rule]]
name = "tag-external"
direction = "inbound"
action = "tag"
tag_header = "X-External"
sender_domain = ["outside.example"]
"""


def send(port: int, message: bytes, sender: str = "a@outside.example") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail(sender, ["b@hosted.test"], message)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
        return 250, b""


def stored(mg: InProcessMailgate) -> list[tuple[object, bytes]]:
    async def collect():
        rows = await mg.app.store.list(QueueFilter())
        out = []
        for row in rows:
            body = b"".join([chunk async for chunk in mg.app.store.body_chunks(row.queue_id)])
            out.append((row, body))
        return out

    return mg.call(collect())


def test_each_action_over_smtp(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.screen")
    port = free_port()
    with InProcessMailgate(config(tmp_path, port, "")) as mg:
        # reject, at end of data, with the rule's text (550 5.7.1)
        code, text = send(port, b"Subject: hi\r\n\r\nGet your casino bonus now\r\n")
        assert code == 550 and b"5.7.1" in text and b"content policy" in text
        assert stored(mg) == []

        # strip: a zip holding an .exe loses that part, the rest is delivered with a notice
        assert send(port, (SAMPLES / "zip_with_exe.eml").read_bytes())[0] == 250
        [(row, body)] = stored(mg)
        parsed = email.message_from_bytes(body, policy=email.policy.default)
        assert parsed["X-Mailgate-Stripped"]
        names = [part.get_filename() for part in parsed.walk() if part.get_filename()]
        assert not any(name and name.lower().endswith(".zip") for name in names)
        assert b"no-executables" in body
        assert parsed["X-External"]  # the tag rule matched too and its header was added
        mg.call(mg.app.store.delete(QueueFilter(queue_id=row.queue_id)))

        # quarantine: accepted (250), held with the reason, visible in the queue listing
        assert send(port, b"Subject: URGENT invoice 42\r\n\r\nPlease pay.\r\n")[0] == 250
        held = mg.call(mg.app.store.list(QueueFilter(state=MessageState.HELD)))
        assert len(held) == 1 and "quarantine-invoices" in held[0].hold_reason

        # a clean message from an internal sender is untouched
        clean = (SAMPLES / "plain_clean.eml").read_bytes()
        assert send(port, clean, sender="c@inside.example")[0] == 250
        bodies = [body for row, body in stored(mg) if row.sender == "c@inside.example"]
        assert bodies and bodies[0].endswith(clean)

    verdicts = " ".join(record.getMessage() for record in caplog.records)
    for rule in ("banned-words", "no-executables", "quarantine-invoices"):
        assert f"rule={rule}" in verdicts


def test_clamd_refuses_a_virus_and_fails_closed_when_down(tmp_path: Path) -> None:
    binary = require_binary("clamd")
    port = free_port()
    with start_clamd(binary, free_port()) as clamd:
        extra = f'[antivirus]\nclamd = "{clamd.unix_address}"\ntimeout = 10\n'
        with InProcessMailgate(config(tmp_path, port, extra)):
            infected = (
                b"Subject: file\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Disposition: attachment; filename=\"test.bin\"\r\n\r\n" + EICAR + b"\r\n"
            )
            code, text = send(port, infected, sender="c@inside.example")
            assert code == 554 and SIGNATURE_NAME.encode() in text
            assert send(port, b"Subject: ok\r\n\r\nclean\r\n", sender="c@inside.example")[0] == 250
            clamd.stop()
            code, text = send(port, b"Subject: ok\r\n\r\nclean\r\n", sender="c@inside.example")
            assert code == 451 and b"4.7.1" in text  # scanner unreachable: temporary, never a silent 250
