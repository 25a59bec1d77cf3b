"""Which TLS 1.2 cipher suites the listeners accept, found by real handshakes (issue 21 item 6).

A client offers one TLS 1.2 suite at a time, out of everything the local OpenSSL can speak
(`ALL:@SECLEVEL=0`, CBC, static RSA and SHA-1 suites included), against an implicit-TLS listener
and a STARTTLS listener of a running mailgate, with an RSA and with an ECDSA certificate. Only
forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305) may complete; TLS 1.3 still
works. The outbound context is checked against a real server too: AEAD first, a forward-secret CBC
suite still accepted for opportunistic TLS, static RSA key exchange never.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

import pytest
import trustme

from mailgate.delivery.transport import outbound_tls_context
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import config_text

pytestmark = pytest.mark.timeout(120)


def _tls12_suites() -> list[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:@SECLEVEL=0")
    return sorted({c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"})


def _client(suite: str | None, maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = maximum
    if suite is not None:
        context.set_ciphers(f"{suite}:@SECLEVEL=0")
    return context


def _handshake(port: int, context: ssl.SSLContext, starttls: bool) -> tuple[str, str] | None:
    """(protocol, suite) agreed, or None when the server refused the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if starttls:
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220")
            raw.sendall(b"EHLO client.test\r\n")
            while not (line := reader.readline()).startswith(b"250 "):
                assert line.startswith(b"250-"), line
            raw.sendall(b"STARTTLS\r\n")
            assert reader.readline().startswith(b"220")
        try:
            with context.wrap_socket(raw) as tls:
                return str(tls.version()), tls.cipher()[0]
        except (ssl.SSLError, ConnectionError):
            return None


def _certificate(tmp_path: Path, key_type: trustme.KeyType) -> dict[str, str]:
    issued = trustme.CA(key_type=key_type).issue_cert("mx.test", "127.0.0.1", key_type=key_type)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    return {"cert": str(cert), "key": str(key)}


def _is_forward_secret_aead(suite: str) -> bool:
    return suite.startswith("ECDHE-") and ("-GCM-" in suite or "CHACHA20-POLY1305" in suite)


@pytest.mark.parametrize("key_type", [trustme.KeyType.RSA, trustme.KeyType.ECDSA], ids=["rsa", "ecdsa"])
def test_listeners_accept_only_forward_secret_aead_suites_under_tls_1_2(tmp_path: Path, key_type) -> None:
    files = _certificate(tmp_path, key_type)
    suites = _tls12_suites()
    assert any("-CBC" in s or s.endswith(("-SHA", "-SHA256", "-SHA384")) for s in suites)  # CBC is tried
    with InProcessMailgate(config_text(tmp_path, files)) as mg:
        for listener, starttls in (("smtps", False), ("mx", True)):
            port = mg.port(listener)
            accepted = {s for s in suites if _handshake(port, _client(s), starttls) is not None}
            assert accepted, f"{listener}: no TLS 1.2 suite at all"
            assert all(_is_forward_secret_aead(s) for s in accepted), (listener, sorted(accepted))
            # A client that can only do a CBC suite gets no session.
            cbc = "ECDHE-RSA-AES128-SHA256" if key_type is trustme.KeyType.RSA else "ECDHE-ECDSA-AES128-SHA256"
            assert _handshake(port, _client(cbc), starttls) is None
            # TLS 1.3 (AEAD only by design, RFC 8446 §9.1) is unaffected.
            agreed = _handshake(port, _client(None, ssl.TLSVersion.TLSv1_3), starttls)
            assert agreed is not None and agreed[0] == "TLSv1.3"


class _OneSuiteServer:
    """A TLS 1.2 server on loopback that speaks only the given suites, for the outbound context."""

    def __init__(self, files: dict[str, str], suites: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.maximum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_ciphers(f"{suites}:@SECLEVEL=0")
        self.context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # the client's order decides
        self.context.load_cert_chain(files["cert"], files["key"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self) -> None:
        self.listener.settimeout(20)
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass
        self.listener.close()


async def _outbound(port: int) -> str | None:
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=outbound_tls_context(verify=False, ca_file=None), server_hostname="mx.test"
        )
    except (ssl.SSLError, ConnectionError):
        return None
    suite = writer.get_extra_info("ssl_object").cipher()[0]
    writer.close()
    return suite


@pytest.mark.parametrize(
    "server_suites, agreed",
    [
        ("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
        ("ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256"),  # old peer: CBC beats clear text
        ("AES128-SHA256", None),  # static RSA key exchange: no forward secrecy, never
        ("ECDHE-RSA-AES128-SHA", None),  # SHA-1 MAC with CBC, never
    ],
)
def test_outbound_prefers_aead_and_keeps_forward_secret_cbc_for_old_peers(tmp_path: Path, server_suites, agreed) -> None:
    files = _certificate(tmp_path, trustme.KeyType.RSA)
    server = _OneSuiteServer(files, server_suites)
    assert asyncio.run(_outbound(server.port)) == agreed
    server.thread.join(20)
