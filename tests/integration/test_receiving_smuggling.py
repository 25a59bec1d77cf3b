"""SMTP smuggling and command injection over a raw socket (RFC 5321 §2.3.8, §4.1.1.4; RFC 3207 §4).

A message whose data holds a fake end of data (`<LF>.<LF>` and friends) followed by a second
transaction must never turn into two messages, in every `server.bare_newline` mode: the client
gets exactly one reply to the whole data; under `reject` a refusal and nothing queued, otherwise
one message that holds the fake transaction as text and ends at the real end of data. Commands with bare line endings are refused, and a
command pipelined behind STARTTLS is never executed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import (
    HOSTED, UNTRUSTED_SOURCE, RawSmtp, SmtpReply, client_context, config_text, queued, stored_message,
)

pytestmark = pytest.mark.timeout(60)

SMUGGLED = f"MAIL FROM:<x@y.test>\r\nRCPT TO:<victim@{HOSTED}>\r\nDATA\r\nsmuggled\r\n.\r\n".encode()
# Fake ends of data seen in the wild (SEC Consult 2023, CVE-2023-51764/5/6) and close relatives.
FAKE_ENDS = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n.\r", b"\r.\r", b"\r\n.\r", b".\n"]


@pytest.fixture
def mailgate(tmp_path: Path, tls_files: dict[str, str]) -> Iterator[InProcessMailgate]:
    with InProcessMailgate(config_text(tmp_path, tls_files)) as mg:
        yield mg


async def _smuggle(port: int, fake_end: bytes, source: str = UNTRUSTED_SOURCE) -> tuple[list[SmtpReply], bool]:
    client = await RawSmtp.connect(port, source=source)
    replies = [await client.reply()]
    await client.send(
        b"EHLO attacker.test\r\nMAIL FROM:<a@attacker.test>\r\n"
        + f"RCPT TO:<user@{HOSTED}>\r\nDATA\r\n".encode()
    )
    replies += await client.replies(4)
    await client.send(b"Subject: cover\r\n\r\ncover" + fake_end + SMUGGLED)
    replies.append(await client.reply())
    replies.append(await client.command("QUIT"))
    closed = await client.at_eof()  # nothing else was answered: one reply to the whole data
    await client.close()
    return replies, closed


@pytest.mark.parametrize("mode", ["normalize", "reject", "no"])
@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggled_transaction_is_never_a_second_message(tmp_path: Path, mode: str, fake_end: bytes) -> None:
    """Every server.bare_newline mode: one reply to the whole data, at most one message queued,
    holding the fake transaction as text; `reject` refuses it whole (550 5.5.2)."""
    with InProcessMailgate(config_text(tmp_path, server_extra=f'bare_newline = "{mode}"')) as mg:
        replies, closed = asyncio.run(_smuggle(mg.port("mx"), fake_end))
        messages = queued(mg)
        stored = stored_message(mg, messages[0].queue_id) if messages else b""

    assert closed
    if mode == "reject":
        assert [r.code for r in replies] == [220, 250, 250, 250, 354, 550, 221]
        assert replies[5].lines[0].startswith("5.5.2")
        assert messages == []
        return
    assert [r.code for r in replies] == [220, 250, 250, 250, 354, 250, 221]
    assert len(messages) == 1 and [r[0] for r in messages[0].recipients] == [f"user@{HOSTED}"]
    body = stored.split(b"Subject: cover\r\n", 1)[1]
    assert b"victim@" in body and body.endswith(b"smuggled\r\n")  # the real end, nothing past it
    if mode == "normalize":
        assert body.count(b"\r\n") == body.count(b"\n") == body.count(b"\r")


@pytest.mark.parametrize(("source", "excluded"), [(UNTRUSTED_SOURCE, False), ("127.0.0.1", True)])
def test_reject_spares_trusted_networks_and_normalizes_their_mail(tmp_path: Path, source: str, excluded: bool) -> None:
    """Postfix's smtpd_forbid_bare_newline_exclusions = $mynetworks: a trusted client is never
    refused for bare LF under `reject`; its mail is normalized."""
    with InProcessMailgate(config_text(tmp_path, server_extra='bare_newline = "reject"')) as mg:
        replies, _ = asyncio.run(_smuggle(mg.port("mx"), b"\n.\n", source))
        messages = queued(mg)
        stored = stored_message(mg, messages[0].queue_id) if messages else b""
    assert replies[5].code == (250 if excluded else 550)
    assert len(messages) == excluded
    if excluded:
        assert b"cover\r\n.\r\nMAIL FROM:<x@y.test>\r\n" in stored


async def _send_long_lines(port: int, body: bytes) -> SmtpReply:
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    await client.reply()
    await client.command("EHLO sender.test")
    await client.command("MAIL FROM:<news@sender.test>")
    await client.command(f"RCPT TO:<user@{HOSTED}>")
    await client.command("DATA")
    await client.send(body + b".\r\n")
    reply = await client.reply()
    await client.close()
    return reply


@pytest.mark.parametrize(("long_lines", "code"), [("wrap", 250), ("refuse", 550)])
def test_long_lines_are_accepted_unless_refused(tmp_path: Path, long_lines: str, code: int) -> None:
    body = b"Subject: newsletter\r\n\r\n<html>" + b"x" * 5000 + b"</html>\r\n"
    with InProcessMailgate(config_text(tmp_path, server_extra=f'long_lines = "{long_lines}"')) as mg:
        reply = asyncio.run(_send_long_lines(mg.port("mx"), body))
        messages = queued(mg)
        stored = stored_message(mg, messages[0].queue_id) if messages else b""
    assert reply.code == code
    if code == 250:  # stored as received; broken on delivery (tests/e2e/test_line_endings_postfix.py)
        assert stored.endswith(b"x" * 5000 + b"</html>\r\n")
    else:
        assert reply.lines[0].startswith("5.6.0") and messages == []


async def _bare_line_endings(port: int) -> list[SmtpReply]:
    client = await RawSmtp.connect(port)
    await client.reply()
    replies = [await client.command("EHLO client.test")]
    await client.send(b"MAIL FROM:<a@b.test>\n")
    replies.append(await client.reply())
    await client.send(b"MAIL FROM:<a@b.test>\rRCPT TO:<u@hosted.test>\r\n")
    replies.append(await client.reply())
    replies.append(await client.command(f"RCPT TO:<user@{HOSTED}>"))
    await client.close()
    return replies


def test_bare_line_endings_in_commands_are_refused(mailgate: InProcessMailgate) -> None:
    ehlo, bare_lf, bare_cr, rcpt = asyncio.run(_bare_line_endings(mailgate.port("mx")))

    assert ehlo.code == 250
    assert (bare_lf.code, bare_lf.lines[0][:5]) == (500, "5.5.2")  # RFC 5321 §2.3.8
    assert (bare_cr.code, bare_cr.lines[0][:5]) == (500, "5.5.2")
    assert rcpt.code == 503  # neither MAIL was executed


async def _pipelined_starttls(port: int, ca: str) -> list:
    client = await RawSmtp.connect(port)
    await client.reply()
    replies = [await client.command("EHLO client.test")]
    await client.send(b"STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n")
    replies.append(await client.reply())
    replies.append(await client.command("NOOP"))  # the MAIL above got no reply of its own
    replies.append(await client.command("STARTTLS"))  # STARTTLS alone is still possible
    await client.starttls(client_context(ca))
    replies.append(await client.command("EHLO client.test"))
    replies.append(await client.command(f"RCPT TO:<user@{HOSTED}>"))
    await client.close()
    return replies


def test_command_pipelined_behind_starttls_is_refused_and_never_executed(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    ehlo, starttls, noop, starttls_alone, ehlo_tls, rcpt = asyncio.run(
        _pipelined_starttls(mailgate.port("mx"), tls_files["ca"])
    )

    assert "STARTTLS" in ehlo.lines
    assert (starttls.code, starttls.lines[0][:5]) == (554, "5.5.1")  # RFC 3207 §4, CVE-2011-0411
    assert noop.code == 250
    assert starttls_alone.code == 220
    assert ehlo_tls.code == 250 and "STARTTLS" not in ehlo_tls.lines
    assert rcpt.code == 503  # the injected MAIL opened no transaction, before or after TLS
    assert queued(mailgate) == []


async def _plaintext_after_starttls(port: int) -> bytes:
    """The CVE-2011-0411 shape: the command arrives after the 220, in clear, before the handshake."""
    client = await RawSmtp.connect(port)
    await client.reply()
    await client.command("EHLO client.test")
    assert (await client.command("STARTTLS")).code == 220
    await client.send(b"MAIL FROM:<injected@attacker.test>\r\n")
    try:
        answer = await asyncio.wait_for(client.reader.read(), 10)
    except (ConnectionError, ssl.SSLError):
        answer = b""
    await client.close()
    return answer


def test_plaintext_sent_after_the_220_is_not_read_as_a_command(mailgate: InProcessMailgate) -> None:
    answer = asyncio.run(_plaintext_after_starttls(mailgate.port("mx")))

    assert not answer.startswith((b"250", b"5", b"4"))  # at most a TLS alert, never an SMTP reply
    assert queued(mailgate) == []


def test_by_default_lf_only_mail_with_long_lines_is_accepted_and_stored_normalized(tmp_path: Path) -> None:
    """A cron script's LF-only mail with a long line: 250, stored with CRLF (it was 550 5.5.2)."""
    body = b"Subject: cron\n\nline one\nline two\n" + b"z" * 1500 + b"\r\n"
    with InProcessMailgate(config_text(tmp_path)) as mg:
        reply = asyncio.run(_send_long_lines(mg.port("mx"), body))
        messages = queued(mg)
        stored = stored_message(mg, messages[0].queue_id) if messages else b""
    assert reply.code == 250
    assert stored.endswith(b"Subject: cron\r\n\r\nline one\r\nline two\r\n" + b"z" * 1500 + b"\r\n")


async def _bdat(port: int, content: bytes) -> list[SmtpReply]:
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    await client.reply()
    await client.command("EHLO client.test")
    await client.send(
        b"MAIL FROM:<a@sender.test>\r\n" + f"RCPT TO:<user@{HOSTED}>\r\n".encode()
        + b"BDAT %d LAST\r\n" % len(content) + content + b"QUIT\r\n"
    )
    replies = await client.replies(4)
    await client.close()
    return replies


@pytest.mark.parametrize("mode", ["normalize", "reject", "no"])
def test_bdat_with_a_fake_end_inside_its_chunk_is_one_message_in_every_mode(tmp_path: Path, mode: str) -> None:
    """BDAT counts octets (RFC 3030 §2): `LF.LF` and a whole transaction inside the chunk are text."""
    content = b"Subject: cover\r\n\r\ncover\n.\n" + SMUGGLED
    with InProcessMailgate(config_text(tmp_path, server_extra=f'bare_newline = "{mode}"')) as mg:
        replies = asyncio.run(_bdat(mg.port("mx"), content))
        messages = queued(mg)
        stored = stored_message(mg, messages[0].queue_id) if messages else b""
    assert [r.code for r in replies] == [250, 250, 550 if mode == "reject" else 250, 221]
    assert len(messages) == (mode != "reject")
    if mode == "normalize":
        assert stored.endswith(b"cover\r\n.\r\n" + SMUGGLED)
    elif mode == "no":
        assert stored.endswith(b"cover\n.\n" + SMUGGLED)


def test_an_lf_only_header_section_ends_at_its_empty_line_when_kept_as_sent(tmp_path: Path) -> None:
    """`bare_newline = "no"`: the header ends at the first empty line however its lines end, so
    Received lines quoted in the body are not counted as hops (they were: 554 5.4.6 loop)."""
    body = b"Subject: forwarded trace\nFrom: a@sender.test\n\n" + b"Received: from hop.test\n" * 60 + b"end\r\n"
    with InProcessMailgate(config_text(tmp_path, server_extra='bare_newline = "no"')) as mg:
        reply = asyncio.run(_send_long_lines(mg.port("mx"), body))
        messages = queued(mg)
        stored = stored_message(mg, messages[0].queue_id) if messages else b""
    assert reply.code == 250, reply
    assert stored.endswith(body)
