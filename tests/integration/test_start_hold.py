"""No mail from outside before the start-up self-audit says CLOSED (issue 13 item 9).

Before: the listeners answered 220 and took mail while the audit was still running. Now, while
it runs, only its own connections (from 127.0.0.2/127.0.0.3) are served; any other client gets
421 4.3.2 and is closed, and is served normally once the audit has passed.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import mailgate.app
from tests.conftest import free_port
from tests.support.mailgate_server import InProcessMailgate

pytestmark = pytest.mark.timeout(60)


def _greeting(port: int, source: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return sock.recv(512)


def test_outside_clients_are_held_with_421_until_the_audit_passes(tmp_path: Path, monkeypatch) -> None:
    port = free_port()
    during: dict[str, bytes] = {}

    async def audit_that_looks_around(targets, hosted, summary):
        # The audit is running: what does an outside client get, and the audit's own source?
        during["outside"] = await asyncio.to_thread(_greeting, port, "127.0.0.1")
        during["audit"] = await asyncio.to_thread(_greeting, port, "127.0.0.2")
        return []  # CLOSED

    monkeypatch.setattr(mailgate.app, "self_audit", audit_that_looks_around)
    config = f"""
[server]
hostname = "mx.test"
spool_dir = "{tmp_path / 'spool'}"
users_file = "{tmp_path / 'users'}"
self_audit = true

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
tls = "none"

[[domain]]
name = "hosted.test"
next_hop = ["maildir:{tmp_path / 'mbox'}"]
"""
    with InProcessMailgate(config):
        assert during["outside"].startswith(b"421 4.3.2 "), during
        assert during["audit"].startswith(b"220 "), during
        assert _greeting(port, "127.0.0.1").startswith(b"220 ")  # served once the audit passed
