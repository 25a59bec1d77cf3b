"""The console with several worker processes (issue 17): served exactly once, by worker 0, on a
socket the supervisor bound; an address another process holds stops the start naming the key."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.config_text import TWO_WORKERS, console, relay_config
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(120)


def config(tmp_path: Path, smtp_port: int, console_port: int) -> str:
    return relay_config(tmp_path / "spool", smtp_port, console(console_port), server=TWO_WORKERS, trust_loopback=False)


def test_two_workers_serve_the_console_once(tmp_path: Path) -> None:
    smtp_port, console_port = free_port(), free_port()
    server = MailgateProcess(tmp_path, config(tmp_path, smtp_port, console_port)).start(wait=("127.0.0.1", smtp_port))
    try:
        for _ in range(6):  # SO_REUSEPORT would spread these over two processes; there is one socket
            with urllib.request.urlopen(f"http://127.0.0.1:{console_port}/login", timeout=10) as answer:
                assert answer.status == 200 and b"Log in" in answer.read()
        assert server.log().count("web console on http://127.0.0.1:") == 1
    finally:
        assert server.stop() == 0


def test_a_console_address_in_use_stops_the_start(tmp_path: Path) -> None:
    smtp_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MailgateProcess(tmp_path, config(tmp_path, smtp_port, port)).start()
        assert server.process is not None and server.process.wait(60) == 1
    assert f"cannot start: console.address 127.0.0.1:{port}: address already in use" in server.log()
