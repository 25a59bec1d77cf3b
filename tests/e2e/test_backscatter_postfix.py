"""Backscatter (issue 21 item 5): mail from an untrusted client never comes back to a third
party with its content.

An untrusted client (127.0.0.2) names an outside address as sender, asks for RET=FULL and writes
to an unknown user of a hosted domain whose internal server is a real Postfix that knows only
`known@`. With recipient validation the unknown user is refused at RCPT and no DSN exists. Without
it the bounce cannot be avoided (Postfix refuses after mailgate's 250), and the DSN queued for
the outside address holds the headers only: RET=FULL was downgraded at MAIL, for the next hop
too. A trusted client's RET=FULL still gets the whole message back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_binary
from tests.support.config_text import hosted_domain, relay_config
from tests.support.mailgate_server import InProcessMailgate
from tests.support.postfix import PostfixInstance, start_receiver
from tests.support.receiving import EXTERNAL, HOSTED, UNTRUSTED_SOURCE, RawSmtp, queued, stored_message

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SECRET = b"SECRET-BODY-LINE: spam payload for the victim"


def _config(tmp_path: Path, hop: int, validation: bool) -> str:
    sources = ""
    domain_sources = ""
    if validation:
        users = tmp_path / "recipients"
        users.write_text(f"known@{HOSTED}\n")
        domain_sources = 'recipient_sources = ["users"]\n'
        sources = f'\n[[recipient_source]]\nname = "users"\ntype = "file"\npath = "{users}"\n'
    return relay_config(
        tmp_path / "spool", free_port(),
        hosted_domain(f"127.0.0.1:{hop}", HOSTED, 'tls = "none"\n' + domain_sources),
        f'[delivery]\nsmart_host = "127.0.0.1:{free_port()}"\nretry_schedule = ["1h"]\n' + sources,
        hostname="relay.test", server="self_audit = false\n",
    )


@pytest.fixture(scope="module")
def internal() -> Iterator[PostfixInstance]:
    require_binary("postfix")
    with start_receiver(free_port(), [HOSTED], mailboxes=[f"known@{HOSTED}"]) as postfix:
        yield postfix


async def _send(port: int, source: str | None) -> list[int]:
    client = await RawSmtp.connect(port, source=source)
    codes = [(await client.reply()).code]
    for line in (
        "EHLO sender.test", f"MAIL FROM:<victim@{EXTERNAL}> RET=FULL ENVID=x1", f"RCPT TO:<nobody@{HOSTED}>",
    ):
        codes.append((await client.command(line)).code)
    if codes[-1] == 250:
        codes.append((await client.command("DATA")).code)
        await client.send(
            f"From: victim@{EXTERNAL}\r\nTo: nobody@{HOSTED}\r\nSubject: hello\r\n\r\n".encode() + SECRET + b"\r\n.\r\n"
        )
        codes.append((await client.reply()).code)
    await client.command("QUIT")
    await client.close()
    return codes


def _dsn(mg: InProcessMailgate, timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports = [m for m in queued(mg) if m.sender == ""]
        if reports:
            [report] = reports
            assert [r[0] for r in report.recipients] == [f"victim@{EXTERNAL}"]
            return stored_message(mg, report.queue_id)
        time.sleep(0.1)
    raise AssertionError(f"no DSN queued: {queued(mg)}")


def test_unknown_user_is_refused_at_rcpt_when_validation_could_refuse_it(tmp_path: Path, internal) -> None:
    with InProcessMailgate(_config(tmp_path, internal.port, validation=True)) as mg:
        codes = asyncio.run(_send(mg.port("mx"), UNTRUSTED_SOURCE))
        assert codes == [220, 250, 250, 550]  # RFC 5321 §4.2.2 550 5.1.1 at RCPT: nothing to bounce
        assert queued(mg) == []


def test_unavoidable_bounce_of_untrusted_mail_returns_headers_only(tmp_path: Path, internal) -> None:
    with InProcessMailgate(_config(tmp_path, internal.port, validation=False)) as mg:
        assert asyncio.run(_send(mg.port("mx"), UNTRUSTED_SOURCE)) == [220, 250, 250, 250, 354, 250]
        report = _dsn(mg)
    assert b"550 5.1.1" in report  # Postfix's refusal after mailgate's 250
    assert b"text/rfc822-headers" in report and b"Subject: hello" in report
    assert SECRET not in report and b"message/rfc822" not in report


def test_trusted_client_keeps_ret_full(tmp_path: Path, internal) -> None:
    with InProcessMailgate(_config(tmp_path, internal.port, validation=False)) as mg:
        assert asyncio.run(_send(mg.port("mx"), None)) == [220, 250, 250, 250, 354, 250]
        report = _dsn(mg)
    assert b"message/rfc822" in report and SECRET in report
