"""The swaks helper against a private Postfix: clear text, verified STARTTLS, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import free_port, require_binary, require_capabilities
from tests.support import peers, postfix, swaks

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def receiver(tls_files: dict[str, str]) -> Iterator[postfix.PostfixInstance]:
    require_binary("postfix")
    require_binary("swaks")
    settings = postfix.tls_settings(tls_files["cert"], tls_files["key"])
    with postfix.start_receiver(free_port(), ["dest.test"], settings=settings) as instance:
        yield instance


def test_plain_transaction_is_delivered(receiver: postfix.PostfixInstance) -> None:
    result = swaks.run_swaks(
        receiver.host, receiver.port, sender="a@src.test", recipients=["x@dest.test"]
    )

    assert result.exit_code == swaks.EXIT_OK, result.transcript
    assert any(line.startswith("250 2.0.0 Ok: queued as") for line in result.server_lines())
    delivered = receiver.wait_delivered(1)
    assert len(delivered) == 1
    assert b"A test message sent by swaks." in delivered[0].read_bytes()


def test_starttls_with_certificate_verification(
    receiver: postfix.PostfixInstance, tls_files: dict[str, str]
) -> None:
    require_capabilities(peers.SWAKS_TLS)
    result = swaks.run_swaks(
        receiver.host,
        receiver.port,
        sender="a@src.test",
        recipients=["x@dest.test", "y@dest.test"],
        tls="starttls",
        ca_file=tls_files["ca"],
    )

    assert result.exit_code == swaks.EXIT_OK, result.transcript
    assert "=== TLS started with cipher" in result.transcript
    assert "220 2.0.0 Ready to start TLS" in result.server_lines()
    delivered = receiver.wait_delivered(2)
    assert len(delivered) == 2
    assert all(b"with ESMTPS id" in path.read_bytes() for path in delivered)  # RFC 3848


def test_untrusted_ca_fails_the_tls_step(
    receiver: postfix.PostfixInstance, tmp_path: Path
) -> None:
    require_capabilities(peers.SWAKS_TLS)
    stranger_ca = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger_ca))

    result = swaks.run_swaks(
        receiver.host,
        receiver.port,
        sender="a@src.test",
        recipients=["x@dest.test"],
        tls="starttls",
        ca_file=str(stranger_ca),
    )

    assert result.exit_code == swaks.EXIT_TLS_FAILED, result.transcript
    assert receiver.delivered() == []


def test_refused_recipient_gives_no_rcpt_exit_code(receiver: postfix.PostfixInstance) -> None:
    result = swaks.run_swaks(
        receiver.host, receiver.port, sender="a@src.test", recipients=["x@elsewhere.test"]
    )

    assert result.exit_code == swaks.EXIT_NO_RCPT_ACCEPTED, result.transcript
    assert any(
        "454 4.7.1" in line and "Relay access denied" in line for line in result.server_lines()
    )


def test_quit_after_rcpt_sends_no_message(receiver: postfix.PostfixInstance) -> None:
    result = swaks.run_swaks(
        receiver.host,
        receiver.port,
        sender="a@src.test",
        recipients=["x@dest.test"],
        quit_after="RCPT",
    )

    assert result.exit_code == swaks.EXIT_OK, result.transcript
    assert " -> DATA" not in result.transcript
    log = receiver.wait_log("ehlo=1 mail=1 rcpt=1 quit=1 commands=4")
    assert "ehlo=1 mail=1 rcpt=1 quit=1 commands=4" in log
    assert receiver.delivered() == []


def test_closed_port_gives_connect_exit_code() -> None:
    require_binary("swaks")
    result = swaks.run_swaks(
        "127.0.0.1", free_port(), sender="a@src.test", recipients=["x@dest.test"], timeout=5
    )

    assert result.exit_code == swaks.EXIT_CONNECT_FAILED, result.transcript
