"""AUTH on the receiving side (SPEC R2, R4): only inside TLS, PLAIN and LOGIN against the user file,
535 for a wrong password, 454 once a client failed too often, 530 before AUTH on submission, and
relaying (and sender ownership) for authenticated users only.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.auth.lockout import AuthFailureTracker
from mailgate.auth.store import FileUserStore
from mailgate.core.clock import SystemClock
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import (
    EXTERNAL, HOSTED, UNTRUSTED_SOURCE, RawSmtp, client_context, config_text, only_message, queued,
)

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "alice", "correct horse battery"
OWN_SENDER = f"{USER}@{HOSTED}"
PLAIN_RESPONSE = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
MESSAGE = b"Subject: auth test\r\nMessage-ID: <a@b>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhi\r\n"


def _start(tmp_path: Path, tls_files: dict[str, str], relay_extra: str = "") -> InProcessMailgate:
    FileUserStore(tmp_path / "users").add(USER, PASSWORD, [OWN_SENDER])
    return InProcessMailgate(config_text(tmp_path, tls_files, relay_extra=relay_extra))


@pytest.fixture
def mailgate(tmp_path: Path, tls_files: dict[str, str]) -> Iterator[InProcessMailgate]:
    with _start(tmp_path, tls_files) as mg:
        yield mg


def _submission(mg: InProcessMailgate, ca: str) -> smtplib.SMTP:
    """An untrusted client (127.0.0.2) on the submission port, inside STARTTLS."""
    smtp = smtplib.SMTP(
        "127.0.0.1", mg.port("submission"), source_address=(UNTRUSTED_SOURCE, 0), timeout=15
    )
    smtp.starttls(context=client_context(ca))
    smtp.ehlo()
    return smtp


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_over_starttls_succeeds_and_relays(
    mailgate: InProcessMailgate, tls_files: dict[str, str], mechanism: str
) -> None:
    with _submission(mailgate, tls_files["ca"]) as smtp:
        smtp.user, smtp.password = USER, PASSWORD
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        code, text = smtp.auth(mechanism, method)
        assert (code, text[:5]) == (235, b"2.7.0")
        # SPEC R2: an authenticated user may relay to any domain.
        assert smtp.mail(OWN_SENDER)[0] == 250
        assert smtp.rcpt(f"friend@{EXTERNAL}")[0] == 250
        assert smtp.data(MESSAGE)[0] == 250

    summary, stored = only_message(mailgate)
    assert [r[0] for r in summary.recipients] == [f"friend@{EXTERNAL}"]
    assert b"with ESMTPSA id" in stored  # RFC 3848


def test_wrong_password_is_refused_with_535(mailgate: InProcessMailgate, tls_files: dict[str, str]) -> None:
    mailgate.app.reception.lockout = AuthFailureTracker(SystemClock(), base_delay=0.01, max_delay=0.01)
    with _submission(mailgate, tls_files["ca"]) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login(USER, "wrong password")
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error.startswith(b"5.7.8 ")  # RFC 4954 §6


async def _auth_attempts(port: int, ca: str, responses: list[str]) -> list:
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    await client.reply()
    await client.command("EHLO client.test")
    assert (await client.command("STARTTLS")).code == 220
    await client.starttls(client_context(ca))
    await client.command("EHLO client.test")
    replies = [await client.command(f"AUTH PLAIN {response}") for response in responses]
    await client.close()
    return replies


def test_five_failures_lock_the_client_out_with_454(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    mailgate.app.reception.lockout = AuthFailureTracker(SystemClock(), base_delay=0.01, max_delay=0.01)
    wrong = base64.b64encode(f"\0{USER}\0guess".encode()).decode()

    replies = asyncio.run(
        _auth_attempts(mailgate.port("submission"), tls_files["ca"], [wrong] * 5 + [PLAIN_RESPONSE])
    )

    assert [(r.code, r.lines[0][:5]) for r in replies[:5]] == [(535, "5.7.8")] * 5
    # Locked out: even the right password gets 454 4.7.0 (RFC 4954 §6) without being checked.
    assert (replies[5].code, replies[5].lines[0][:5]) == (454, "4.7.0")


async def _auth_in_clear(port: int) -> tuple:
    client = await RawSmtp.connect(port)
    await client.reply()
    ehlo = await client.command("EHLO client.test")
    auth = await client.command(f"AUTH PLAIN {PLAIN_RESPONSE}")
    mail = await client.command(f"MAIL FROM:<{OWN_SENDER}>")
    await client.close()
    return ehlo, auth, mail


def test_auth_before_starttls_is_refused_with_538(mailgate: InProcessMailgate) -> None:
    ehlo, auth, mail = asyncio.run(_auth_in_clear(mailgate.port("mx")))

    assert not any(line.startswith("AUTH") for line in ehlo.lines)  # SPEC R4
    assert (auth.code, auth.lines[0][:6]) == (538, "5.7.11")  # RFC 4954 §4
    assert mail.code == 250  # the session goes on, unauthenticated


def test_mail_before_auth_on_submission_is_refused_with_530(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    with _submission(mailgate, tls_files["ca"]) as smtp:
        code, text = smtp.mail(OWN_SENDER)
        assert (code, text[:5]) == (530, b"5.7.0")  # RFC 4954 §6
        code, _ = smtp.rcpt(f"user@{HOSTED}")
        assert code == 503  # no transaction was opened
    assert queued(mailgate) == []


def test_unauthenticated_untrusted_client_cannot_relay(
    mailgate: InProcessMailgate, tls_files: dict[str, str]
) -> None:
    with smtplib.SMTP(
        "127.0.0.1", mailgate.port("mx"), source_address=(UNTRUSTED_SOURCE, 0), timeout=15
    ) as smtp:
        smtp.starttls(context=client_context(tls_files["ca"]))
        smtp.ehlo()
        assert smtp.mail(OWN_SENDER)[0] == 250
        code, text = smtp.rcpt(f"friend@{EXTERNAL}")
        assert (code, text) == (550, f"5.7.1 Unable to relay for <friend@{EXTERNAL}>".encode())
    assert queued(mailgate) == []


def test_restrict_auth_senders_user_added_without_a_list_owns_its_login_address(
    tmp_path: Path, tls_files: dict[str, str],
) -> None:
    """`mailgate user add carol@HOSTED` without --allow-sender: carol may send as herself only."""
    with _start(tmp_path, tls_files, "restrict_auth_senders = true") as mg:
        FileUserStore(tmp_path / "users").add(f"carol@{HOSTED}", PASSWORD)
        with _submission(mg, tls_files["ca"]) as smtp:
            smtp.login(f"carol@{HOSTED}", PASSWORD)
            for refused in ("", OWN_SENDER, f"carol@{EXTERNAL}"):
                code, text = smtp.mail(refused)
                assert (code, text[:5]) == (553, b"5.7.1"), refused
                smtp.rset()
            assert smtp.mail(f"Carol@{HOSTED.upper()}")[0] == 250
            assert smtp.rcpt(f"friend@{EXTERNAL}")[0] == 250
            assert smtp.data(MESSAGE)[0] == 250
        summary, _ = only_message(mg)
        assert summary.sender.lower() == f"carol@{HOSTED}"


def test_restrict_auth_senders_null_sender_only_when_listed(tmp_path: Path, tls_files: dict[str, str]) -> None:
    with _start(tmp_path, tls_files, "restrict_auth_senders = true") as mg:
        FileUserStore(tmp_path / "users").add("bouncer", PASSWORD, ["<>"])
        with _submission(mg, tls_files["ca"]) as smtp:
            smtp.login("bouncer", PASSWORD)
            assert smtp.mail("")[0] == 250
            assert smtp.rcpt(f"friend@{EXTERNAL}")[0] == 250
            assert smtp.data(MESSAGE)[0] == 250
        summary, _ = only_message(mg)
        assert summary.sender == ""


def test_restrict_auth_senders(tmp_path: Path, tls_files: dict[str, str]) -> None:
    with _start(tmp_path, tls_files, "restrict_auth_senders = true") as mg:
        with _submission(mg, tls_files["ca"]) as smtp:
            smtp.login(USER, PASSWORD)
            code, text = smtp.mail(f"mallory@{HOSTED}")
            assert (code, text[:5]) == (553, b"5.7.1")  # RFC 5321 §4.2.2, RFC 3463 X.7.1
            code, text = smtp.mail("")  # <> is not owned unless listed (relay.restrict_auth_senders)
            assert (code, text[:5]) == (553, b"5.7.1")
            smtp.rset()
            assert smtp.mail(OWN_SENDER.upper())[0] == 250  # compared case-insensitively
            assert smtp.rcpt(f"friend@{EXTERNAL}")[0] == 250
            assert smtp.data(MESSAGE)[0] == 250
        summary, _ = only_message(mg)
        assert summary.sender.lower() == OWN_SENDER
