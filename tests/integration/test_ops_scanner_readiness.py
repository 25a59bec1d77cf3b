"""A fail-closed scanner that is down shows in /readyz and in one warning (issue 20 item 9).

Before: /readyz stayed 200 while clamd was down and every message got 451, and the cause was
logged only at INFO, once per message.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mailgate.screen.health import ScannerHealth
from tests.conftest import free_port
from tests.support.config_text import hosted_domain, relay_config
from tests.support.mailgate_server import InProcessMailgate, readyz
from tests.support.receiving import HOSTED, RawSmtp

pytestmark = pytest.mark.timeout(60)

CLIENT = "127.0.0.4"


def _config(tmp_path: Path, metrics_port: int, fail_open: bool) -> str:
    return relay_config(tmp_path / "spool", free_port(), hosted_domain(f"maildir:{tmp_path / 'mbox'}", HOSTED),
                        SCANNER_DOWN.format(tmp_path=tmp_path, fail_open="true" if fail_open else "false", port=metrics_port),
                        server="self_audit = false\n", trust_loopback=False)


SCANNER_DOWN = """
[antivirus]
clamd = "unix:{tmp_path}/clamd-is-down.sock"
fail_open = {fail_open}

[metrics]
address = "127.0.0.1:{port}"
"""


async def _send(port: int) -> int:
    client = await RawSmtp.connect(port, source=CLIENT)
    try:
        await client.reply()
        await client.command("EHLO client.test")
        await client.command("MAIL FROM:<a@external.test>")
        await client.command(f"RCPT TO:<user@{HOSTED}>")
        await client.command("DATA")
        await client.send(b"Subject: scan me\r\n\r\nhello\r\n.\r\n")
        return (await client.reply()).code
    finally:
        await client.close()


def test_clamd_down_fails_readiness_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics_port = free_port()
    caplog.set_level(logging.INFO, logger="mailgate")
    with InProcessMailgate(_config(tmp_path, metrics_port, fail_open=False)) as mg:
        assert [asyncio.run(_send(mg.port("mx"))) for _ in range(3)] == [451, 451, 451]
        status, body = readyz(metrics_port)
    assert status == 503 and "antivirus scanner failing" in body and "clamd-is-down.sock" in body
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "scanner failing" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_the_probe_finds_clamd_down_without_mail(tmp_path: Path) -> None:
    metrics_port = free_port()
    with InProcessMailgate(_config(tmp_path, metrics_port, fail_open=False)) as mg:
        assert mg.app is not None and mg.app.reception.screener is not None
        mg.call(mg.app.reception.screener.probe())
        status, body = readyz(metrics_port)
    assert status == 503 and "does not answer PING" in body


def test_a_fail_open_scanner_is_only_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics_port = free_port()
    caplog.set_level(logging.INFO, logger="mailgate")
    with InProcessMailgate(_config(tmp_path, metrics_port, fail_open=True)) as mg:
        assert asyncio.run(_send(mg.port("mx"))) == 250
        status, body = readyz(metrics_port)
        assert status == 200, body
    assert "messages pass unscanned (fail_open)" in caplog.text


def test_recovery_clears_the_problem_and_stale_failures_expire() -> None:
    now = [1000.0]
    health = ScannerHealth(clock=lambda: now[0])
    health.failed("spam", "rspamd unreachable", blocks_mail=True)
    assert health.problems() == ["spam scanner failing: rspamd unreachable (messages get 451)"]
    health.succeeded("spam")
    assert health.problems() == []
    health.failed("spam", "rspamd unreachable", blocks_mail=True)
    now[0] += 301.0  # nobody probes rspamd: an old failure no longer holds readiness down
    assert health.problems() == []
