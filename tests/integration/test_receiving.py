"""The receiving side end to end over loopback: TLS, pipelining, BDAT, size limits, the message head.

Each test runs a real mailgate (`InProcessMailgate`) and checks the replies a client sees and what
the queue holds afterwards, byte for byte after our Received header.
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.auth.store import FileUserStore
from mailgate.server import cpu_handover, session as session_module
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import (
    EXTERNAL, HOSTED, HOSTNAME, REPLY_TIMEOUT, RawSmtp, client_context, config_text, only_message, queued,
    split_received,
)

pytestmark = pytest.mark.timeout(60)

MAX_SIZE = 65536
USER, PASSWORD = "alice", "correct horse battery"
# CRLF lines, a line starting with a dot (smtplib dot-stuffs it, we must unstuff it), 8-bit text.
MESSAGE = (
    b"From: <sender@external.test>\r\n"
    b"To: <user@hosted.test>\r\n"
    b"Subject: receiving test\r\n"
    b"Message-ID: <receiving-test@external.test>\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".A line that starts with a dot.\r\n"
    b"\r\n"
    b"Last line.\r\n"
)
TLS_COMMENT = re.compile(rb"\(TLSv1\.[23] [A-Z0-9_-]+\)")


@pytest.fixture
def mailgate(tmp_path: Path, tls_files: dict[str, str]) -> Iterator[InProcessMailgate]:
    FileUserStore(tmp_path / "users").add(USER, PASSWORD)
    text = config_text(tmp_path, tls_files, server_extra=f"max_message_size = {MAX_SIZE}")
    with InProcessMailgate(text) as mg:
        yield mg


def _transaction(body: bytes, *, sender: str = "sender@external.test") -> bytes:
    """EHLO, MAIL, RCPT, DATA with `body` (already dot-stuffed and terminated), QUIT."""
    return (
        b"EHLO client.test\r\n"
        + f"MAIL FROM:<{sender}>\r\nRCPT TO:<user@{HOSTED}>\r\nDATA\r\n".encode()
        + body
        + b"QUIT\r\n"
    )


def test_starttls_on_mx_stores_the_message_byte_identical(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    with smtplib.SMTP("127.0.0.1", mailgate.port("mx"), local_hostname="client.test", timeout=15) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        code, _ = smtp.starttls(context=client_context(tls_files["ca"]))
        assert code == 220
        smtp.ehlo()
        assert not smtp.has_extn("starttls")  # RFC 3207 §4.2: not offered again
        refused = smtp.sendmail("sender@external.test", [f"user@{HOSTED}"], MESSAGE)
        assert refused == {}

    summary, stored = only_message(mailgate)
    received, rest = split_received(stored)
    assert rest == MESSAGE
    assert summary.sender == "sender@external.test"
    assert [r[0] for r in summary.recipients] == [f"user@{HOSTED}"]
    assert received.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert f"by {HOSTNAME} (mailgate) with ESMTPS id {summary.queue_id}".encode() in received
    assert TLS_COMMENT.search(received), received
    assert f"for <user@{HOSTED}>;".encode() in received


def test_implicit_tls_on_smtps_with_auth_stores_the_message_byte_identical(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    context = client_context(tls_files["ca"])
    with smtplib.SMTP_SSL(
        "127.0.0.1", mailgate.port("smtps"), local_hostname="client.test", context=context, timeout=15
    ) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        smtp.login(USER, PASSWORD)
        smtp.sendmail(f"{USER}@{HOSTED}", [f"someone@{EXTERNAL}"], MESSAGE)

    summary, stored = only_message(mailgate)
    received, rest = split_received(stored)
    assert rest == MESSAGE  # Message-ID and Date present: nothing added
    assert f"with ESMTPSA id {summary.queue_id}".encode() in received  # RFC 3848
    assert TLS_COMMENT.search(received), received


def test_submission_adds_missing_message_id_and_date(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    bare = b"Subject: no id, no date\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", mailgate.port("submission"), timeout=15) as smtp:
        smtp.starttls(context=client_context(tls_files["ca"]))
        smtp.login(USER, PASSWORD)
        smtp.sendmail(f"{USER}@{HOSTED}", [f"user@{HOSTED}"], bare)

    summary, stored = only_message(mailgate)
    _, rest = split_received(stored)
    head, _, body = rest.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    assert re.search(rb"(?m)^Message-ID: <[^@>\s]+@mx\.test>\r?$", head), head
    assert re.search(rb"(?m)^Date: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r?$", head), head
    assert head.endswith(b"Subject: no id, no date")


def test_mx_does_not_add_message_id_or_date(mailgate: InProcessMailgate) -> None:
    bare = b"Subject: relayed as is\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", mailgate.port("mx"), timeout=15) as smtp:
        smtp.sendmail("sender@external.test", [f"user@{HOSTED}"], bare)
    _, stored = only_message(mailgate)
    assert split_received(stored)[1] == bare


async def _pipelined_transaction(port: int) -> list:
    client = await RawSmtp.connect(port)
    greeting = await client.reply()
    # RFC 2920: the whole dialogue in one write; the replies must come back in order.
    await client.send(_transaction(b"Subject: pipelined\r\n\r\nline one\r\n..dot\r\n.\r\n"))
    replies = [greeting, *await client.replies(6)]
    assert await client.at_eof()
    await client.close()
    return replies


def test_whole_transaction_in_one_write(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_pipelined_transaction(mailgate.port("mx")))

    assert [r.code for r in replies] == [220, 250, 250, 250, 354, 250, 221]
    assert "PIPELINING" in replies[1].lines
    summary, stored = only_message(mailgate)
    assert replies[5].text == f"2.0.0 OK queued as {summary.queue_id}"
    assert split_received(stored)[1] == b"Subject: pipelined\r\n\r\nline one\r\n.dot\r\n"


async def _bdat(port: int, chunks: list[bytes]) -> list:
    client = await RawSmtp.connect(port)
    await client.reply()
    await client.command("EHLO client.test")
    dialogue = b"MAIL FROM:<sender@external.test>\r\n" + f"RCPT TO:<user@{HOSTED}>\r\n".encode()
    for index, chunk in enumerate(chunks):
        last = " LAST" if index == len(chunks) - 1 else ""
        dialogue += f"BDAT {len(chunk)}{last}\r\n".encode() + chunk
    await client.send(dialogue)  # RFC 3030 §4.2: BDAT chunks may be pipelined
    replies = await client.replies(2 + len(chunks))
    assert (await client.command("QUIT")).code == 221
    await client.close()
    return replies


def test_bdat_in_three_chunks_is_stored_byte_exact(mailgate: InProcessMailgate) -> None:
    # Chunks split mid-line, a bare "." line and "\r\n.\r\n" inside: BDAT has no dot-stuffing.
    chunks = [b"Subject: chunked\r\n\r\nfirst half of a li", b"ne\r\n.\r\n..not stuffed\r\n", b"end\r\n"]
    replies = asyncio.run(_bdat(mailgate.port("mx"), chunks))

    assert [r.code for r in replies] == [250, 250, 250, 250, 250]
    assert replies[2].text == f"2.0.0 {len(chunks[0])} octets received"
    summary, stored = only_message(mailgate)
    assert replies[-1].text == f"2.0.0 OK queued as {summary.queue_id}"
    assert split_received(stored)[1] == b"".join(chunks)


BIG = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * (MAX_SIZE // 80 + 1)


def test_bdat_last_chunk_over_the_size_limit_is_refused(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_bdat(mailgate.port("mx"), [BIG]))

    assert [r.code for r in replies] == [250, 250, 552]
    assert replies[-1].lines[0].startswith("5.3.4 ")  # RFC 1870 §6, RFC 3030 §2
    assert queued(mailgate) == []


def test_bdat_chunk_over_the_size_limit_fails_the_transaction(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_bdat(mailgate.port("mx"), [BIG, b"tail\r\n"]))

    # The oversize chunk is read whole and refused; the transaction is gone, so the LAST chunk
    # is read (framing kept) and refused as out of sequence (RFC 3030 §2).
    assert [r.code for r in replies] == [250, 250, 552, 503]
    assert replies[2].lines[0].startswith("5.3.4 ")
    assert queued(mailgate) == []


async def _bdat_with_unreadable_size(port: int) -> tuple[list, bool]:
    client = await RawSmtp.connect(port)
    await client.reply()
    await client.command("EHLO client.test")
    # The "chunk" hides a whole transaction; with framing lost it must never be executed.
    hidden = f"RSET\r\nMAIL FROM:<hidden@external.test>\r\nRCPT TO:<user@{HOSTED}>\r\nDATA\r\n"
    dialogue = b"MAIL FROM:<sender@external.test>\r\n" + f"RCPT TO:<user@{HOSTED}>\r\n".encode()
    await client.send(dialogue + b"BDAT 0x40 LAST\r\n" + hidden.encode() + b"hidden\r\n.\r\n")
    replies = await client.replies(3)
    closed = await client.at_eof()
    await client.close()
    return replies, closed


def test_bdat_size_that_does_not_parse_closes_the_connection_with_421(mailgate: InProcessMailgate) -> None:
    replies, closed = asyncio.run(_bdat_with_unreadable_size(mailgate.port("mx")))

    assert [r.code for r in replies] == [250, 250, 421]  # RFC 3030 §2: framing cannot be recovered
    assert replies[-1].lines[0].startswith("4.5.2 ")
    assert closed
    assert queued(mailgate) == []


async def _data_then_small_message(port: int, big: bytes) -> list:
    client = await RawSmtp.connect(port)
    await client.reply()
    await client.send(_transaction(big + b".\r\n").replace(b"QUIT\r\n", b""))
    replies = await client.replies(5)
    # The session goes on: a small message in the same connection is accepted.
    await client.send(_transaction(b"Subject: small\r\n\r\nsmall\r\n.\r\n"))
    replies += await client.replies(6)
    await client.close()
    return replies


def test_data_over_the_size_limit_is_refused_after_the_end_of_data(mailgate: InProcessMailgate) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 98 + b"\r\n") * (MAX_SIZE // 100 + 10)
    replies = asyncio.run(_data_then_small_message(mailgate.port("mx"), big))

    assert [r.code for r in replies] == [250, 250, 250, 354, 552, 250, 250, 250, 354, 250, 221]
    assert replies[4].lines[0].startswith("5.3.4 ")  # RFC 5321 §4.5.3.1.7, RFC 1870 §6
    _, stored = only_message(mailgate)
    assert split_received(stored)[1] == b"Subject: small\r\n\r\nsmall\r\n"


async def _mail_with_size(port: int, size: int) -> list:
    client = await RawSmtp.connect(port)
    await client.reply()
    replies = [await client.command("EHLO client.test")]
    replies.append(await client.command(f"MAIL FROM:<sender@{EXTERNAL}> SIZE={size}"))
    replies.append(await client.command(f"MAIL FROM:<sender@{EXTERNAL}> SIZE={MAX_SIZE}"))
    await client.close()
    return replies


def test_declared_size_over_the_limit_is_refused_at_mail(mailgate: InProcessMailgate) -> None:
    ehlo, too_big, fits = asyncio.run(_mail_with_size(mailgate.port("mx"), MAX_SIZE + 1))

    assert f"SIZE {MAX_SIZE}" in ehlo.lines  # RFC 1870 §4
    assert too_big.code == 552 and too_big.lines[0].startswith("5.3.4 ")  # RFC 1870 §6.1
    assert fits.code == 250


def _message_with_received_headers(count: int) -> bytes:
    trace = b"".join(
        f"Received: from hop{n}.test by hop{n + 1}.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n".encode()
        for n in range(count)
    )
    return trace + b"Subject: loop?\r\n\r\nbody\r\n"


@pytest.mark.parametrize("count, accepted", [(50, True), (51, False)])
def test_mail_loop_is_refused_past_the_received_limit(
    mailgate: InProcessMailgate, count: int, accepted: bool
) -> None:
    message = _message_with_received_headers(count)
    with smtplib.SMTP("127.0.0.1", mailgate.port("mx"), timeout=15) as smtp:
        if accepted:
            smtp.sendmail("sender@external.test", [f"user@{HOSTED}"], message)
        else:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("sender@external.test", [f"user@{HOSTED}"], message)
            assert refused.value.smtp_code == 554
            assert refused.value.smtp_error.startswith(b"5.4.6 ")  # RFC 5321 §6.3

    if accepted:
        _, stored = only_message(mailgate)
        assert split_received(stored)[1] == message
    else:
        assert queued(mailgate) == []


async def _utf8_transaction(port: int) -> list:
    client = await RawSmtp.connect(port)
    await client.reply()
    await client.command("EHLO client.test")
    replies = [
        await client.command("MAIL FROM:<sender@external.test> SMTPUTF8"),
        await client.command(f"RCPT TO:<用户@{HOSTED}>"),
        await client.command("DATA"),
    ]
    await client.send("Subject: ünïcode\r\n\r\nbody\r\n.\r\n".encode())
    replies.append(await client.reply())
    await client.close()
    return replies


def test_smtputf8_transaction_is_traced_as_utf8smtp(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_utf8_transaction(mailgate.port("mx")))

    assert [r.code for r in replies] == [250, 250, 354, 250]
    summary, stored = only_message(mailgate)
    received, rest = split_received(stored)
    assert f"with UTF8SMTP id {summary.queue_id}".encode() in received  # RFC 6531 §3.7.3
    assert f"for <用户@{HOSTED}>".encode() in received
    assert rest == "Subject: ünïcode\r\n\r\nbody\r\n".encode()


async def _idle_client(port: int) -> tuple:
    client = await RawSmtp.connect(port)
    greeting = await client.reply()
    await client.command("EHLO client.test")
    timeout = await client.reply()  # sent by the server after command_timeout of silence
    closed = await client.at_eof()
    await client.close()
    return greeting, timeout, closed


def test_idle_client_is_disconnected_after_the_command_timeout(tmp_path: Path) -> None:
    with InProcessMailgate(config_text(tmp_path, mx_extra="command_timeout = 1")) as mg:
        greeting, timeout, closed = asyncio.run(_idle_client(mg.port("mx")))

    assert greeting.code == 220
    assert (timeout.code, timeout.lines[0][:5]) == (421, "4.4.2")  # RFC 5321 §4.5.3.2.7
    assert closed


def test_reply_to_the_end_of_data_goes_out_before_the_cpu_is_given_up_and_the_records_follow(
    mailgate: InProcessMailgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux wakes a local client on the session's CPU: a lightly loaded worker must yield it
    after the 250 and before the message's records and hand-off, on a reused connection too."""
    events: list[str] = []
    original_flush = session_module.Session._flush

    async def flush(self) -> None:
        if b"queued as" in self.out:
            events.append("reply")
        await original_flush(self)

    class QueuedRecords(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("queued "):
                events.append("records")

    handler = QueuedRecords(logging.INFO)
    smtp_log = logging.getLogger("mailgate.smtp")
    level = smtp_log.level
    smtp_log.setLevel(logging.INFO)
    smtp_log.addHandler(handler)
    monkeypatch.setattr(session_module.Session, "_flush", flush)
    monkeypatch.setattr(cpu_handover.os, "sched_yield", lambda: events.append("yield"))
    try:
        with smtplib.SMTP("127.0.0.1", mailgate.port("mx"), timeout=REPLY_TIMEOUT) as client:
            for number in (1, 2):
                time.sleep(cpu_handover.QUIET_SECONDS * 10)  # a lightly loaded worker
                client.sendmail("sender@external.test", [f"user@{HOSTED}"], f"Subject: {number}\r\n\r\nbody\r\n")
        deadline = time.monotonic() + REPLY_TIMEOUT
        while events.count("records") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        smtp_log.removeHandler(handler)
        smtp_log.setLevel(level)

    assert events == ["reply", "yield", "records"] * 2
