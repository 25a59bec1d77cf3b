"""Connection limits hold for the whole server, not per worker (issue 13 item 4).

Before: `max_connections_per_client = 50` with 2 workers let 100 connections in from one
address (each worker counted its own). A real `mailgate serve` with two workers; 40
connections from one address are held open at once: exactly the limit get a greeting.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, port: int, per_client: int, total: int) -> str:
    return f"""
[server]
spool_dir = "{tmp_path / 'spool'}"
users_file = "{tmp_path / 'users'}"
workers = 2
self_audit = false

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
tls = "none"
max_connections = {total}
max_connections_per_client = {per_client}
"""


def _greeted(port: int, attempts: int) -> int:
    """Open `attempts` connections, all held open together; how many got 220."""
    held, greeted = [], 0
    try:
        for _ in range(attempts):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(sock)
            greeting = sock.recv(512)
            greeted += greeting.startswith(b"220 ")
            assert greeting.startswith((b"220 ", b"421 4.7.0")), greeting
    finally:
        for sock in held:
            sock.close()
    return greeted


@pytest.mark.parametrize("per_client, total", [(5, 100), (100, 7)])
def test_connection_limits_hold_across_two_workers(tmp_path: Path, per_client: int, total: int) -> None:
    port = free_port()
    mailgate = MailgateProcess(tmp_path, _config(tmp_path, port, per_client, total))
    mailgate.start(wait=("127.0.0.1", port))
    try:
        deadline = time.monotonic() + 30
        while mailgate.log().count("mailgate ready") < 2:  # both workers accept
            assert time.monotonic() < deadline, mailgate.log()
            time.sleep(0.05)
        time.sleep(0.5)  # the start-up probe connection has ended
        assert _greeted(port, 40) == min(per_client, total)
    finally:
        mailgate.stop()
