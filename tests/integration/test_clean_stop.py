"""A clean stop with sessions open in every state (issue 13 item 5).

A real `mailgate serve` with two workers; sessions are left idle after EHLO (clear, STARTTLS,
smtps), in the middle of DATA and of BDAT, and stalled inside a TLS handshake (STARTTLS and
smtps). A reload (SIGHUP) with all of them open, then SIGTERM:
- sessions between transactions get `421 4.3.2` at once (RFC 5321 §3.8, RFC 3463 §3.5);
- a transaction in progress may finish (its 250), then gets 421 4.3.2; one that never finishes
  gets 421 4.3.2 when the 30 s grace ends;
- a stalled handshake is closed (nothing can be said before TLS is up);
- the exit status is 0 and the diagnostic log holds no traceback.
Before: every session was cut silently after the grace time, and each cut session logged
"Exception in callback ... CancelledError" with a traceback (Python 3.11's start_server).
"""

from __future__ import annotations

import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(150)

SHUTDOWN = b"421 4.3.2 "


def _config(tmp_path: Path, tls_files: dict[str, str], mx: int, smtps: int) -> str:
    tls = f'cert_file = "{tls_files["cert"]}"\nkey_file = "{tls_files["key"]}"'
    return f"""
[server]
hostname = "mx.test"
spool_dir = "{tmp_path / 'spool'}"
users_file = "{tmp_path / 'users'}"
workers = 2
self_audit = false

[[listener]]
name = "mx"
address = "127.0.0.1:{mx}"
{tls}

[[listener]]
name = "smtps"
address = "127.0.0.1:{smtps}"
profile = "smtps"
{tls}

[relay]
trusted_networks = ["127.0.0.1/32"]

[[domain]]
name = "hosted.test"
next_hop = ["maildir:{tmp_path / 'mbox'}"]
"""


def _command(sock, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return sock.recv(4096)


def _until_closed(sock) -> bytes:
    """Everything the server still says before it closes (a reset counts as closed)."""
    received = b""
    sock.settimeout(45)
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return received


class Sessions:
    def __init__(self, mx: int, smtps: int, ca: str) -> None:
        self.mx, self.smtps = mx, smtps
        self.context = ssl.create_default_context(cafile=ca)

    def greeted(self):
        sock = socket.create_connection(("127.0.0.1", self.mx), timeout=10)
        assert sock.recv(512).startswith(b"220 ")
        assert _command(sock, b"EHLO client.test").startswith(b"250")
        return sock

    def in_transaction(self):
        sock = self.greeted()
        assert _command(sock, b"MAIL FROM:<a@client.test>").startswith(b"250")
        assert _command(sock, b"RCPT TO:<b@hosted.test>").startswith(b"250")
        return sock

    def mid_data(self):
        sock = self.in_transaction()
        assert _command(sock, b"DATA").startswith(b"354")
        sock.sendall(b"Subject: stop\r\n\r\nhalf a bo")
        return sock

    def mid_bdat(self):
        sock = self.in_transaction()
        sock.sendall(b"BDAT 23 LAST\r\nSubject: stop\r\n")
        return sock

    def starttls_done(self):
        sock = self.greeted()
        assert _command(sock, b"STARTTLS").startswith(b"220")
        tls = self.context.wrap_socket(sock, server_hostname="localhost")
        assert _command(tls, b"EHLO client.test").startswith(b"250")
        return tls

    def starttls_stalled(self):
        sock = self.greeted()
        assert _command(sock, b"STARTTLS").startswith(b"220")
        sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        return sock

    def smtps_greeted(self):
        tls = self.context.wrap_socket(socket.create_connection(("127.0.0.1", self.smtps), timeout=10),
                                       server_hostname="localhost")
        assert tls.recv(512).startswith(b"220 ")
        assert _command(tls, b"EHLO client.test").startswith(b"250")
        return tls

    def smtps_stalled(self):
        sock = socket.create_connection(("127.0.0.1", self.smtps), timeout=10)
        sock.sendall(b"\x16\x03\x01")
        return sock


def test_sigterm_with_sessions_in_every_state(tmp_path: Path, tls_files: dict[str, str]) -> None:
    mx, smtps = free_port(), free_port()
    mailgate = MailgateProcess(tmp_path, _config(tmp_path, tls_files, mx, smtps)).start(wait=("127.0.0.1", mx))
    try:
        deadline = time.monotonic() + 30
        while mailgate.log().count("mailgate ready") < 2:
            assert time.monotonic() < deadline, mailgate.log()
            time.sleep(0.05)
        make = Sessions(mx, smtps, tls_files["ca"])
        # Several of each, so that both workers hold some (the kernel spreads connections).
        between = [make.greeted() for _ in range(3)] + [make.starttls_done() for _ in range(2)] + \
                  [make.smtps_greeted() for _ in range(2)]
        finishing_data = [make.mid_data() for _ in range(2)]
        finishing_bdat = [make.mid_bdat() for _ in range(2)]
        stuck_data = make.mid_data()
        stalled = [make.starttls_stalled() for _ in range(2)] + [make.smtps_stalled() for _ in range(2)]

        mailgate.process.send_signal(signal.SIGHUP)  # a reload with all of them open
        while mailgate.log().count("configuration reloaded") < 2:
            assert time.monotonic() < deadline + 30, mailgate.log()
            time.sleep(0.05)
        assert all(_command(sock, b"NOOP").startswith(b"250") for sock in between)

        mailgate.process.send_signal(signal.SIGTERM)
        for sock in between:
            assert _until_closed(sock).startswith(SHUTDOWN)
        for sock in finishing_data:  # the transaction in progress still gets its 250
            sock.sendall(b"dy\r\n.\r\n")
        for sock in finishing_bdat:
            sock.sendall(b"\r\nbody\r\n")
        for sock in finishing_data + finishing_bdat:
            replies = _until_closed(sock)
            assert replies.startswith(b"250 2.0.0 ") and replies.endswith(b"\r\n" + SHUTDOWN + b"Service shutting down, closing connection\r\n"), replies
        for sock in stalled:  # nothing can be said inside a handshake
            assert _until_closed(sock) == b""
        assert _until_closed(stuck_data) == SHUTDOWN + b"Service shutting down, closing connection\r\n"
        assert mailgate.process.wait(60) == 0
    finally:
        mailgate.stop()
    log = mailgate.log()
    assert "Traceback" not in log and " ERROR " not in log, log
