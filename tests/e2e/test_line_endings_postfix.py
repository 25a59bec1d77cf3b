"""Bare line endings, SMTP smuggling and long lines end to end, with Postfix as the next hop
(issue 13 item 10).

mailgate runs in-process and relays to a real Postfix receiver. For every `server.bare_newline`
mode, an untrusted client sends each fake end of data (`LF.LF`, `CRLF.LF`, `CR.CR` ...) followed
by a whole second transaction; Postfix must receive exactly one message per session (none under
`reject`), each holding the fake transaction as text and ending at the real end of data. Long
lines are accepted and reach Postfix broken at 998 octets; internal mail with long and LF-only
lines is DKIM-signed and the signature verifies on the bytes Postfix delivered.
"""

from __future__ import annotations

import asyncio
import email
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from mailgate.auth.dkim_keys import generate_private_key, key_from_bytes, write_private_key
from tests.conftest import free_port, require_binary
from tests.support.config_text import hosted_domain, relay_config
from tests.support.mailgate_server import InProcessMailgate
from tests.support.postfix import PostfixInstance, start_receiver
from tests.support.receiving import HOSTED, UNTRUSTED_SOURCE, RawSmtp, queued

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FAKE_ENDS = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n.\r", b"\r.\r", b"\r\n.\r", b".\n", b"\n\n.\n\n"]
SIGNED = "signer.test"


def _config(tmp_path: Path, hop: int, mode: str, extra: str = "") -> str:
    return relay_config(
        tmp_path / "spool", free_port(),
        hosted_domain(f"127.0.0.1:{hop}", HOSTED, 'tls = "none"\n'), '[delivery]\nretry_schedule = ["1s"]\n' + extra,
        hostname="relay.test", server=f'self_audit = false\nbare_newline = "{mode}"\n',
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[PostfixInstance]:
    require_binary("postfix")
    with start_receiver(free_port(), [HOSTED]) as postfix:
        yield postfix


def _wait_sent(mg: InProcessMailgate, timeout: float = 60.0) -> None:
    for _ in range(int(timeout * 10)):  # bounded
        if not queued(mg):
            return
        asyncio.run(asyncio.sleep(0.1))
    raise AssertionError(f"still queued: {queued(mg)}")


async def _session(port: int, subject: str, content: bytes, source: str | None = UNTRUSTED_SOURCE) -> list[int]:
    client = await RawSmtp.connect(port, source=source)
    codes = [(await client.reply()).code]
    await client.send(
        b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\n" + f"RCPT TO:<user@{HOSTED}>\r\nDATA\r\n".encode()
    )
    codes += [reply.code for reply in await client.replies(4)]
    await client.send(f"Subject: {subject}\r\n".encode() + content + b"\r\n.\r\n")
    codes.append((await client.reply()).code)
    codes.append((await client.command("QUIT")).code)
    await client.close()
    return codes


def _smuggling_content(fake_end: bytes) -> bytes:
    return (
        b"\r\ncover text" + fake_end + b"MAIL FROM:<ceo@bank.test>\r\n"
        + f"RCPT TO:<victim@{HOSTED}>\r\nDATA\r\nSubject: smuggled\r\n\r\npay now".encode()
    )


def test_no_smuggled_message_reaches_postfix_in_any_mode(tmp_path: Path, receiver: PostfixInstance) -> None:
    before = len(receiver.delivered())
    expected = 0
    for mode in ("reject", "normalize", "no"):
        with InProcessMailgate(_config(tmp_path / mode, receiver.port, mode)) as mg:
            for number, fake_end in enumerate(FAKE_ENDS):
                codes = asyncio.run(_session(mg.port("mx"), f"cover {mode} {number}", _smuggling_content(fake_end)))
                assert codes == [220, 250, 250, 250, 354, 550 if mode == "reject" else 250, 221], (mode, fake_end)
            _wait_sent(mg)
        expected += 0 if mode == "reject" else len(FAKE_ENDS)
    delivered = receiver.wait_delivered(before + expected, timeout=60)[before:]
    assert len(delivered) == expected
    subjects = set()
    for path in delivered:
        raw = path.read_bytes()
        parsed = email.message_from_bytes(raw)
        subjects.add(parsed["Subject"])
        assert parsed["Subject"].startswith("cover "), raw  # never the smuggled transaction's own
        assert parsed["Return-Path"] == "<a@sender.test>"
        assert b"victim@" in raw and raw.rstrip(b"\n").endswith(b"pay now"), raw  # nothing past the real end
    assert len(subjects) == expected
    assert "from=<ceo@bank.test>" not in receiver.maillog()


def test_long_lines_reach_postfix_broken_at_998(tmp_path: Path, receiver: PostfixInstance) -> None:
    before = len(receiver.delivered())
    header = "X-Long: " + " ".join(f"token{n}" for n in range(600))
    content = f"{header}\r\n\r\n<html>".encode() + b"x" * 5000 + b"</html>\r\nshort line"
    with InProcessMailgate(_config(tmp_path, receiver.port, "normalize")) as mg:
        assert asyncio.run(_session(mg.port("mx"), "newsletter", content))[5] == 250
        _wait_sent(mg)
    [path] = receiver.wait_delivered(before + 1, timeout=60)[before:]
    raw = path.read_bytes()
    assert max(len(line) for line in raw.split(b"\n")) <= 998
    parsed = email.message_from_bytes(raw)
    assert " ".join(parsed["X-Long"].split()) == header.split(": ", 1)[1]  # folded, same value
    body = raw.split(b"\n\n", 1)[1]
    assert body.replace(b"\n ", b"") == b"<html>" + b"x" * 5000 + b"</html>\nshort line\n"


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dkim")
    pem = generate_private_key("rsa")
    write_private_key(folder / "s1.key", pem)
    return key_from_bytes(pem, SIGNED, "s1", str(folder / "s1.key"))


def test_signed_mail_with_long_and_bare_lf_lines_verifies_as_delivered(
    tmp_path: Path, receiver: PostfixInstance, rsa_key
) -> None:
    """Internal mail is signed in its wire form: Postfix's copy (long lines broken, LF made CRLF
    by mailgate) verifies with the published key."""
    before = len(receiver.delivered())
    keys = f'\n[[dkim_key]]\ndomain = "{SIGNED}"\nselector = "s1"\nkey_file = "{rsa_key.path}"\n'
    content = (
        f"From: Boss <boss@{SIGNED}>\nTo: user@{HOSTED}\nDate: Sat, 05 Dec 2026 10:00:00 +0000\n"
        f"Message-ID: <long@{SIGNED}>\n\n"
    ).encode() + b"LF-only line\n" + b"y" * 2500 + b"\nend"
    with InProcessMailgate(_config(tmp_path, receiver.port, "no") + keys) as mg:
        # From 127.0.0.1 (trusted): internal, so signed; mode "no" stores the bare LFs as sent.
        assert asyncio.run(_session(mg.port("mx"), "signed", content, source=None))[5] == 250
        _wait_sent(mg)
    [path] = receiver.wait_delivered(before + 1, timeout=60)[before:]
    delivered = path.read_bytes().replace(b"\n", b"\r\n")  # maildir stores LF line ends
    assert b"DKIM-Signature:" in delivered
    assert max(len(line) for line in delivered.split(b"\r\n")) <= 998
    txt = rsa_key.txt_record().encode()
    assert dkim.verify(delivered, dnsfunc=lambda name, timeout=5: txt)
