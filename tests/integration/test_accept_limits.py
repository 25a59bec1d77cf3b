"""Limits before the TLS handshake, and running out of file descriptors (issue 21 item 4).

- One address opens many implicit-TLS (smtps) connections and never starts a handshake. Each
  is counted when it is accepted: beyond `max_connections_per_client` they are closed at once,
  and the ones held are cut at `tls_handshake_timeout`. Before, nothing was counted until a
  handshake completed, so one address held 2,000 sockets, each until the time-out.
- Real TLS clients still get their greeting, connection after connection: the socket goes to
  the TLS protocol before any byte is read (an early ClientHello was lost under uvloop when the
  handshake was started after accepting as plain).
- With RLIMIT_NOFILE low, connections beyond the descriptors wait; the log says why once, with
  the limit, instead of connections being accepted and closed with nothing logged (libuv).
- Behind a load balancer (PROXY protocol + implicit TLS), a ClientHello sent in the same segment
  as the PROXY header reaches the TLS protocol: the header is read from the socket, never past
  it. Before, the stream reader swallowed it with the header and the handshake hung.
Real `mailgate serve` processes (uvloop), two workers for the limits.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.config_text import hosted_domain, relay_config, smtps_listener
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, tls_files: dict[str, str], mx: int, smtps: int, workers: int, per_client: int,
            balanced: int) -> str:
    cert, key = tls_files["cert"], tls_files["key"]
    return relay_config(
        tmp_path / "spool", mx,
        smtps_listener("smtps", smtps, cert, key,
                       f'max_connections_per_client = {per_client}\ntls_handshake_timeout = "10s"\n'),
        smtps_listener("balanced", balanced, cert, key, 'proxy_protocol = true\nproxy_from = ["127.0.0.1/32"]\n'),
        hosted_domain(f"maildir:{tmp_path / 'mbox'}"),
        server=f"workers = {workers}\nself_audit = false\n",
        listener=f"max_connections = 1000\nmax_connections_per_client = {per_client}\n", trust_loopback=False,
    )


ATTACKER = "127.0.0.4"


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _wait_closed(sockets: list[socket.socket], count: int, seconds: float) -> list[socket.socket]:
    """Wait until `count` of `sockets` are closed by the server, or `seconds` pass; the closed ones."""
    closed: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    while len(closed) < count and time.monotonic() < deadline:
        readable, _, _ = select.select([s for s in sockets if s not in closed], [], [], 0.2)
        closed += [s for s in readable if _closed(s)]
    return closed


def _smtps_greeting(port: int, ca: str, source: str) -> bytes:
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.recv(512)


def _ready(mailgate: MailgateProcess, workers: int) -> None:
    deadline = time.monotonic() + 30
    while mailgate.log().count("mailgate ready") < workers:
        assert time.monotonic() < deadline, mailgate.log()
        time.sleep(0.05)


def test_smtps_connections_are_counted_before_their_handshake(tmp_path: Path, tls_files: dict[str, str]) -> None:
    mx, smtps = free_port(), free_port()
    mailgate = MailgateProcess(tmp_path, _config(tmp_path, tls_files, mx, smtps, workers=2, per_client=4,
                                                 balanced=free_port()))
    mailgate.start(wait=("127.0.0.1", mx))
    try:
        _ready(mailgate, 2)
        # An early ClientHello is never lost: real handshakes, one after another, all greeted
        # (from another address than the attack's, so no slot it frees late is counted here).
        assert all(_smtps_greeting(smtps, tls_files["ca"], "127.0.0.5").startswith(b"220 ") for _ in range(30))
        silent = [socket.create_connection(("127.0.0.1", smtps), timeout=10, source_address=(ATTACKER, 0))
                  for _ in range(16)]
        try:
            # The twelve beyond the limit are closed at once (well before the 10 s time-out) ...
            refused = _wait_closed(silent, 12, 5.0)
            assert len(refused) == 12
            held = [s for s in silent if s not in refused]
            assert not _wait_closed(held, 1, 1.0)  # ... the four within it are held ...
            assert len(_wait_closed(held, 4, 30.0)) == 4  # ... until the handshake time-out.
        finally:
            for sock in silent:
                sock.close()
        assert _smtps_greeting(smtps, tls_files["ca"], ATTACKER).startswith(b"220 ")  # its slots are free again
    finally:
        mailgate.stop()
    assert "Traceback" not in mailgate.log()


def test_running_out_of_descriptors_is_logged_and_recovers(tmp_path: Path, tls_files: dict[str, str]) -> None:
    mx, smtps = free_port(), free_port()
    limit = 128
    mailgate = MailgateProcess(tmp_path, _config(tmp_path, tls_files, mx, smtps, workers=1, per_client=1000,
                                                 balanced=free_port()), max_open_files=limit)
    mailgate.start(wait=("127.0.0.1", mx))
    held: list[socket.socket] = []
    try:
        _ready(mailgate, 1)
        deadline = time.monotonic() + 30
        while "cannot accept" not in mailgate.log():
            assert len(held) < 2 * limit and time.monotonic() < deadline, mailgate.log()
            sock = socket.create_connection(("127.0.0.1", mx), timeout=10)
            held.append(sock)
            select.select([sock], [], [], 0.2)  # greeted, or waiting in the backlog
        warning = next(line for line in mailgate.log().splitlines() if "cannot accept" in line)
        assert " WARNING " in warning and f"RLIMIT_NOFILE is {limit}" in warning, warning
        waiting = held[-1]
        for sock in held[:-1]:
            sock.close()
        # The connection that waited in the backlog is served once descriptors are free again.
        waiting.settimeout(10)
        assert waiting.recv(512).startswith(b"220 ")
        assert mailgate.log().count("cannot accept") == 1  # once a minute at most
    finally:
        for sock in held:
            sock.close()
        mailgate.stop()


def _greeting_behind_balancer(port: int, ca: str) -> bytes:
    """PROXY v1 header and the ClientHello in one segment, then the handshake; the 220 line."""
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=ca).wrap_bio(bio_in, bio_out, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 465\r\n" + bio_out.read())
        while True:
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            bio_in.write(data)
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(bio_out.read())
        sock.sendall(bio_out.read())
        while True:
            try:
                return tls.read(512)
            except ssl.SSLWantReadError:
                bio_in.write(sock.recv(65536))


def test_a_client_hello_behind_the_proxy_header_is_not_lost(tmp_path: Path, tls_files: dict[str, str]) -> None:
    mx, smtps, balanced = free_port(), free_port(), free_port()
    mailgate = MailgateProcess(tmp_path, _config(tmp_path, tls_files, mx, smtps, workers=1, per_client=50,
                                                 balanced=balanced))
    mailgate.start(wait=("127.0.0.1", mx))
    try:
        _ready(mailgate, 1)
        for _ in range(10):
            assert _greeting_behind_balancer(balanced, tls_files["ca"]).startswith(b"220 ")
    finally:
        mailgate.stop()
