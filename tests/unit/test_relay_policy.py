"""Relay policy rules (SPEC R1-R6): every rule has a "must reject" case and its permit case."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from mailgate.core.address import Address, AddressError, parse_path
from mailgate.core.reply import (
    CLIENT_REFUSED,
    OK,
    RECIPIENT_OK,
    SENDER_NOT_OWNED,
    SENDER_OK,
    SENDER_REFUSED,
    USER_UNKNOWN,
    unable_to_relay,
)
from mailgate.policy.relay import (
    INBOUND,
    OUTBOUND,
    RECIPIENT_BLOCKED,
    Client,
    HostedDomain,
    PolicySettings,
    RelayPolicy,
)

pytestmark = pytest.mark.timeout(30)

OWN_IP = ipaddress.ip_address("192.0.2.1")
OUTSIDER = Client(ipaddress.ip_address("198.51.100.7"))
INSIDER_V4 = Client(ipaddress.ip_address("10.1.2.3"))
INSIDER_V6 = Client(ipaddress.ip_address("2001:db8:1::25"))
AUTHENTICATED = Client(ipaddress.ip_address("203.0.113.9"), auth_user="alice", tls=True)


def settings(**overrides: object) -> PolicySettings:
    values: dict[str, object] = {
        "hosted_domains": {
            "example.com": HostedDomain("example.com"),
            "staff.example": HostedDomain("staff.example", frozenset({"Alice", "bob"})),
            ".wild.example": HostedDomain(".wild.example"),
        },
        "trusted_networks": (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("2001:db8:1::/48"),
        ),
        "own_addresses": (OWN_IP,),
    }
    values.update(overrides)
    return PolicySettings(**values)  # type: ignore[arg-type]


def policy(**overrides: object) -> RelayPolicy:
    return RelayPolicy(settings(**overrides))


def address(text: str, smtputf8: bool = False) -> Address:
    parsed, _ = parse_path(text, allow_null=False, smtputf8=smtputf8)
    assert parsed is not None
    return parsed


def rcpt(relay: RelayPolicy, client: Client, text: str, smtputf8: bool = False):
    return relay.check_recipient(client, None, address(text, smtputf8))


# --- R1 inbound and R3 default refusal ------------------------------------------------------------
def test_hosted_domain_is_accepted_from_anyone() -> None:
    decision = rcpt(policy(), OUTSIDER, "<user@example.com>")
    assert decision.permitted and decision.reply == RECIPIENT_OK
    assert decision.rule == "hosted_domain"


def test_outside_domain_from_untrusted_client_is_unable_to_relay() -> None:
    decision = rcpt(policy(), OUTSIDER, "<someone@elsewhere.net>")
    assert not decision.permitted
    assert decision.reply == unable_to_relay("someone@elsewhere.net")
    assert decision.reply.encode() == b"550 5.7.1 Unable to relay for <someone@elsewhere.net>\r\n"
    assert decision.rule == "default_reject"
    assert [name for name, _ in decision.chain] == [
        "source_route", "ip_literal", "routing_characters", "recipient_blocklist",
        "hosted_domain", "trusted_network", "authenticated", "default_reject",
    ]
    assert decision.chain[-1] == ("default_reject", "reject")
    assert all(verdict == "dunno" for _, verdict in decision.chain[:-1])


def test_empty_configuration_relays_nothing() -> None:
    relay = RelayPolicy(PolicySettings(hosted_domains={}, trusted_networks=()))
    assert not rcpt(relay, OUTSIDER, "<a@example.com>").permitted
    # authenticated_relay defaults on
    assert rcpt(relay, AUTHENTICATED, "<a@example.com>").permitted


# --- R2 trusted networks and authenticated relay --------------------------------------------------
MAPPED_INSIDER = Client(ipaddress.ip_address("::ffff:10.9.9.9"))


@pytest.mark.parametrize("client", [INSIDER_V4, INSIDER_V6, MAPPED_INSIDER])
def test_trusted_networks_may_relay(client: Client) -> None:
    decision = rcpt(policy(), client, "<someone@elsewhere.net>")
    assert decision.permitted and decision.rule == "trusted_network"


@pytest.mark.parametrize(
    "text", ["11.0.0.0", "9.255.255.255", "2001:db8:2::1", "2001:db9:1::1", "::ffff:11.0.0.1"]
)
def test_addresses_just_outside_trusted_networks_may_not_relay(text: str) -> None:
    decision = rcpt(policy(), Client(ipaddress.ip_address(text)), "<someone@elsewhere.net>")
    assert not decision.permitted and decision.rule == "default_reject"


def test_authenticated_user_may_relay_when_enabled() -> None:
    decision = rcpt(policy(), AUTHENTICATED, "<someone@elsewhere.net>")
    assert decision.permitted and decision.rule == "authenticated"


def test_authenticated_user_may_not_relay_when_switched_off() -> None:
    relay = policy(authenticated_relay=False)
    decision = rcpt(relay, AUTHENTICATED, "<someone@elsewhere.net>")
    assert not decision.permitted and decision.reply.code == 550
    assert decision.rule == "default_reject"
    assert rcpt(relay, AUTHENTICATED, "<user@example.com>").permitted  # hosted mail still flows


# --- R4 authenticated sender ownership ------------------------------------------------------------
def owned(user: str) -> tuple[str, ...]:
    return {"alice": ("alice@example.com", "@staff.example")}.get(user, ())


def test_authenticated_sender_restriction() -> None:
    relay = RelayPolicy(settings(restrict_auth_senders=True), allowed_senders=owned)
    for text in ("<alice@example.com>", "<ALICE@Example.COM>", "<anyone@staff.example>"):
        decision = relay.check_sender(AUTHENTICATED, address(text))
        assert decision.permitted and decision.reply == SENDER_OK, text
    for text in ("<bob@example.com>", "<alice@sub.staff.example>", "<alice@elsewhere.net>"):
        decision = relay.check_sender(AUTHENTICATED, address(text))
        assert not decision.permitted, text
        assert decision.reply == SENDER_NOT_OWNED and decision.reply.code == 553
        assert decision.rule == "auth_sender_ownership"
    stranger = Client(AUTHENTICATED.address, auth_user="mallory")
    assert not relay.check_sender(stranger, address("<alice@example.com>")).permitted


# The one rule (relay.restrict_auth_senders): a user owns its login name when that is an address,
# plus its list ("<>" for the null sender); nothing else, <> included. Every combination:
OWNERSHIP_USERS = {
    "carol@example.com": (),  # added without --allow-sender
    "dave@example.com": ("@staff.example",),
    "erin@example.com": ("<>",),
    "relay-app": ("app@example.com",),  # a login name that is not an address
    "nobody": (),
}
OWNERSHIP_CASES = [
    ("carol@example.com", "<carol@example.com>", True),
    ("carol@example.com", "<CAROL@Example.COM>", True),
    ("carol@example.com", "<mallory@example.com>", False),
    ("carol@example.com", "<carol@elsewhere.net>", False),
    ("carol@example.com", None, False),
    ("dave@example.com", "<dave@example.com>", True),
    ("dave@example.com", "<anyone@staff.example>", True),
    ("dave@example.com", "<x@sub.staff.example>", False),
    ("dave@example.com", None, False),
    ("erin@example.com", None, True),
    ("erin@example.com", "<erin@example.com>", True),
    ("erin@example.com", "<other@example.com>", False),
    ("relay-app", "<app@example.com>", True),
    ("relay-app", "<relay-app@example.com>", False),
    ("relay-app", None, False),
    ("nobody", "<nobody@example.com>", False),
    ("nobody", None, False),
]


@pytest.mark.parametrize(("user", "sender", "owned_by_user"), OWNERSHIP_CASES)
def test_sender_ownership_rule_for_every_sender_and_list_kind(
    user: str, sender: str | None, owned_by_user: bool,
) -> None:
    client = Client(AUTHENTICATED.address, auth_user=user, tls=True)
    parsed = None if sender is None else address(sender)
    restricted = RelayPolicy(settings(restrict_auth_senders=True), allowed_senders=OWNERSHIP_USERS.__getitem__)
    decision = restricted.check_sender(client, parsed)
    assert decision.permitted is owned_by_user
    if not owned_by_user:
        assert decision.reply == SENDER_NOT_OWNED and decision.rule == "auth_sender_ownership"
    unrestricted = RelayPolicy(settings(), allowed_senders=OWNERSHIP_USERS.__getitem__)
    assert unrestricted.check_sender(client, parsed).permitted  # off: any sender, <> included
    assert restricted.check_sender(OUTSIDER, parsed).permitted  # only authenticated users are held to it


def test_sender_restriction_off_or_unauthenticated_allows_any_sender() -> None:
    relay = RelayPolicy(settings(), allowed_senders=owned)
    assert relay.check_sender(AUTHENTICATED, address("<x@elsewhere.net>")).permitted
    restricted = RelayPolicy(settings(restrict_auth_senders=True), allowed_senders=owned)
    decision = restricted.check_sender(OUTSIDER, address("<x@elsewhere.net>"))
    assert decision.permitted and decision.rule == "default_permit"


# --- R6 block lists -------------------------------------------------------------------------------
BLOCKED_SENDERS = ("spammer@bad.example", "@junk.example", "evil.example", "bücher.example")


@pytest.mark.parametrize(
    "text",
    ["<spammer@bad.example>", "<SPAMMER@BAD.EXAMPLE>", "<x@junk.example>", "<x@evil.example>",
     "<x@deep.sub.evil.example>", "<x@xn--bcher-kva.example>"],
)
def test_sender_block_list_refuses_inbound(text: str) -> None:
    relay = policy(sender_blocklist=BLOCKED_SENDERS)
    decision = relay.check_sender(OUTSIDER, address(text))
    assert not decision.permitted and decision.reply == SENDER_REFUSED
    assert decision.rule == "sender_blocklist"


@pytest.mark.parametrize(
    "text", ["<friend@bad.example>", "<x@sub.junk.example>", "<x@notevil.example>"]
)
def test_sender_block_list_does_not_overreach(text: str) -> None:
    assert policy(sender_blocklist=BLOCKED_SENDERS).check_sender(OUTSIDER, address(text)).permitted


def test_sender_block_list_is_for_inbound_only() -> None:
    relay = policy(sender_blocklist=BLOCKED_SENDERS)
    assert relay.check_sender(INSIDER_V4, address("<x@junk.example>")).permitted
    assert relay.check_sender(AUTHENTICATED, address("<x@junk.example>")).permitted
    assert relay.check_sender(OUTSIDER, None).permitted


def test_client_block_list() -> None:
    blocked = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:bad::/48"))
    relay = policy(client_blocklist=blocked)
    for text in ("198.51.100.7", "::ffff:198.51.100.200", "2001:db8:bad::1"):
        decision = relay.check_client(Client(ipaddress.ip_address(text)))
        assert not decision.permitted
        assert decision.reply == CLIENT_REFUSED and decision.reply.code == 554
        assert decision.chain == (("client_blocklist", "reject"),)
    decision = relay.check_client(INSIDER_V4)
    assert decision.permitted and decision.reply == OK and decision.rule == "default_permit"


def test_recipient_block_list_stops_internal_users() -> None:
    relay = policy(recipient_blocklist=("competitor.example", "ceo@partner.example"))
    for client in (INSIDER_V4, INSIDER_V6, AUTHENTICATED):
        for text in ("<x@competitor.example>", "<x@a.competitor.example>", "<CEO@partner.example>"):
            decision = rcpt(relay, client, text)
            assert not decision.permitted and decision.reply == RECIPIENT_BLOCKED, text
            assert decision.rule == "recipient_blocklist"
        assert rcpt(relay, client, "<sales@partner.example>").permitted
    # An outside client learns nothing about the block list: the plain relay refusal.
    assert rcpt(relay, OUTSIDER, "<x@competitor.example>").rule == "default_reject"


# --- Hosted domains: local parts, IDN, case, subdomains -------------------------------------------
def test_hosted_local_part_list() -> None:
    relay = policy()
    known = ("<alice@staff.example>", "<ALICE@STAFF.EXAMPLE>", "<Bob@staff.example>",
             '<"bob"@staff.example>')
    for text in known:
        assert rcpt(relay, OUTSIDER, text).permitted, text
    decision = rcpt(relay, OUTSIDER, "<carol@staff.example>")
    assert not decision.permitted
    assert decision.reply == USER_UNKNOWN and decision.reply.enhanced == "5.1.1"
    assert decision.rule == "hosted_domain"
    # Trusted clients get no pass for unknown local parts either.
    assert rcpt(relay, INSIDER_V4, "<carol@staff.example>").reply == USER_UNKNOWN


@pytest.mark.parametrize(
    "configured", ["bücher.example", "xn--bcher-kva.example", "BÜCHER.example"]
)
@pytest.mark.parametrize(
    "recipient, smtputf8",
    [
        ("<info@bücher.example>", True),
        ("<info@xn--bcher-kva.example>", False),
        ("<info@XN--BCHER-KVA.EXAMPLE>", False),
    ],
)
def test_idn_hosted_domain_in_either_form(configured: str, recipient: str, smtputf8: bool) -> None:
    hosted = {configured: HostedDomain(configured)}
    relay = RelayPolicy(PolicySettings(hosted_domains=hosted, trusted_networks=()))
    assert rcpt(relay, OUTSIDER, recipient, smtputf8).permitted
    assert relay.is_hosted("bücher.example") and relay.is_hosted("xn--bcher-kva.example")


def test_hosted_match_is_case_insensitive_and_exact() -> None:
    relay = policy()
    assert rcpt(relay, OUTSIDER, "<User@EXAMPLE.COM>").permitted
    for text in ("<u@sub.example.com>", "<u@example.com.evil.net>", "<u@notexample.com>"):
        decision = rcpt(relay, OUTSIDER, text)
        assert not decision.permitted and decision.rule == "default_reject", text


def test_leading_dot_hosts_subdomains_only() -> None:
    relay = policy()
    assert rcpt(relay, OUTSIDER, "<u@a.wild.example>").permitted
    assert rcpt(relay, OUTSIDER, "<u@b.a.wild.example>").permitted
    assert not rcpt(relay, OUTSIDER, "<u@wild.example>").permitted
    assert relay.is_hosted("A.Wild.Example") and not relay.is_hosted("wild.example")
    assert not relay.is_hosted("not a domain")


# --- R5 tricks, rule by rule ----------------------------------------------------------------------
ROUTED = [
    "<a%elsewhere.net@example.com>",
    "<elsewhere.net!a@example.com>",
    '<"a@elsewhere.net"@example.com>',
    '<"a\\%elsewhere.net"@example.com>',
]


@pytest.mark.parametrize("text", ROUTED)
def test_routing_characters_to_hosted_domain_are_refused(text: str) -> None:
    decision = rcpt(policy(), OUTSIDER, text)
    assert not decision.permitted and decision.rule == "routing_characters"
    assert decision.reply.code == 550 and decision.reply.enhanced == "5.7.1"


def test_routing_characters_allowed_when_configured_or_trusted() -> None:
    allowed = policy(allow_routing_local_parts=True)
    assert rcpt(allowed, OUTSIDER, "<a%elsewhere.net@example.com>").permitted
    assert rcpt(policy(), INSIDER_V4, "<a%elsewhere.net@example.com>").permitted
    assert rcpt(policy(), AUTHENTICATED, "<a%elsewhere.net@example.com>").permitted
    switched_off = policy(authenticated_relay=False)
    assert not rcpt(switched_off, AUTHENTICATED, "<a%elsewhere.net@example.com>").permitted


def test_ip_literals() -> None:
    relay = policy()
    decision = rcpt(relay, OUTSIDER, "<a@[203.0.113.50]>")
    assert not decision.permitted and decision.rule == "ip_literal"
    assert decision.reply == unable_to_relay("a@[203.0.113.50]")
    assert rcpt(relay, INSIDER_V4, "<a@[203.0.113.50]>").permitted
    assert rcpt(relay, AUTHENTICATED, "<a@[IPv6:2001:db8:5::1]>").permitted


SELF_LITERALS = [
    "<a@[192.0.2.1]>",
    "<a@[IPv6:::ffff:192.0.2.1]>",
    "<a@[127.0.0.1]>",
    "<a@[IPv6:::1]>",
    "<a@[0.0.0.0]>",
]


@pytest.mark.parametrize("text", SELF_LITERALS)
@pytest.mark.parametrize("client", [OUTSIDER, INSIDER_V4, AUTHENTICATED])
def test_literal_naming_this_relay_is_refused_for_everyone(text: str, client: Client) -> None:
    decision = rcpt(policy(), client, text)
    assert not decision.permitted and decision.rule == "ip_literal" and decision.reply.code == 550


def test_an_own_address_literal_is_never_a_hosted_destination() -> None:
    relay = policy()
    assert not rcpt(relay, OUTSIDER, "<postmaster@[192.0.2.1]>").permitted
    assert not relay.is_hosted("[192.0.2.1]")
    assert relay.direction(OUTSIDER, address("<p@[192.0.2.1]>")) == OUTBOUND


def test_source_route_is_noted_and_final_mailbox_judged() -> None:
    relay = policy()
    refused = rcpt(relay, OUTSIDER, "<@example.com:a@elsewhere.net>")
    assert not refused.permitted and refused.chain[0] == ("source_route", "noted")
    assert refused.reply == unable_to_relay("a@elsewhere.net")
    accepted = rcpt(relay, OUTSIDER, "<@elsewhere.net:a@example.com>")
    assert accepted.permitted and accepted.chain[0] == ("source_route", "noted")
    assert rcpt(relay, OUTSIDER, "<a@example.com>").chain[0] == ("source_route", "dunno")


# --- Direction and construction -------------------------------------------------------------------
def test_direction() -> None:
    relay = policy()
    assert relay.direction(OUTSIDER, address("<a@example.com>")) == INBOUND
    assert relay.direction(INSIDER_V4, address("<a@elsewhere.net>")) == OUTBOUND
    assert relay.direction(AUTHENTICATED, address("<a@example.com>")) == OUTBOUND
    assert relay.direction(OUTSIDER, address("<a@elsewhere.net>")) == OUTBOUND


@pytest.mark.parametrize("bad", ["*", "", "exa mple.com", "example.com."])
def test_malformed_hosted_domain_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ValueError):
        RelayPolicy(PolicySettings(hosted_domains={bad: HostedDomain(bad)}, trusted_networks=()))


@pytest.mark.parametrize("bad", ["a@@b.example", "@", "bad..example", "x@[300.1.1.1]"])
def test_malformed_block_list_entry_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ValueError):
        policy(sender_blocklist=(bad,))


DOMAINS = st.sampled_from([
    "example.com", "EXAMPLE.COM", "staff.example", "a.wild.example", "wild.example",
    "sub.example.com", "elsewhere.net", "example.com.elsewhere.net", "xn--bcher-kva.example",
    "[192.0.2.1]", "[127.0.0.1]", "[203.0.113.5]", "[IPv6:::ffff:192.0.2.1]",
])
ATOMS = st.text(alphabet="abcXYZ09+-_%!", min_size=1, max_size=10)
LOCAL_PARTS = st.one_of(
    st.lists(ATOMS, min_size=1, max_size=3).map(".".join),
    st.text(alphabet="abc@%! .", min_size=1, max_size=10).map(lambda text: f'"{text}"'),
)


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    route=st.sampled_from(["", "@example.com:", "@elsewhere.net:", "@[192.0.2.1]:"]),
    local=LOCAL_PARTS,
    domain=DOMAINS,
)
def test_untrusted_client_never_relays(route: str, local: str, domain: str) -> None:
    """Whatever parses, an outsider is only ever permitted to a hosted, unrouted mailbox."""
    relay = policy()
    try:
        path = f"<{route}{local}@{domain}>"
        recipient, _ = parse_path(path, allow_null=False, smtputf8=True)
    except AddressError:
        return
    assert recipient is not None
    decision = relay.check_recipient(OUTSIDER, None, recipient)
    if decision.permitted:
        assert decision.rule == "hosted_domain"
        assert relay.is_hosted(recipient.domain) and not recipient.literal
        assert not recipient.has_routing_characters
