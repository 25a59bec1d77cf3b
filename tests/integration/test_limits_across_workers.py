"""Connection and message rate limits hold for the whole server, not per worker (issue 13 item 4).

Before: `max_connections_per_client = 50` with 2 workers let 100 connections in from one
address (each worker counted its own). A real `mailgate serve` with two workers; 40
connections from one address are held open at once: exactly the limit get a greeting.
Message rates: each worker used to allow ceil(limit / workers), so 3 workers let 6 messages in
under a limit of 4. A real `mailgate serve` with three workers; one client sends one message per
connection (the kernel spreads them over the workers): exactly the limit get 250, then MAIL
gets 450 4.7.1 (RFC 5321 §4.2.5, RFC 3463 §3.8), per client address and per AUTH user. The same
holds for transactions in parallel: each MAIL FROM reserves its message at once (a check at MAIL
and a count at 250 let ten parallel transactions through a limit of four), and one that ends
without a 250 (RSET) gives its reservation back.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from mailgate.auth.store import FileUserStore
from tests.support.config_text import TWO_WORKERS, relay_config
from tests.support.mailgate_server import MailgateProcess
from tests.support.receiving import HOSTED, config_text

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, port: int, per_client: int, total: int) -> str:
    return relay_config(
        tmp_path / "spool", port, server=TWO_WORKERS, trust_loopback=False,
        listener=f"max_connections = {total}\nmax_connections_per_client = {per_client}\n",
    )


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


def _wait_workers_ready(mailgate: MailgateProcess, workers: int) -> None:
    deadline = time.monotonic() + 30
    while mailgate.log().count("mailgate ready") < workers:
        assert time.monotonic() < deadline, mailgate.log()
        time.sleep(0.05)


def _one_message(port: int, source: str, login: tuple[str, str] | None = None, ca: str = "") -> str:
    """One connection, one message: the reply that ended it, as "code enhanced-code"."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        if login is not None:
            smtp.starttls(context=ssl.create_default_context(cafile=ca))
            smtp.ehlo("client.test")
            smtp.login(*login)
        code, text = smtp.mail("sender@outside.test")
        if code == 250:
            code, text = smtp.rcpt(f"user@{HOSTED}")
            assert code == 250, text
            code, text = smtp.data(b"Subject: rate\r\n\r\nhello\r\n")
        return f"{code} {text.decode().split()[0]}"


def test_message_rate_limits_hold_across_three_workers(tmp_path: Path, tls_files: dict[str, str]) -> None:
    FileUserStore(tmp_path / "users").add("carol", "rate test password")
    text = config_text(tmp_path, tls_files, server_extra="workers = 3\nself_audit = false")
    text += '\n[limits]\nmessages_per_client = 4\nmessages_per_user = 5\nwindow = "1h"\n'
    mailgate = MailgateProcess(tmp_path, text)
    mx, submission = (int(port) for port in re.findall(r'name = "(?:mx|submission)"\naddress = "127.0.0.1:(\d+)"', text))
    mailgate.start(wait=("127.0.0.1", mx))
    try:
        _wait_workers_ready(mailgate, 3)
        # An untrusted client (127.0.0.1/32 is the trusted network), a new connection each time.
        replies = [_one_message(mx, "127.0.0.4") for _ in range(12)]
        assert replies == ["250 2.0.0"] * 4 + ["450 4.7.1"] * 8, replies
        assert _one_message(mx, "127.0.0.5") == "250 2.0.0"  # another client has its own budget
        # A user from the trusted network: exempt per address, limited per user.
        login = ("carol", "rate test password")
        replies = [_one_message(submission, "127.0.0.1", login, tls_files["ca"]) for _ in range(12)]
        assert replies == ["250 2.0.0"] * 5 + ["450 4.7.1"] * 7, replies
    finally:
        mailgate.stop()


def _mail_from(port: int, source: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    assert sock.recv(512).startswith(b"220 ")
    sock.sendall(b"EHLO client.test\r\n")
    assert sock.recv(4096).startswith(b"250")
    sock.sendall(b"MAIL FROM:<sender@outside.test>\r\n")
    return sock, sock.recv(512)


def _finish(sock: socket.socket) -> bytes:
    sock.sendall(f"RCPT TO:<user@{HOSTED}>\r\n".encode())
    assert sock.recv(512).startswith(b"250")
    sock.sendall(b"DATA\r\n")
    assert sock.recv(512).startswith(b"354")
    sock.sendall(b"Subject: parallel\r\n\r\nhello\r\n.\r\n")
    return sock.recv(512)


def test_parallel_transactions_of_one_client_stop_at_the_limit(tmp_path: Path, tls_files: dict[str, str]) -> None:
    text = config_text(tmp_path, tls_files, server_extra="workers = 3\nself_audit = false")
    text += '\n[limits]\nmessages_per_client = 4\nwindow = "1h"\n'
    mailgate = MailgateProcess(tmp_path, text)
    (mx,) = (int(port) for port in re.findall(r'name = "mx"\naddress = "127.0.0.1:(\d+)"', text))
    mailgate.start(wait=("127.0.0.1", mx))
    opened: list[socket.socket] = []
    try:
        _wait_workers_ready(mailgate, 3)
        sessions = [_mail_from(mx, "127.0.0.4") for _ in range(10)]  # every MAIL before any DATA
        opened += [sock for sock, _ in sessions]
        reserved = [sock for sock, reply in sessions if reply.startswith(b"250 ")]
        assert len(reserved) == 4 and all(reply.startswith(b"450 4.7.1 ") for _, reply in sessions
                                          if not reply.startswith(b"250 ")), [reply for _, reply in sessions]
        reserved[0].sendall(b"RSET\r\n")  # this one gives its message back ...
        assert reserved[0].recv(512).startswith(b"250")
        assert all(_finish(sock).startswith(b"250 2.0.0 ") for sock in reserved[1:])
        again, reply = _mail_from(mx, "127.0.0.4")  # ... so one more fits, and no more
        opened.append(again)
        assert reply.startswith(b"250 ") and _finish(again).startswith(b"250 2.0.0 ")
        last, reply = _mail_from(mx, "127.0.0.4")
        opened.append(last)
        assert reply.startswith(b"450 4.7.1 "), reply
    finally:
        for sock in opened:
            sock.close()
        mailgate.stop()
