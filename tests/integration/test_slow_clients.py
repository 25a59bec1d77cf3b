"""Slow clients cannot hold a slot for ever (issue 13 item 6, issue 21 item 4).

- A sender trickling one byte just inside `data_timeout` is cut by `data_deadline` (421 4.4.2).
- A client that opens an implicit-TLS connection and never finishes the handshake is closed
  after `tls_handshake_timeout` (before: a fixed 30 s).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.config_text import hosted_domain, relay_config, smtps_listener
from tests.support.mailgate_server import InProcessMailgate

pytestmark = pytest.mark.timeout(90)


def _config(tmp_path: Path, tls_files: dict[str, str], mx: int, smtps: int) -> str:
    return relay_config(
        tmp_path / "spool", mx,
        smtps_listener("smtps", smtps, tls_files["cert"], tls_files["key"], 'tls_handshake_timeout = "1s"\n'),
        hosted_domain(f"maildir:{tmp_path / 'mbox'}"),
        listener='data_timeout = "2s"\ndata_deadline = "3s"\n', trust_loopback=False,
    )


@pytest.fixture
def ports(tmp_path: Path, tls_files: dict[str, str]):
    mx, smtps = free_port(), free_port()
    with InProcessMailgate(_config(tmp_path, tls_files, mx, smtps)):
        yield mx, smtps


def _command(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return sock.recv(4096)


def test_a_trickling_sender_is_cut_by_the_data_deadline(ports) -> None:
    mx, _ = ports
    with socket.create_connection(("127.0.0.1", mx), timeout=10) as sock:
        assert sock.recv(512).startswith(b"220 ")
        assert _command(sock, b"EHLO slow.test").startswith(b"250")
        assert _command(sock, b"MAIL FROM:<a@slow.test>").startswith(b"250")
        assert _command(sock, b"RCPT TO:<b@hosted.test>").startswith(b"250")
        assert _command(sock, b"DATA").startswith(b"354")
        sock.settimeout(0.2)
        reply = b""
        for _ in range(60):  # one byte every 0.5 s, inside data_timeout, for up to 30 s
            try:
                sock.sendall(b"x")
            except OSError:
                break
            time.sleep(0.3)
            try:
                reply += sock.recv(512)
            except socket.timeout:
                continue
            if reply:
                break
        assert reply.startswith(b"421 4.4.2 "), reply


def test_a_stalled_implicit_tls_handshake_is_closed(ports) -> None:
    _, smtps = ports
    with socket.create_connection(("127.0.0.1", smtps), timeout=15) as sock:
        assert sock.recv(512) == b""  # closed by the server; nothing sent, no handshake
