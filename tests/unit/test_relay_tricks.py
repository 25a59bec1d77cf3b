"""Every relay-trick form (policy/tricks.py) is refused from an untrusted, unauthenticated client.

The RCPT argument is parsed with core.address.parse_path as the server would; AddressError means
the server answers 501 5.1.3 (BAD_ADDRESS_SYNTAX), which is also a refusal. The expected reply of
every form is in EXPECTED below, and every scenario (relay name hosted or not, IPv4 or IPv6 relay,
own literals local or not) must give the same answer.
"""

from __future__ import annotations

import ipaddress

import pytest

from mailgate.core.address import AddressError, parse_path
from mailgate.core.reply import BAD_ADDRESS_SYNTAX, Reply
from mailgate.policy.relay import Client, HostedDomain, PolicySettings, RelayPolicy
from mailgate.policy.tricks import NMAP, TRICKS, RelayTrick, RenderedTrick, render, render_all

pytestmark = pytest.mark.timeout(60)

TARGET = "nmap.scanme.org"
HOSTED = "example.com"
UNTRUSTED = Client(ipaddress.ip_address("198.51.100.7"), helo="relaytest")

RELAY = (550, "5.7.1")  # unable to relay / policy refusal (SPEC R3)
SYNTAX = (501, "5.1.3")  # parse_path refused it (RFC 5321 §4.2.2 501, RFC 3463 §3.2 X.1.3)

EXPECTED: dict[str, tuple[int, str]] = {
    "nmap_null_sender": RELAY,
    "nmap_sender_target": RELAY,
    "nmap_sender_relay_host": RELAY,
    "nmap_sender_relay_literal": RELAY,
    "nmap_percent_relay_literal": RELAY,
    "nmap_percent_relay_host": RELAY,
    "nmap_quoted_at": SYNTAX,
    "nmap_quoted_percent": SYNTAX,
    "nmap_double_at_relay_literal": SYNTAX,
    "nmap_quoted_at_relay_literal": RELAY,
    "nmap_double_at_relay_host": SYNTAX,
    "nmap_source_route_literal": RELAY,
    "nmap_source_route_host": RELAY,
    "nmap_bang": SYNTAX,
    "nmap_bang_relay_literal": RELAY,
    "nmap_bang_relay_host": RELAY,
    "percent_hosted": RELAY,
    "percent_twice_hosted": RELAY,
    "quoted_at_hosted": RELAY,
    "quoted_percent_hosted": RELAY,
    "quoted_escaped_at_hosted": RELAY,
    "quoted_bang_hosted": RELAY,
    "bang_hosted": RELAY,
    "bang_chain_hosted": RELAY,
    "percent_upper_case": RELAY,
    "percent_utf8_local": RELAY,
    "percent_fullwidth_hosted": RELAY,
    "double_at_hosted": SYNTAX,
    "double_at_hosted_first": SYNTAX,
    "source_route_hosted": RELAY,
    "source_route_chain": RELAY,
    "source_route_then_percent": RELAY,
    "source_route_no_colon": SYNTAX,
    "own_literal": RELAY,
    "own_literal_alternate_form": RELAY,
    "loopback_literal": RELAY,
    "loopback_v6_literal": RELAY,
    "unspecified_literal": RELAY,
    "foreign_literal": RELAY,
    "percent_foreign_literal": RELAY,
    "integer_literal": SYNTAX,
    "zero_padded_literal": SYNTAX,
    "unbracketed_ip": RELAY,
    "trailing_dot_target": SYNTAX,
    "trailing_dot_hosted_percent": SYNTAX,
    "trailing_dot_local": SYNTAX,
    "leading_dot_target": SYNTAX,
    "unbracketed_path": RELAY,
    "unclosed_bracket": SYNTAX,
    "nested_brackets": SYNTAX,
    "space_in_path": SYNTAX,
    "comment_in_domain": SYNTAX,
    "quoted_plain_local": RELAY,
    "upper_case_target": RELAY,
    "mixed_case_target": RELAY,
    "fullwidth_target": RELAY,
    "fullwidth_target_without_smtputf8": SYNTAX,
    "idn_u_label_target": RELAY,
    "idn_a_label_target": RELAY,
    "hosted_subdomain": RELAY,
    "hosted_as_prefix": RELAY,
    "hosted_as_suffix": RELAY,
    "spoofed_hosted_sender": RELAY,
}

# core.address reads a source route up to the first ':', so an IPv6 literal hop breaks the route
# syntax (RFC 5321 §4.1.2 allows only a Domain there anyway): refused as syntax, not as relaying.
IPV6_RELAY_EXPECTED = {"nmap_source_route_literal": SYNTAX}
# (relay host name, relay IP, relay name is itself a hosted domain)
SCENARIOS = [
    ("mx.relay.example", "192.0.2.1", False),
    ("mx.relay.example", "192.0.2.1", True),
    ("mx.relay.example", "2001:db8::25", False),
    ("mx.relay.example", "2001:db8::25", True),
]


def make_policy(relay_host: str, relay_ip: str, host_relay_name: bool) -> RelayPolicy:
    hosted = {HOSTED: HostedDomain(HOSTED)}
    if host_relay_name:
        hosted[relay_host] = HostedDomain(relay_host)
    return RelayPolicy(
        PolicySettings(
            hosted_domains=hosted,
            trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),),
            own_addresses=(ipaddress.ip_address(relay_ip),),
        )
    )


def server_reply(relay: RelayPolicy, form: RenderedTrick) -> Reply:
    """What mailgate answers to this RCPT TO from an untrusted, unauthenticated client."""
    try:
        recipient, _ = parse_path(form.rcpt_to, allow_null=False, smtputf8=form.smtputf8)
    except AddressError:
        return BAD_ADDRESS_SYNTAX
    assert recipient is not None
    decision = relay.check_recipient(UNTRUSTED, None, recipient)
    assert decision.permitted == decision.reply.is_positive
    return decision.reply


def test_table_is_complete_and_named_uniquely() -> None:
    names = [trick.name for trick in TRICKS]
    assert len(TRICKS) >= 45
    assert len(set(names)) == len(names)
    assert set(names) == set(EXPECTED)
    assert sum(trick.origin == NMAP for trick in TRICKS) == 16


def test_nmap_forms_render_as_nmap_sends_them() -> None:
    rendered = render_all(
        target=TARGET, relay_host="mx.relay.example", relay_ip="192.0.2.1", hosted=HOSTED
    )
    forms = {form.name: form for form in rendered}
    assert forms["nmap_null_sender"].mail_from == "<>"
    assert forms["nmap_percent_relay_literal"].rcpt_to == "<relaytest%nmap.scanme.org@[192.0.2.1]>"
    quoted = forms["nmap_quoted_at_relay_literal"].rcpt_to
    assert quoted == '<"relaytest@nmap.scanme.org"@[192.0.2.1]>'
    routed = forms["nmap_source_route_host"].rcpt_to
    assert routed == "<@mx.relay.example:relaytest@nmap.scanme.org>"
    assert forms["nmap_bang_relay_host"].mail_from == "<antispam@[192.0.2.1]>"
    assert forms["own_literal_alternate_form"].rcpt_to == "<relaytest@[IPv6:::ffff:192.0.2.1]>"
    assert forms["percent_upper_case"].rcpt_to == "<RELAYTEST%NMAP.SCANME.ORG@EXAMPLE.COM>"


def test_ipv6_relay_literals() -> None:
    trick = next(t for t in TRICKS if t.name == "own_literal_alternate_form")
    form = render(trick, target=TARGET, relay_host="mx", relay_ip="2001:db8::25", hosted=HOSTED)
    assert form.rcpt_to == "<relaytest@[IPv6:2001:0db8:0000:0000:0000:0000:0000:0025]>"
    recipient, _ = parse_path(form.rcpt_to, allow_null=False)
    assert recipient is not None and recipient.domain == "[IPv6:2001:db8::25]"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: "-".join(map(str, s)))
def test_every_trick_is_refused_with_its_expected_reply(
    scenario: tuple[str, str, bool],
) -> None:
    relay_host, relay_ip, host_relay_name = scenario
    relay = make_policy(relay_host, relay_ip, host_relay_name)
    expected = dict(EXPECTED)
    if ":" in relay_ip:
        expected.update(IPV6_RELAY_EXPECTED)
    failures = []
    for form in render_all(target=TARGET, relay_host=relay_host, relay_ip=relay_ip, hosted=HOSTED):
        reply = server_reply(relay, form)
        if reply.is_positive or (reply.code, reply.enhanced) != expected[form.name]:
            failures.append(f"{form.name}: RCPT TO:{form.rcpt_to} -> {reply}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("trick", TRICKS, ids=lambda t: t.name)
def test_sender_of_every_form_parses_and_is_accepted(trick: RelayTrick) -> None:
    """The relay refuses at RCPT, not MAIL: the tester's sender must reach the RCPT stage."""
    relay = make_policy("mx.relay.example", "192.0.2.1", False)
    form = render(
        trick, target=TARGET, relay_host="mx.relay.example", relay_ip="192.0.2.1", hosted=HOSTED
    )
    sender, _ = parse_path(form.mail_from, allow_null=True, smtputf8=form.smtputf8)
    assert relay.check_sender(UNTRUSTED, sender).permitted


def test_trusted_client_may_relay_a_plain_form() -> None:
    """Sanity check of the harness: the same table permits what a trusted client may do."""
    relay = make_policy("mx.relay.example", "192.0.2.1", False)
    rendered = render_all(target=TARGET, relay_host="mx", relay_ip="192.0.2.1", hosted=HOSTED)
    form = next(form for form in rendered if form.name == "upper_case_target")
    recipient, _ = parse_path(form.rcpt_to, allow_null=False)
    assert recipient is not None
    insider = Client(ipaddress.ip_address("10.0.0.5"))
    assert relay.check_recipient(insider, None, recipient).permitted
