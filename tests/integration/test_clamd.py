"""The clamd client and the screener's antivirus step against the real clamd (Debian's
clamav-daemon), started privately with a test signature matching EICAR."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.core.reply import SCANNER_UNAVAILABLE
from mailgate.screen import ScreenContext
from mailgate.screen.clamd import ClamdClient, ClamdError
from tests.conftest import free_port, require_binary
from tests.support.clamd import EICAR, SIGNATURE_NAME, ClamdInstance, start_clamd
from tests.support.screening import scanner_defaults, screener_from

pytestmark = [pytest.mark.timeout(120), pytest.mark.e2e]

CTX = ScreenContext("inbound", "mallory@evil.example", ["ben@hosted.test"], "192.0.2.7", "evil.example")
DATA = Path(__file__).parent.parent / "data" / "mime"
ANTIVIRUS = scanner_defaults("antivirus")  # the schema's time-out and StreamMaxLength


@pytest.fixture(scope="module")
def clamd() -> Iterator[ClamdInstance]:
    binary = require_binary("clamd")
    with start_clamd(binary, free_port()) as instance:
        yield instance


def _opener(data: bytes):
    return lambda: io.BytesIO(data)


def _mail_with_attachment(name: str, payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        b"From: mallory@evil.example\r\nTo: ben@hosted.test\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n'
        b"see attachment\r\n--b1\r\nContent-Type: application/octet-stream; name=\"" + name.encode()
        + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + encoded + b"--b1--\r\n"
    )


def _zipped(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, payload)
    return buffer.getvalue()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_clean_and_infected_over_both_transports(clamd: ClamdInstance, transport: str) -> None:
    address = clamd.unix_address if transport == "unix" else clamd.tcp_address
    client = ClamdClient(address, timeout=30, max_bytes=ANTIVIRUS.max_size)

    async def run() -> None:
        assert await client.ping()
        clean = await client.scan(_opener((DATA / "outlook_mixed.eml").read_bytes()))
        assert not clean.infected
        infected = await client.scan(_opener(_mail_with_attachment("eicar.com", EICAR)))
        assert infected.infected
        assert infected.signature is not None and infected.signature.startswith(SIGNATURE_NAME)

    asyncio.run(run())


def test_eicar_inside_a_zip_attachment_is_found(clamd: ClamdInstance) -> None:
    message = _mail_with_attachment("invoice.zip", _zipped("invoice.com", EICAR))
    result = asyncio.run(ClamdClient(clamd.unix_address, timeout=ANTIVIRUS.timeout, max_bytes=ANTIVIRUS.max_size).scan(_opener(message)))
    assert result.infected


def test_a_message_streamed_in_many_chunks_is_scanned_whole(clamd: ClamdInstance) -> None:
    # Over 1 MiB of padding before the virus: the signature sits far beyond the first chunk.
    message = _mail_with_attachment("big.bin", b"A" * (1024 * 1024 + 17) + EICAR)
    result = asyncio.run(ClamdClient(clamd.tcp_address, timeout=ANTIVIRUS.timeout, max_bytes=ANTIVIRUS.max_size).scan(_opener(message)))
    assert result.infected


def test_screener_refuses_an_infected_message_naming_the_signature(
    clamd: ClamdInstance, caplog: pytest.LogCaptureFixture,
) -> None:
    screener = screener_from([], {"clamd": clamd.unix_address, "timeout": 30}, {})
    message = _mail_with_attachment("eicar.com", EICAR)
    with caplog.at_level(logging.INFO, logger="mailgate.screen"):
        verdict = asyncio.run(screener.screen(CTX, _opener(message), len(message)))
    assert verdict.action == "reject"
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (554, "5.7.1")
    assert SIGNATURE_NAME in verdict.reply.text
    assert verdict.rule == "antivirus"
    assert any("verdict=reject rule=antivirus" in record.getMessage() for record in caplog.records)


def test_screener_quarantines_when_so_configured(clamd: ClamdInstance) -> None:
    screener = screener_from([], {"clamd": clamd.tcp_address, "action": "quarantine"}, {})
    message = _mail_with_attachment("eicar.com", EICAR)
    verdict = asyncio.run(screener.screen(CTX, _opener(message), len(message)))
    assert verdict.action == "quarantine"
    assert SIGNATURE_NAME in verdict.reason


def test_screener_accepts_a_clean_message(clamd: ClamdInstance) -> None:
    screener = screener_from([], {"clamd": clamd.unix_address}, {})
    message = (DATA / "apple_inline.eml").read_bytes()
    verdict = asyncio.run(screener.screen(CTX, _opener(message), len(message)))
    assert verdict.action == "accept" and verdict.reply is None


def test_unreachable_clamd_is_a_temporary_failure_unless_failing_open(tmp_path: Path) -> None:
    missing = f"unix:{tmp_path / 'no-clamd.sock'}"
    message = (DATA / "plain_clean.eml").read_bytes()
    closed = screener_from([], {"clamd": missing}, {})
    verdict = asyncio.run(closed.screen(CTX, _opener(message), len(message)))
    assert verdict.action == "tempfail" and verdict.reply == SCANNER_UNAVAILABLE
    open_ = screener_from([], {"clamd": missing, "fail_open": True}, {})
    assert asyncio.run(open_.screen(CTX, _opener(message), len(message))).action == "accept"
    with pytest.raises(ClamdError):
        asyncio.run(ClamdClient(missing, timeout=ANTIVIRUS.timeout, max_bytes=ANTIVIRUS.max_size).scan(_opener(message)))


def test_a_silent_clamd_times_out(tmp_path: Path) -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ClamdError, match="timed out"):
                await ClamdClient(f"tcp:127.0.0.1:{port}", timeout=0.5, max_bytes=ANTIVIRUS.max_size).scan(_opener(b"x" * 10))
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())
