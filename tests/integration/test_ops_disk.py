"""Disk back-pressure through the real server on a real, small file system (SPEC §4, issue
"Operations").

The spool of an in-process mailgate lives on an 8 MiB tmpfs with `disk_soft_free = 3M`,
`disk_hard_free = 1M`, checked every 0.2 s (inode thresholds off). A real file fills the tmpfs:
- below soft: MAIL gets 452 4.3.1 (RFC 3463 §3.4 "mail system full"), /readyz answers 503;
- below hard: a new connection gets 421 4.3.1 and is closed before any greeting;
- the file deleted: service comes back by itself (MAIL and DATA answered 250), /readyz 200;
- a message queued before the pressure is still in the store, byte-identical.
The state changes are awaited through /readyz (a bounded poll), the behaviour checked over SMTP.
Mounting needs root: skipped elsewhere, failed in CI (MAILGATE_REQUIRE_E2E=1).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.tmpfs import mounted_tmpfs
from tests.conftest import free_port
from tests.support.mailgate_server import InProcessMailgate, readyz
from tests.support.receiving import HOSTED, RawSmtp, SmtpReply, config_text, queued, stored_message

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
SOFT_FREE, HARD_FREE = 3 * MIB, 1 * MIB
MESSAGE = b"Subject: queued before the pressure\r\n\r\nkeep me\r\n"
UNTRUSTED_SOURCE = "127.0.0.4"  # not trusted, and not the self-audit's 127.0.0.2



@pytest.fixture
def spool_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted as `tmp_path/spool` (config_text's spool_dir), unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "spool", "size=8m,mode=0700") as mount_point:
        yield mount_point


def _free_bytes(path: Path) -> int:
    result = os.statvfs(path)
    return result.f_bavail * result.f_frsize


def _fill_until_free(filler: Path, spool: Path, target_free: int) -> None:
    """Append to `filler` until the file system has at most `target_free` bytes free."""
    with open(filler, "ab") as handle:
        while (missing := _free_bytes(spool) - target_free) > 0:
            handle.write(b"\xa5" * min(missing, MIB))
            handle.flush()


def _await_readiness(port: int, status: int, text: str) -> str:
    """Poll /readyz (bounded) until it answers `status` with `text` in its body; the body."""
    deadline = time.monotonic() + 15
    while True:
        answer = readyz(port)
        if answer[0] == status and text in answer[1]:
            return answer[1]
        assert time.monotonic() < deadline, f"/readyz still answers {answer}, expected {status} {text!r}"
        time.sleep(0.05)


def _short(reply: SmtpReply) -> str:
    """"452 4.3.1" for a reply with an enhanced code, else "220"."""
    enhanced = reply.lines[0][:5]
    return f"{reply.code} {enhanced}" if enhanced[1:2] == "." else str(reply.code)


async def _mail_attempt(port: int) -> list[str]:
    """Greeting, EHLO, MAIL and, when MAIL is accepted, RCPT, DATA and the message: every reply."""
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    try:
        replies = [await client.reply(), await client.command("EHLO client.test"),
                   await client.command("MAIL FROM:<sender@external.test>")]
        if replies[-1].code == 250:
            replies.append(await client.command(f"RCPT TO:<user@{HOSTED}>"))
            replies.append(await client.command("DATA"))
            await client.send(MESSAGE + b".\r\n")
            replies.append(await client.reply())
        await client.command("QUIT")
        return [_short(reply) for reply in replies]
    finally:
        await client.close()


async def _connection_while_hard(port: int) -> tuple[str, bool]:
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    try:
        return str(await client.reply()), await client.at_eof()
    finally:
        await client.close()


async def _open_transaction(port: int) -> RawSmtp:
    """A client that says MAIL and RCPT before the pressure, and DATA under it."""
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    assert (await client.reply()).code == 220
    assert (await client.command("EHLO client.test")).code == 250
    assert (await client.command("MAIL FROM:<early@external.test>")).code == 250
    assert (await client.command(f"RCPT TO:<user@{HOSTED}>")).code == 250
    return client


@dataclass
class Observed:
    """What the scenario saw, checked after the server has stopped."""

    before: list[str] = field(default_factory=list)
    queue_id: str = ""
    body_before: bytes = b""
    soft_reason: str = ""
    soft: list[str] = field(default_factory=list)
    soft_data: str = ""
    hard_reason: str = ""
    hard: tuple[str, bool] = ("", False)
    after: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    body_after: bytes = b""


async def _pressure_scenario(mg: InProcessMailgate, spool: Path, metrics_port: int) -> Observed:
    seen = Observed()
    port, filler = mg.port("mx"), spool / "filler"
    await asyncio.to_thread(_await_readiness, metrics_port, 200, "ready")
    seen.before = await _mail_attempt(port)
    [summary] = queued(mg)
    seen.queue_id, seen.body_before = summary.queue_id, stored_message(mg, summary.queue_id)
    early = await _open_transaction(port)
    try:
        await asyncio.to_thread(_fill_until_free, filler, spool, (SOFT_FREE + HARD_FREE) // 2)
        seen.soft_reason = await asyncio.to_thread(_await_readiness, metrics_port, 503, "disk back-pressure: soft")
        seen.soft = await _mail_attempt(port)
        seen.soft_data = _short(await early.command("DATA"))
    finally:
        await early.close()

    await asyncio.to_thread(_fill_until_free, filler, spool, HARD_FREE // 2)
    seen.hard_reason = await asyncio.to_thread(_await_readiness, metrics_port, 503, "disk back-pressure: hard")
    seen.hard = await _connection_while_hard(port)

    filler.unlink()
    await asyncio.to_thread(_await_readiness, metrics_port, 200, "ready")
    seen.after = await _mail_attempt(port)
    seen.queued = [s.queue_id for s in queued(mg)]
    seen.body_after = stored_message(mg, summary.queue_id)
    return seen


def test_spool_filling_up_gives_452_then_421_and_service_returns_by_itself(spool_fs: Path) -> None:
    metrics_port = free_port()
    server = ('disk_soft_free = "3M"\ndisk_hard_free = "1M"\ndisk_soft_free_inodes = 0\n'
              "disk_hard_free_inodes = 0\ndisk_check_interval = 0.2\n")
    text = config_text(spool_fs.parent, server_extra=server) + f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n'
    with InProcessMailgate(text) as mg:
        seen = asyncio.run(_pressure_scenario(mg, spool_fs, metrics_port))

    assert seen.before == ["220", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert seen.soft == ["220", "250", "452 4.3.1"]  # RFC 3463 §3.4: mail system full
    assert seen.soft_data == "452 4.3.1"  # the spool filled up between MAIL and DATA
    assert seen.soft_reason.strip() == "disk back-pressure: soft"
    assert seen.hard == ("421 4.3.1 Insufficient system storage, try again later", True)
    assert seen.hard_reason.strip() == "disk back-pressure: hard"
    assert seen.after[-1] == "250 2.0.0"
    assert len(seen.queued) == 2 and seen.queue_id in seen.queued
    assert seen.body_after == seen.body_before and seen.body_after.endswith(MESSAGE)
