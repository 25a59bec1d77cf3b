"""tools/explain.py and `mailgate explain`: the real policy on a hypothetical transaction, with
the deciding rule and the chain per recipient."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from mailgate.app_config import policy_settings
from mailgate.cli import explain_cmd
from mailgate.config.loader import load_text
from mailgate.dns.resolver import StaticResolver
from mailgate.policy.relay import RelayPolicy
from mailgate.tools.explain import Hypothetical, SessionLimits, explain

pytestmark = pytest.mark.timeout(30)

CONFIG = """
[server]
hostname = "mx.corp.test"
max_recipients = 2
max_message_size = 10000
users_file = "{users}"
spool_dir = "{spool}"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
tls = "none"

[relay]
trusted_networks = ["10.0.0.0/8"]
client_blocklist = ["198.51.100.0/24"]
sender_blocklist = ["@spam.test"]
recipient_blocklist = ["forbidden.test"]

[[domain]]
name = "corp.test"
local_parts = ["alice", "bob"]
next_hop = ["10.0.0.25"]

[dns]
dnsbl_zones = ["bl.test"]
"""
LIMITS = SessionLimits("mx.corp.test", auth="none", max_message_size=10000, max_recipients=2)
DNS = StaticResolver({"9.113.0.203.bl.test": {"A": ["127.0.0.2"], "TXT": ["listed for spam"]}})


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(CONFIG.format(users=tmp_path / "users", spool=tmp_path / "spool"))
    return path


@pytest.fixture
def policy(config_file: Path) -> RelayPolicy:
    return RelayPolicy(policy_settings(load_text(config_file.read_text())))


def run(policy: RelayPolicy, client: str, sender: str, *recipients: str, **extra) -> object:
    request = Hypothetical(client, sender, tuple(recipients), **extra)
    return asyncio.run(explain(policy, request, LIMITS, resolver=DNS, dnsbl_zones=("bl.test",)))


def test_each_recipient_gets_its_reply_rule_and_chain(policy: RelayPolicy) -> None:
    result = run(policy, "203.0.113.5", "x@example.org", "alice@corp.test", "carol@corp.test", "x@example.net")
    alice, carol, outside = result.recipients
    assert (alice.reply, alice.rule, alice.permitted) == ("250 2.1.5 Recipient OK", "hosted_domain", True)
    assert carol.reply.startswith("550 5.1.1") and carol.rule == "hosted_domain"
    assert outside.reply == "550 5.7.1 Unable to relay for <x@example.net>"
    assert outside.rule == "default_reject"
    assert [rule for rule, _ in outside.chain] == [
        "source_route", "ip_literal", "routing_characters", "recipient_blocklist", "hosted_domain",
        "trusted_network", "authenticated", "default_reject",
    ]
    assert [step.stage for step in result.steps] == ["connection", "dnsbl", "mail"]
    assert not result.all_accepted


def test_trusted_network_relays_but_not_to_blocked_destinations(policy: RelayPolicy) -> None:
    result = run(policy, "10.1.2.3", "app@corp.test", "x@example.net", "y@forbidden.test")
    relayed, blocked = result.recipients
    assert (relayed.rule, relayed.permitted) == ("trusted_network", True)
    assert (blocked.rule, blocked.permitted) == ("recipient_blocklist", False)


def test_refusal_at_connection_applies_to_every_recipient(policy: RelayPolicy) -> None:
    result = run(policy, "198.51.100.7", "x@example.org", "alice@corp.test", "bob@corp.test")
    assert [step.rule for step in result.recipients] == ["client_blocklist", "client_blocklist"]
    assert all(step.reply.startswith("554 5.7.1") and step.stage == "connection" for step in result.recipients)


def test_dnsbl_listing_refuses_the_session(policy: RelayPolicy) -> None:
    result = run(policy, "203.0.113.9", "x@example.org", "alice@corp.test")
    (step,) = result.recipients
    assert step.rule == "dnsbl:bl.test" and step.stage == "dnsbl"
    assert step.reply == "554 5.7.1 Client 203.0.113.9 listed by bl.test: listed for spam"


def test_sender_blocklist_size_limit_and_recipient_limit(policy: RelayPolicy) -> None:
    blocked = run(policy, "203.0.113.5", "bad@spam.test", "alice@corp.test")
    assert blocked.recipients[0].rule == "sender_blocklist" and blocked.recipients[0].stage == "mail"

    too_big = run(policy, "203.0.113.5", "x@example.org", "alice@corp.test", size=20000)
    assert too_big.recipients[0].reply.startswith("552 5.3.4")
    assert too_big.recipients[0].rule == "max_message_size"

    many = run(policy, "203.0.113.5", "x@example.org", "alice@corp.test", "bob@corp.test", "alice@corp.test")
    assert [step.rule for step in many.recipients] == ["hosted_domain", "hosted_domain", "max_recipients"]
    assert many.recipients[2].reply.startswith("452 4.5.3")


def test_address_syntax_is_judged_by_the_protocol_parser(policy: RelayPolicy) -> None:
    result = run(policy, "203.0.113.5", "x@example.org", "not an address", "alice@corp.test")
    bad, good = result.recipients
    assert bad.rule == "rcpt_syntax" and bad.reply.startswith("501")
    assert good.permitted


def test_authenticated_user_relays_and_required_auth_is_enforced(policy: RelayPolicy) -> None:
    result = run(policy, "203.0.113.5", "alice@corp.test", "x@example.net", user="Alice")
    assert (result.recipients[0].rule, result.recipients[0].permitted) == ("authenticated", True)
    submission = SessionLimits("mx.corp.test", auth="required", max_message_size=10000, max_recipients=2)
    request = Hypothetical("203.0.113.5", "alice@corp.test", ("x@example.net",))
    refused = asyncio.run(explain(policy, request, submission))
    assert refused.recipients[0].rule == "listener_auth_required"
    assert refused.recipients[0].reply.startswith("530 5.7.0")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailgate")
    explain_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_text_and_json(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["explain", "--config", str(config_file), "--no-dnsbl", "--client", "203.0.113.5", "--from", "x@example.org"]
    assert cli([*base, "--to", "alice@corp.test"]) == 0
    text = capsys.readouterr().out
    assert "RCPT TO:<alice@corp.test>" in text and "decided by: hosted_domain" in text
    assert "chain: source_route:dunno -> ip_literal:dunno" in text

    assert cli([*base, "--to", "alice@corp.test", "--to", "x@example.net", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [r["rule"] for r in data["recipients"]] == ["hosted_domain", "default_reject"]
    assert data["recipients"][1]["chain"][-1] == {"rule": "default_reject", "verdict": "reject"}
    assert data["all_accepted"] is False


def test_cli_usage_errors(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["explain", "--config", str(config_file), "--from", "x@example.org", "--to", "a@corp.test"]
    assert cli([*base, "--client", "not-an-ip"]) == 2
    assert cli([*base, "--client", "192.0.2.1", "--listener", "nope"]) == 2
    assert cli(["explain", "--config", str(config_file.parent / "missing.toml"), "--client", "192.0.2.1",
                "--from", "a@b.test", "--to", "c@d.test"]) == 2
    errors = capsys.readouterr().err
    assert "not-an-ip" in errors and "no listener named 'nope'" in errors and "no such file" in errors


def test_cli_notes_an_unknown_user(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["explain", "--config", str(config_file), "--no-dnsbl", "--client", "203.0.113.5",
                "--user", "mallory", "--from", "m@example.org", "--to", "x@example.net"]) == 0
    assert "user 'mallory' is not in" in capsys.readouterr().out
