"""RET=FULL from an untrusted client is kept as RET=HDRS (issue 21 item 5), and so it reaches the
next hop: a DSN the internal server writes later carries no body either. Trusted and
authenticated clients keep RET=FULL. The next hop is a capture server that records MAIL's
parameters."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from mailgate.app import Application
from mailgate.auth.store import FileUserStore
from mailgate.config.loader import load_file
from mailgate.core.envelope import Ret
from tests.conftest import free_port
from tests.support.capture_server import CaptureServer
from tests.support.config_text import hosted_domain, relay_config
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import EXTERNAL, HOSTED, UNTRUSTED_SOURCE, RawSmtp, client_context, config_text, queued

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path: Path, hop: int) -> str:
    return relay_config(
        tmp_path / "spool", free_port(), hosted_domain(f"127.0.0.1:{hop}", HOSTED, 'tls = "none"\n'),
        hostname="relay.test", server="self_audit = false\n",
    )


async def _relay(tmp_path: Path, source: str | None, ret: str) -> list[str]:
    async with CaptureServer() as hop:
        with InProcessMailgate(_config(tmp_path, hop.port)) as mg:
            client = await RawSmtp.connect(mg.port("mx"), source=source)
            await client.reply()
            for line in ("EHLO sender.test", f"MAIL FROM:<someone@{EXTERNAL}> RET={ret}", f"RCPT TO:<user@{HOSTED}>", "DATA"):
                await client.command(line)
            await client.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
            assert (await client.reply()).code == 250
            await client.close()
            for _ in range(300):  # bounded: until the capture server has the message
                if hop.completed:
                    break
                await asyncio.sleep(0.1)
            [transaction] = hop.completed
            return transaction.mail_params


@pytest.mark.parametrize(
    ("source", "ret", "passed_on"),
    [
        (UNTRUSTED_SOURCE, "FULL", "RET=HDRS"),  # downgraded
        (UNTRUSTED_SOURCE, "HDRS", "RET=HDRS"),
        ("127.0.0.1", "FULL", "RET=FULL"),  # trusted network: kept
    ],
)
def test_ret_full_from_an_untrusted_client_reaches_the_next_hop_as_hdrs(tmp_path: Path, source, ret, passed_on) -> None:
    params = asyncio.run(_relay(tmp_path, source, ret))
    assert passed_on in params, params


def test_an_authenticated_user_keeps_ret_full_where_an_outsider_gets_hdrs(tmp_path: Path, tls_files: dict[str, str]) -> None:
    """The same untrusted address (127.0.0.2): after AUTH on submission RET=FULL stays; without
    AUTH on the MX port it is kept as HDRS. Both wait in the queue (the next hop is down)."""
    FileUserStore(tmp_path / "users").add("alice", "correct horse battery", [f"alice@{HOSTED}"])
    message = f"From: alice@{HOSTED}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    with InProcessMailgate(config_text(tmp_path, tls_files)) as mg:
        with smtplib.SMTP("127.0.0.1", mg.port("submission"), source_address=(UNTRUSTED_SOURCE, 0), timeout=15) as smtp:
            smtp.starttls(context=client_context(tls_files["ca"]))
            smtp.login("alice", "correct horse battery")
            smtp.sendmail(f"alice@{HOSTED}", [f"friend@{EXTERNAL}"], message, mail_options=["RET=FULL"])
        with smtplib.SMTP("127.0.0.1", mg.port("mx"), source_address=(UNTRUSTED_SOURCE, 0), timeout=15) as smtp:
            outsider = message.replace(f"alice@{HOSTED}".encode(), f"someone@{EXTERNAL}".encode())
            smtp.sendmail(f"someone@{EXTERNAL}", [f"user@{HOSTED}"], outsider, mail_options=["RET=FULL"])
        kept = {}
        for summary in queued(mg):
            stored = mg.call(mg.app.store.get(summary.queue_id))
            kept[summary.sender] = stored.envelope.ret
    assert kept == {f"alice@{HOSTED}": Ret.FULL, f"someone@{EXTERNAL}": Ret.HDRS}



def test_serve_warns_about_a_hosted_domain_that_accepts_every_recipient_at_start_and_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The running server says at start and at every reload what `config check` says: the domain
    bounces unknown users after the 250 unless it gets recipient_sources or local_parts. Only
    worker 0 says it, once for the whole server. (No socket: reload() only swaps settings.)"""
    path = tmp_path / "mailgate.toml"
    path.write_text(_config(tmp_path, free_port()))
    with caplog.at_level("WARNING", logger="mailgate"):
        first, second = Application(load_file(path)), Application(load_file(path), worker_index=1, workers=2)
        first.reload()
    first.log.close()
    second.log.close()
    warnings = [r.getMessage() for r in caplog.records if "no recipient_sources or local_parts" in r.getMessage()]
    assert len(warnings) == 2 and all(HOSTED in text and "backscatter" in text for text in warnings)
