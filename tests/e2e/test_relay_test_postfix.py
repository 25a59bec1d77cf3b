"""`mailgate relay-test` against real Postfix instances: a deliberately OPEN relay must be
reported OPEN (exit 1) with the accepted forms named; a closed one must never be called OPEN.
Nothing leaves the machine: the tool never sends DATA, and the harness routes nothing outward."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from mailgate.cli import relay_test_cmd
from tests.conftest import free_port, require_binary
from tests.support import postfix

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailgate")
    relay_test_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def wait_until_no_pending(relay: postfix.PostfixInstance, attempts: int = 50) -> int:
    for _ in range(attempts):
        pending = relay.pending_count()
        if pending == 0:
            return 0
        time.sleep(0.1)
    return pending


def test_open_postfix_is_reported_open(capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("postfix")
    with postfix.start_open_relay(free_port()) as relay:
        code = cli(["relay-test", f"{relay.host}:{relay.port}", "--json"])
        report = json.loads(capsys.readouterr().out)
        # RSET after RCPT: no message was ever queued. Postfix's cleanup unlinks the aborted
        # transaction's file in `incoming` a moment after the tool's QUIT; a queued message
        # would stay (nothing is routed outward), so wait for zero, bounded.
        assert wait_until_no_pending(relay) == 0
        log = relay.maillog()

    assert code == 1
    assert report["verdict"] == "OPEN"
    accepted = {a["form"]["name"] for a in report["attempts"] if a["outcome"] == "accepted"}
    assert {"nmap_null_sender", "nmap_sender_target", "upper_case_target"} <= accepted
    assert report["server_name"] == f"postfix-{relay.port}.test"
    assert all("C: DATA" not in a["transcript"] for a in report["attempts"])
    assert "queued as" not in log


def test_open_postfix_text_report_names_the_forms(capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("postfix")
    with postfix.start_open_relay(free_port()) as relay:
        code = cli(["relay-test", f"{relay.host}:{relay.port}", "--to", "victim@example.net"])
    out = capsys.readouterr().out
    assert code == 1
    [verdict] = [line for line in out.splitlines() if line.startswith("verdict: ")]
    assert verdict.startswith("verdict: OPEN: accepted given_addresses, nmap_null_sender")


def test_closed_postfix_is_never_reported_open(capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("postfix")
    # Trusts nobody; refuses other domains with 454 4.7.1 (defer_unauth_destination): the
    # verdict is INCONCLUSIVE (a 4xx proves nothing) unless Postfix is told to answer 5xx.
    with postfix.start_relay(free_port(), "hosted.test", ("127.0.0.1", free_port()), trusted_networks="") as relay:
        soft = cli(["relay-test", f"{relay.host}:{relay.port}", "--domain", "hosted.test"])
        soft_out = capsys.readouterr().out
    assert soft == 3 and "verdict: INCONCLUSIVE" in soft_out

    hard_settings = {"smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination"}
    with postfix.start_relay(free_port(), "hosted.test", ("127.0.0.1", free_port()), trusted_networks="",
                             settings=hard_settings) as relay:
        hard = cli(["relay-test", f"{relay.host}:{relay.port}", "--domain", "hosted.test", "--json"])
        report = json.loads(capsys.readouterr().out)
    assert hard == 0, [(a["form"]["name"], a["reply"]) for a in report["attempts"] if a["outcome"] != "refused"]
    assert report["verdict"] == "CLOSED"
