"""SIGHUP reloads certificates: an implicit-TLS listener presents the renewed one (SPEC §5)."""

from __future__ import annotations

import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.conftest import free_port
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(90)


def write_certificate(ca: trustme.CA, name: str, directory: Path) -> None:
    issued = ca.issue_cert(name, "127.0.0.1")
    (directory / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    (directory / "key.pem").write_bytes(issued.private_key_pem.bytes())


def presented_names(port: int, ca: trustme.CA) -> list[str]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    certificate = x509.load_der_x509_certificate(der)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.DNSName)


def test_sighup_renews_the_certificate_of_an_implicit_tls_listener(tmp_path: Path) -> None:
    ca = trustme.CA()
    write_certificate(ca, "old.test", tmp_path)
    port = free_port()
    config = f"""
[server]
hostname = "relay.test"
spool_dir = "{tmp_path}/spool"
users_file = "{tmp_path}/users"
workers = 2
self_audit = false

[[listener]]
name = "smtps"
address = "127.0.0.1:{port}"
profile = "smtps"
cert_file = "{tmp_path}/cert.pem"
key_file = "{tmp_path}/key.pem"
"""
    mailgate = MailgateProcess(tmp_path, config)
    mailgate.start()
    try:
        deadline = time.monotonic() + 30
        while mailgate.log().count("mailgate ready") < 2:
            assert time.monotonic() < deadline, mailgate.log()
            time.sleep(0.1)
        assert presented_names(port, ca) == ["old.test"]
        write_certificate(ca, "new.test", tmp_path)
        mailgate.process.send_signal(signal.SIGHUP)
        while mailgate.log().count("configuration reloaded") < 2:
            assert time.monotonic() < deadline + 30, mailgate.log()
            time.sleep(0.1)
        # Both workers took the renewed certificate: whichever accepts, it is the new one.
        assert {tuple(presented_names(port, ca)) for _ in range(6)} == {("new.test",)}
    finally:
        assert mailgate.stop() == 0
