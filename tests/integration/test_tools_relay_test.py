"""`mailgate relay-test` and the start-up self-audit against a real mailgate on loopback.

From an untrusted source (127.0.0.2) every form must be refused: CLOSED, exit 0. From the trusted
127.0.0.1 the same server relays, and the tool must say OPEN (exit 1) and name the forms. The
self-audit returns [] for a correct configuration and the accepted forms when the configuration
trusts the audit's source address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

import pytest

from mailgate.cli import relay_test_cmd
from mailgate.policy.tricks import TRICKS
from mailgate.tools.audit import AuditTarget, audit_listener, self_audit
from mailgate.tools.relay_test import Verdict
from tests.support.mailgate_server import InProcessMailgate
from mailgate.app_config import StartupError
from tests.support.receiving import HOSTED, UNTRUSTED_SOURCE, config_text, queued

pytestmark = pytest.mark.timeout(120)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailgate")
    relay_test_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_mailgate_is_closed_to_an_untrusted_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with InProcessMailgate(config_text(tmp_path)) as mg:
        server = f"127.0.0.1:{mg.port('mx')}"
        code = cli(["relay-test", server, "--source-address", UNTRUSTED_SOURCE, "--domain", HOSTED, "--json"])
        report = json.loads(capsys.readouterr().out)
        assert queued(mg) == []

    assert code == 0
    assert report["verdict"] == "CLOSED"
    assert report["server_name"] == "mx.test" and report["server_address"] == "127.0.0.1"
    assert len(report["attempts"]) == len(TRICKS)
    assert all(attempt["outcome"] == "refused" for attempt in report["attempts"])
    for attempt in report["attempts"]:
        sent = [line for line in attempt["transcript"] if line.startswith("C: ")]
        assert "C: DATA" not in sent  # never a message
        assert sent[-2:] == ["C: RSET", "C: QUIT"] or attempt["stage"] == "mail"


def test_trusted_client_sees_an_open_relay_with_forms_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with InProcessMailgate(config_text(tmp_path)) as mg:
        code = cli(["relay-test", f"127.0.0.1:{mg.port('mx')}", "--source-address", "127.0.0.1",
                    "--from", "me@example.org", "--to", "you@example.net"])
        out = capsys.readouterr().out
        assert queued(mg) == []  # RSET after RCPT: nothing was sent

    assert code == 1
    [verdict] = [line for line in out.splitlines() if line.startswith("verdict: ")]
    assert verdict.startswith("verdict: OPEN: accepted given_addresses, nmap_null_sender")
    assert "--- transcript: given_addresses" in out
    assert "C: RCPT TO:<you@example.net>" in out


def test_a_hosted_domain_guessed_from_ehlo_is_said_in_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20 item 10: without --domain the hosted-domain forms silently used the EHLO name."""
    with InProcessMailgate(config_text(tmp_path)) as mg:
        server = f"127.0.0.1:{mg.port('mx')}"
        assert cli(["relay-test", server, "--source-address", UNTRUSTED_SOURCE]) == 0
        guessed = capsys.readouterr().out
        assert cli(["relay-test", server, "--source-address", UNTRUSTED_SOURCE, "--domain", HOSTED, "--json"]) == 0
        given = json.loads(capsys.readouterr().out)
    assert "hosted domain mx.test (from the EHLO name)" in guessed
    assert "tricks against the domain it really hosts were not tried: rerun with --domain DOMAIN" in guessed
    assert given["hosted"] == HOSTED and given["hosted_from"] == "--domain"


def test_the_hosted_domain_is_learnt_from_the_servers_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20 item 10: the EHLO name mx.hosted.test suggests hosted.test; the server accepting
    postmaster@hosted.test (and refusing postmaster@ the outside target) confirms it."""
    text = config_text(tmp_path).replace('hostname = "mx.test"', 'hostname = "mx.hosted.test"')
    assert 'hostname = "mx.hosted.test"' in text
    with InProcessMailgate(text) as mg:
        server = f"127.0.0.1:{mg.port('mx')}"
        assert cli(["relay-test", server, "--source-address", UNTRUSTED_SOURCE, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert queued(mg) == []
    assert (report["hosted"], report["hosted_from"]) == (HOSTED, "server's answers")


def test_unreachable_server_is_inconclusive(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    assert cli(["relay-test", f"127.0.0.1:{free_port()}", "--timeout", "5"]) == 3
    out = capsys.readouterr().out
    assert "cannot test" in out and "verdict: INCONCLUSIVE" in out


def test_self_audit_passes_a_correct_configuration(tmp_path: Path) -> None:
    with InProcessMailgate(config_text(tmp_path)) as mg:
        accepted = mg.call(self_audit([("127.0.0.1", mg.port("mx"))], HOSTED))
    assert accepted == []


def open_config(tmp_path: Path, self_audit: bool) -> str:
    relay = 'trusted_networks = ["127.0.0.0/8"]\nacknowledge_open_relay = true'
    text = config_text(tmp_path, server_extra=f"self_audit = {str(self_audit).lower()}\n")
    return text.replace('[relay]\ntrusted_networks = ["127.0.0.1/32"]', "[relay]\n" + relay)


def test_start_up_refuses_to_run_when_the_self_audit_relays(tmp_path: Path) -> None:
    mailgate = InProcessMailgate(open_config(tmp_path, self_audit=True))
    try:
        with pytest.raises(StartupError, match="self-audit: an untrusted client"):
            mailgate.__enter__()
    finally:
        mailgate.__exit__(None, None, None)


def test_self_audit_catches_a_configuration_that_trusts_its_source(tmp_path: Path) -> None:
    with InProcessMailgate(open_config(tmp_path, self_audit=False)) as mg:
        accepted = mg.call(self_audit([AuditTarget("127.0.0.1", mg.port("mx"))], HOSTED))
    assert len(accepted) > 16
    assert any("nmap_null_sender: MAIL FROM:<> RCPT TO:<relaytest@example.net>" in line for line in accepted)


def test_self_audit_checks_tls_listeners_too(tmp_path: Path, tls_files: dict[str, str]) -> None:
    with InProcessMailgate(config_text(tmp_path, tls_files)) as mg:
        targets = [
            AuditTarget("127.0.0.1", mg.port("mx")),
            AuditTarget("127.0.0.1", mg.port("submission")),
            AuditTarget("127.0.0.1", mg.port("smtps"), implicit_tls=True),
        ]
        accepted = mg.call(self_audit(targets, HOSTED))
        reports = [mg.call(audit_listener(target, HOSTED)) for target in targets]
    assert accepted == []
    assert [report.verdict for report in reports] == [Verdict.CLOSED] * 3
    submission_mail = {attempt.stage + " " + attempt.reply[:3] for attempt in reports[1].attempts}
    assert submission_mail == {"mail 530"}  # AUTH required before MAIL (RFC 4954 §6)


def test_self_audit_skips_an_ipv6_loopback_listener(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailgate.audit")
    assert asyncio.run(self_audit([("::1", 25)], HOSTED)) == []
    assert "skipped (INCONCLUSIVE)" in caplog.text
