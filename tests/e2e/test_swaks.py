"""swaks, a real SMTP client, against a real mailgate: clear text to a hosted domain, STARTTLS with
a verified certificate and AUTH PLAIN on submission, PIPELINING, and an untrusted relay attempt.
(swaks does not speak BDAT; tests/integration/test_receiving.py covers it.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.auth.store import FileUserStore
from tests.conftest import require_binary, require_capabilities
from tests.support import peers, swaks
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import (
    EXTERNAL, HOSTED, UNTRUSTED_SOURCE, config_text, only_message, queued, split_received,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

USER, PASSWORD = "alice", "swaks pass phrase"
BODY = "A test message sent by swaks."


@pytest.fixture
def mailgate(tmp_path: Path, tls_files: dict[str, str]) -> Iterator[InProcessMailgate]:
    require_binary("swaks")
    FileUserStore(tmp_path / "users").add(USER, PASSWORD)
    with InProcessMailgate(config_text(tmp_path, tls_files)) as mg:
        yield mg


def _queued_line(result: swaks.SwaksResult) -> str:
    lines = [line for line in result.server_lines() if line.startswith("250 2.0.0 OK queued as ")]
    assert len(lines) == 1, result.transcript
    return lines[0].rsplit(" ", 1)[1]


def test_plain_message_to_a_hosted_domain(mailgate: InProcessMailgate) -> None:
    result = swaks.run_swaks(
        "127.0.0.1", mailgate.port("mx"), sender=f"someone@{EXTERNAL}",
        recipients=[f"user@{HOSTED}"], body=BODY,
    )

    assert result.exit_code == swaks.EXIT_OK, result.transcript
    summary, stored = only_message(mailgate)
    assert _queued_line(result) == summary.queue_id
    received, message = split_received(stored)
    assert b"with ESMTP id" in received
    assert b"\r\nX-Mailer: swaks " in message
    assert f"\r\n\r\n{BODY}\r\n".encode() in message


def test_starttls_verified_and_auth_plain_on_submission(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    require_capabilities(peers.SWAKS_TLS)
    result = swaks.run_swaks(
        "127.0.0.1", mailgate.port("submission"), sender=f"{USER}@{HOSTED}",
        recipients=[f"friend@{EXTERNAL}"], tls="starttls", ca_file=tls_files["ca"], body=BODY,
        extra_args=["--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD],
    )

    assert result.exit_code == swaks.EXIT_OK, result.transcript
    assert "220 2.0.0 Ready to start TLS" in result.server_lines()
    assert "235 2.7.0 Authentication successful" in result.server_lines()
    summary, stored = only_message(mailgate)
    assert _queued_line(result) == summary.queue_id
    assert [r[0] for r in summary.recipients] == [f"friend@{EXTERNAL}"]  # relayed: authenticated
    assert b"with ESMTPSA id" in split_received(stored)[0]  # RFC 3848


def test_pipelined_transaction(mailgate: InProcessMailgate) -> None:
    result = swaks.run_swaks(
        "127.0.0.1", mailgate.port("mx"), sender=f"someone@{EXTERNAL}",
        recipients=[f"one@{HOSTED}", f"two@{HOSTED}"], body=BODY, extra_args=["--pipeline"],
    )

    assert result.exit_code == swaks.EXIT_OK, result.transcript
    summary, _ = only_message(mailgate)
    assert sorted(r[0] for r in summary.recipients) == [f"one@{HOSTED}", f"two@{HOSTED}"]


def test_untrusted_relay_attempt_is_refused(mailgate: InProcessMailgate) -> None:
    result = swaks.run_swaks(
        "127.0.0.1", mailgate.port("mx"), sender=f"someone@{EXTERNAL}",
        recipients=[f"victim@{EXTERNAL}"], extra_args=["--local-interface", UNTRUSTED_SOURCE],
    )

    assert result.exit_code == swaks.EXIT_NO_RCPT_ACCEPTED, result.transcript
    assert f"550 5.7.1 Unable to relay for <victim@{EXTERNAL}>" in result.server_lines()
    assert queued(mailgate) == []


def test_auth_is_not_offered_in_clear_text(mailgate: InProcessMailgate) -> None:
    result = swaks.run_swaks(
        "127.0.0.1", mailgate.port("mx"), sender=f"{USER}@{HOSTED}",
        recipients=[f"user@{HOSTED}"], auth=(USER, PASSWORD),
    )

    assert result.exit_code == swaks.EXIT_AUTH_FAILED, result.transcript
    assert queued(mailgate) == []
