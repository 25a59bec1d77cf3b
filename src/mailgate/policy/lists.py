"""Block-list and allow-list matching for the relay policy: address patterns and client networks.

Owns: the grammar of a list entry, its normalisation (IDNA A-labels, lower case, canonical address
literals, by reusing `core.address`), and the question "does this address / client IP match an
entry?". Used for the sender, recipient and client block lists (SPEC R6) and for the sender
addresses an authenticated user may use (SPEC R4).
Must not: decide what a match means (that is `relay.py`), read files or do DNS (DNSBL lives
elsewhere). Hand-written because the entry grammar is ours (Postfix access-map style) and tiny.

Entry grammar (one string per entry):
  "user@example.com"   that address exactly (local part compared case-insensitively, unquoted)
  "@example.com"       any address at exactly example.com (not its subdomains)
  "example.com"        any address at example.com or any of its subdomains (Postfix's
                       parent_domain_matches_subdomains behaviour for access maps)
  ".example.com"       any address at a subdomain of example.com, not example.com itself
Domains may be given as U-labels; they are stored as A-labels. "@[192.0.2.1]" matches an
address literal. A malformed entry raises ValueError naming the entry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mailgate.core.address import Address, AddressError, normalise_domain, parse_mailbox

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def canonical_ip(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 §2.5.5.2) as the IPv4 address.

    Dual-stack listeners report IPv4 clients in mapped form; without this a trusted 10.0.0.0/8
    would not match ::ffff:10.0.0.1, and a blocked IPv4 client would slip past its block list.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical_network(network: IPNetwork) -> IPNetwork:
    """A network inside ::ffff:0:0/96 as the IPv4 network it maps (see `canonical_ip`)."""
    mapped_space = ipaddress.IPv6Network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped_space):
        first = network.network_address.ipv4_mapped
        assert first is not None  # inside the mapped space by the test above
        return ipaddress.IPv4Network((first, network.prefixlen - 96))
    return network


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """One parsed entry; `local` is lower case or None (any local part)."""

    entry: str
    local: str | None
    domain: str
    exact_domain: bool
    subdomains: bool

    def matches(self, address: Address) -> bool:
        if self.local is not None and address.local_unquoted.lower() != self.local:
            return False
        if self.exact_domain and address.domain == self.domain:
            return True
        return self.subdomains and address.domain.endswith("." + self.domain)


def _canonical_domain(text: str, entry: str) -> str:
    try:
        if text.startswith("["):
            return parse_mailbox("x@" + text).domain
        return normalise_domain(text)
    except AddressError as exc:
        raise ValueError(f"bad list entry {entry!r}: {exc}") from None


def parse_pattern(entry: str) -> AddressPattern:
    """Parse one list entry (grammar in the module docstring); ValueError when malformed."""
    text = entry.strip()
    if "@" in text.lstrip("@"):
        try:
            address = parse_mailbox(text, smtputf8=True)
        except AddressError as exc:
            raise ValueError(f"bad list entry {entry!r}: {exc}") from None
        return AddressPattern(entry, address.local_unquoted.lower(), address.domain, True, False)
    if text.startswith("@"):
        return AddressPattern(entry, None, _canonical_domain(text[1:], entry), True, False)
    if text.startswith("."):
        return AddressPattern(entry, None, _canonical_domain(text[1:], entry), False, True)
    return AddressPattern(entry, None, _canonical_domain(text, entry), True, True)


class AddressList:
    """An ordered list of address patterns; `match` names the first entry that matches."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._patterns = tuple(parse_pattern(entry) for entry in entries)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def match(self, address: Address) -> str | None:
        for pattern in self._patterns:
            if pattern.matches(address):
                return pattern.entry
        return None


class NetworkList:
    """IPv4 and IPv6 networks; mapped addresses and networks compare as IPv4."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self._networks = tuple(canonical_network(network) for network in networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def match(self, address: IPAddress) -> IPNetwork | None:
        address = canonical_ip(address)
        for network in self._networks:
            if address.version == network.version and address in network:
                return network
        return None
