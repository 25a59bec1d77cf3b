"""The relay policy (SPEC R1-R6): ordered rules deciding connection, MAIL FROM and RCPT TO.

Owns: the policy settings values, the rule tables and their evaluation, Postfix
smtpd_*_restrictions style: each rule answers PERMIT, REJECT (with a Reply) or DUNNO (no opinion);
the first answer that is not DUNNO decides, and the `Decision` carries every rule consulted, with
its verdict, for `mailgate explain` and the logs.
Must not: do I/O, DNS (DNSBL is another stage), await anything, or parse addresses (core.address
does; domains arrive normalised: IDNA A-labels, lower case).

Recipient rules, in order; the last, default_reject, is "falling off the end" (SPEC R3):
  1. source_route        never decides; a source route is ignored and the final mailbox judged
                         (RFC 5321 §3.6.1 and Appendix C), the chain records "noted".
  2. ip_literal          an address literal naming this relay (own_addresses, loopback,
                         unspecified) is refused for everyone: it is not a hosted domain and
                         relaying it would loop; any other literal is refused unless the client
                         may relay.
  3. routing_characters  % ! @ in the unquoted local part of a local destination (percent hack,
                         bang path, quoted @) from a client that may not relay is refused unless
                         `allow_routing_local_parts`: the next hop could act on them and relay.
  4. recipient_blocklist destinations internal users (trusted network or authenticated) may not
                         send to (SPEC R6); 550 5.7.1.
  5. hosted_domain       permit a hosted domain (R1); a domain with a local-part list refuses
                         unknown local parts, 550 5.1.1 (compared case-insensitively, unquoted).
  6. trusted_network     permit a client inside `trusted_networks` (R2).
  7. authenticated       permit an authenticated client when `authenticated_relay` (R2).
  8. default_reject      550 5.7.1 Unable to relay for <address>.
Sender rules: sender_blocklist (inbound only: clients neither trusted nor authenticated; 550
5.7.1), auth_sender_ownership (553 5.7.1; which senders a user owns is the rule documented once,
at the `relay.restrict_auth_senders` key in config/schema.py; it applies to every sender, the
null sender <> included); then permit. Client rules: client_blocklist (554 5.7.1), then permit.

Reply codes: 550/553/554 per RFC 5321 §4.2.2-§4.2.3; enhanced 5.7.1 "delivery not authorized"
(RFC 3463 §3.8), 5.1.1 "bad destination mailbox" (RFC 3463 §3.2). Routing characters and relaying
through them: RFC 2505 §2.1. Refusing a sender the authenticated user may not use: RFC 6409 §6.1.
RFC 2505 §2.6.1 (never refuse <>) is about bounces from other MTAs, which do not authenticate, so
sender_blocklist never refuses <>, but an authenticated user may send as <> only when it owns it.

"May relay" means: inside a trusted network, or authenticated while `authenticated_relay` is on.
Hosted match: exact domain (A-label, case-insensitive), never a subdomain, except that an entry
written ".example.com" hosts every subdomain of example.com (but not example.com itself).
Client addresses in IPv4-mapped IPv6 form are judged as IPv4 (lists.canonical_ip).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from mailgate.auth.store import NULL_SENDER_ENTRY
from mailgate.core.address import Address, AddressError, normalise_domain, parse_mailbox
from mailgate.core.reply import (
    CLIENT_REFUSED,
    OK,
    RECIPIENT_OK,
    SENDER_NOT_OWNED,
    SENDER_OK,
    SENDER_REFUSED,
    USER_UNKNOWN,
    Reply,
    unable_to_relay,
)
from mailgate.policy.lists import AddressList, IPAddress, IPNetwork, NetworkList, canonical_ip

# RFC 3463 §3.8 X.7.1 "Delivery not authorized, message refused"; not in core.reply (yet).
RECIPIENT_BLOCKED = Reply(550, "5.7.1", "Recipient address refused by policy")

INBOUND = "inbound"
OUTBOUND = "outbound"


@dataclass(frozen=True)
class HostedDomain:
    """A domain mailgate accepts mail for (R1). `local_parts` None accepts any local part."""

    name: str
    local_parts: frozenset[str] | None = None


@dataclass(frozen=True)
class PolicySettings:
    hosted_domains: dict[str, HostedDomain]
    trusted_networks: tuple[IPNetwork, ...]
    authenticated_relay: bool = True
    restrict_auth_senders: bool = False
    sender_blocklist: tuple[str, ...] = ()
    recipient_blocklist: tuple[str, ...] = ()
    client_blocklist: tuple[IPNetwork, ...] = ()
    allow_routing_local_parts: bool = False
    own_addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class Client:
    address: IPAddress
    helo: str = ""
    auth_user: str | None = None
    tls: bool = False


@dataclass(frozen=True)
class Decision:
    reply: Reply
    rule: str
    permitted: bool
    chain: tuple[tuple[str, str], ...]  # (rule name, verdict) for each rule consulted, in order


class Verdict(str, Enum):
    PERMIT = "permit"
    REJECT = "reject"
    DUNNO = "dunno"
    NOTED = "noted"  # no opinion, but something worth showing in the chain (source route)


@dataclass(frozen=True)
class RuleResult:
    verdict: Verdict
    reply: Reply | None = None


DUNNO = RuleResult(Verdict.DUNNO)


@dataclass(frozen=True)
class Query:
    """What the rules may look at; computed once per check."""

    client: Client
    sender: Address | None
    trusted: bool
    relay_authenticated: bool  # authenticated and authenticated_relay is on

    @property
    def may_relay(self) -> bool:
        return self.trusted or self.relay_authenticated

    @property
    def internal(self) -> bool:
        """One of our users: a trusted network or any authenticated client."""
        return self.trusted or self.client.auth_user is not None


@dataclass(frozen=True)
class RecipientQuery(Query):
    recipient: Address
    local: bool  # a hosted domain (an address literal never is)
    hosted: HostedDomain | None


Q = TypeVar("Q", bound=Query)


@dataclass(frozen=True)
class Rule(Generic[Q]):
    name: str
    check: Callable[["RelayPolicy", Q], RuleResult]


def _evaluate(policy: "RelayPolicy", rules: tuple[Rule[Q], ...], query: Q) -> Decision:
    """First rule that permits or rejects decides; every table ends with a rule that decides."""
    chain: list[tuple[str, str]] = []
    for rule in rules:
        result = rule.check(policy, query)
        chain.append((rule.name, result.verdict.value))
        if result.verdict in (Verdict.PERMIT, Verdict.REJECT):
            assert result.reply is not None
            return Decision(result.reply, rule.name, result.verdict is Verdict.PERMIT, tuple(chain))
    raise AssertionError("a rule table must end with a rule that always decides")


def _reject(reply: Reply) -> RuleResult:
    return RuleResult(Verdict.REJECT, reply)


# --- Connection and sender rules -----------------------------------------------------------------
def _client_blocklist(policy: "RelayPolicy", query: Query) -> RuleResult:
    return _reject(CLIENT_REFUSED) if policy.client_blocklist.match(query.client.address) else DUNNO


def _sender_blocklist(policy: "RelayPolicy", query: Query) -> RuleResult:
    if query.internal or query.sender is None:
        return DUNNO
    return _reject(SENDER_REFUSED) if policy.sender_blocklist.match(query.sender) else DUNNO


def _auth_sender_ownership(policy: "RelayPolicy", query: Query) -> RuleResult:
    user = query.client.auth_user
    if user is None or not policy.settings.restrict_auth_senders:
        return DUNNO
    return DUNNO if owns_sender(user, policy.allowed_senders(user), query.sender) else _reject(SENDER_NOT_OWNED)


def owns_sender(user: str, entries: tuple[str, ...], sender: Address | None) -> bool:
    """Whether `user` may use `sender` (None: the null sender) under `restrict_auth_senders`:
    its login name when that is a mail address, and each entry of its allowed-senders list
    (`NULL_SENDER_ENTRY` for <>, else lists.py's grammar). Nothing else, <> included."""
    if sender is None:
        return NULL_SENDER_ENTRY in entries
    owned = [entry for entry in entries if entry != NULL_SENDER_ENTRY]
    try:
        owned.append(str(parse_mailbox(user, smtputf8=True)))
    except AddressError:
        pass  # a login name that is not a mail address owns no address by itself
    return AddressList(owned).match(sender) is not None


# --- Recipient rules (order documented in the module docstring) ---------------------------------
def _source_route(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    return RuleResult(Verdict.NOTED) if query.recipient.had_source_route else DUNNO


def _ip_literal(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    literal = query.recipient.literal_ip
    if literal is None or query.local:
        return DUNNO
    if policy.names_this_relay(literal) or not query.may_relay:
        return _reject(unable_to_relay(str(query.recipient)))
    return DUNNO


def _routing_characters(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    if not query.local or not query.recipient.has_routing_characters:
        return DUNNO
    if query.may_relay or policy.settings.allow_routing_local_parts:
        return DUNNO
    return _reject(unable_to_relay(str(query.recipient)))


def _recipient_blocklist(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    if not query.internal:
        return DUNNO
    blocked = policy.recipient_blocklist.match(query.recipient)
    return _reject(RECIPIENT_BLOCKED) if blocked else DUNNO


def _hosted_domain(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    if not query.local:
        return DUNNO
    known = query.hosted.local_parts if query.hosted else None
    if known is not None and query.recipient.local_unquoted.lower() not in known:
        return _reject(USER_UNKNOWN)
    return RuleResult(Verdict.PERMIT, RECIPIENT_OK)


def _trusted_network(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    return RuleResult(Verdict.PERMIT, RECIPIENT_OK) if query.trusted else DUNNO


def _authenticated(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    return RuleResult(Verdict.PERMIT, RECIPIENT_OK) if query.relay_authenticated else DUNNO


def _unable_to_relay(policy: "RelayPolicy", query: RecipientQuery) -> RuleResult:
    """Falling off the end of the recipient rules refuses (SPEC R3)."""
    return _reject(unable_to_relay(str(query.recipient)))


def _permit_with(reply: Reply) -> Callable[["RelayPolicy", Query], RuleResult]:
    return lambda policy, query: RuleResult(Verdict.PERMIT, reply)


CLIENT_RULES: tuple[Rule[Query], ...] = (
    Rule("client_blocklist", _client_blocklist),
    Rule("default_permit", _permit_with(OK)),
)
SENDER_RULES: tuple[Rule[Query], ...] = (
    Rule("sender_blocklist", _sender_blocklist),
    Rule("auth_sender_ownership", _auth_sender_ownership),
    Rule("default_permit", _permit_with(SENDER_OK)),
)
RECIPIENT_RULES: tuple[Rule[RecipientQuery], ...] = (
    Rule("source_route", _source_route),
    Rule("ip_literal", _ip_literal),
    Rule("routing_characters", _routing_characters),
    Rule("recipient_blocklist", _recipient_blocklist),
    Rule("hosted_domain", _hosted_domain),
    Rule("trusted_network", _trusted_network),
    Rule("authenticated", _authenticated),
    Rule("default_reject", _unable_to_relay),
)


def _normalise_hosted(entry: HostedDomain) -> tuple[str, bool, HostedDomain]:
    """(A-label name, subdomain wildcard?, entry with lower-case local parts); ValueError if bad."""
    wildcard = entry.name.startswith(".")
    try:
        name = normalise_domain(entry.name[1:] if wildcard else entry.name)
    except AddressError as exc:
        raise ValueError(f"hosted domain {entry.name!r}: {exc}") from None
    local_parts = entry.local_parts
    if local_parts is not None:
        local_parts = frozenset(part.lower() for part in local_parts)
    return name, wildcard, HostedDomain(("." if wildcard else "") + name, local_parts)


class RelayPolicy:
    """The relay decisions for one configuration; immutable, safe to share between sessions."""

    def __init__(
        self,
        settings: PolicySettings,
        allowed_senders: Callable[[str], tuple[str, ...]] = lambda user: (),
    ) -> None:
        self.settings = settings
        self.allowed_senders = allowed_senders
        self._exact: dict[str, HostedDomain] = {}
        self._wildcards: dict[str, HostedDomain] = {}
        for entry in settings.hosted_domains.values():
            name, wildcard, normalised = _normalise_hosted(entry)
            (self._wildcards if wildcard else self._exact)[name] = normalised
        self._trusted = NetworkList(settings.trusted_networks)
        self.client_blocklist = NetworkList(settings.client_blocklist)
        self.sender_blocklist = AddressList(settings.sender_blocklist)
        self.recipient_blocklist = AddressList(settings.recipient_blocklist)
        self._own = frozenset(canonical_ip(address) for address in settings.own_addresses)

    # --- public checks ---------------------------------------------------------------------------
    def check_client(self, client: Client) -> Decision:
        return _evaluate(self, CLIENT_RULES, self._query(client, None))

    def check_sender(self, client: Client, sender: Address | None) -> Decision:
        return _evaluate(self, SENDER_RULES, self._query(client, sender))

    def check_recipient(
        self, client: Client, sender: Address | None, recipient: Address
    ) -> Decision:
        base = self._query(client, sender)
        local, hosted = self._local_destination(recipient)
        query = RecipientQuery(
            client, sender, base.trusted, base.relay_authenticated, recipient, local, hosted
        )
        return _evaluate(self, RECIPIENT_RULES, query)

    def is_hosted(self, domain: str) -> bool:
        """True for a hosted domain."""
        try:
            address = parse_mailbox("postmaster@" + domain, smtputf8=True)
        except AddressError:
            return False
        return self._local_destination(address)[0]

    def hosted_name(self, recipient: Address) -> str | None:
        """The hosted-domain entry a recipient falls under, as configured ("." first for a
        subdomain wildcard); None for a literal or a domain not hosted."""
        hosted = self._local_destination(recipient)[1]
        return hosted.name if hosted is not None else None

    def direction(self, client: Client, recipient: Address) -> str:
        """"inbound" for mail from outside to a hosted destination; "outbound" for mail from an
        internal user (trusted or authenticated) or to any other destination."""
        if self._query(client, None).internal or not self._local_destination(recipient)[0]:
            return OUTBOUND
        return INBOUND

    def names_this_relay(self, address: IPAddress) -> bool:
        """An IP that is this relay: an own address, loopback or unspecified."""
        address = canonical_ip(address)
        return address in self._own or address.is_loopback or address.is_unspecified

    # --- helpers ---------------------------------------------------------------------------------
    def is_trusted(self, client: Client) -> bool:
        """Inside `trusted_networks` (exempt from the per-client message rate, for instance)."""
        return self._trusted.match(client.address) is not None

    def _query(self, client: Client, sender: Address | None) -> Query:
        trusted = self._trusted.match(client.address) is not None
        relay_authenticated = client.auth_user is not None and self.settings.authenticated_relay
        return Query(client, sender, trusted, relay_authenticated)

    def _local_destination(self, recipient: Address) -> tuple[bool, HostedDomain | None]:
        if recipient.literal_ip is not None:
            return False, None
        hosted = self._lookup(recipient.domain)
        return hosted is not None, hosted

    def _lookup(self, domain: str) -> HostedDomain | None:
        if domain in self._exact:
            return self._exact[domain]
        labels = domain.split(".")
        for start in range(1, len(labels)):
            parent = ".".join(labels[start:])
            if parent in self._wildcards:
                return self._wildcards[parent]
        return None
