"""DNS block list (DNSBL) lookup of a client address (RFC 5782).

Owns: the query name for an address in a zone (reversed IPv4 octets, RFC 5782 §2.1; reversed IPv6
nibbles, RFC 5782 §2.4), what counts as "listed", and the listing's TXT reason.
Must not: decide the SMTP reply or whether DNSBL checks apply to a client (policy does), or cache.

Decisions:
- Listed means an A answer inside 127.0.0.0/24. RFC 5782 §2.3 puts list entries in 127.0.0.0/8;
  the narrower /24 keeps out the 127.255.255.x "query refused / bad resolver" codes that large lists
  (Spamhaus) send, which are not listings.
- An IPv4-mapped IPv6 client (::ffff:192.0.2.1, from a dual-stack socket) is looked up as IPv4.
- Zones are queried concurrently; the result is the first zone in the caller's order that lists the
  address, with its TXT reason ("" when there is none or the TXT lookup fails).
- Fail open: a zone that does not answer, fails or does not exist counts as "not listed". A block
  list is advisory, and an outage of a third party must not stop all inbound mail.
"""

from __future__ import annotations

import asyncio
import ipaddress

from mailgate.dns.resolver import DnsNoSuchDomain, DnsTemporaryError, Resolver

# RFC 5782 §2.3 (narrowed to a /24, see the module docstring).
LISTED_NETWORK = ipaddress.IPv4Network("127.0.0.0/24")


def query_name(client_ip: str, zone: str) -> str:
    """The DNSBL name of `client_ip` in `zone`; ValueError if `client_ip` is not an IP address."""
    address = ipaddress.ip_address(client_ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # reverse_pointer: "4.3.2.1.in-addr.arpa", or 32 nibbles + ".ip6.arpa" (RFC 5782 §2.1, §2.4).
    reversed_part = address.reverse_pointer.rsplit(".", 2)[0]
    return f"{reversed_part}.{zone.rstrip('.').lower()}"


async def _listed_in(resolver: Resolver, name: str) -> bool:
    try:
        answers = await resolver.a(name)
    except (DnsTemporaryError, DnsNoSuchDomain):
        return False
    return any(_is_listing(answer) for answer in answers)


def _is_listing(answer: str) -> bool:
    try:
        return ipaddress.IPv4Address(answer) in LISTED_NETWORK
    except ValueError:
        return False


async def _reason(resolver: Resolver, name: str) -> str:
    try:
        return " ".join(await resolver.txt(name))
    except (DnsTemporaryError, DnsNoSuchDomain):
        return ""


async def dnsbl_listed(
    resolver: Resolver, client_ip: str, zones: list[str]
) -> tuple[str, str] | None:
    """(zone, reason) for the first zone listing `client_ip`, or None; never raises DNS errors."""
    names = [query_name(client_ip, zone) for zone in zones]
    verdicts = await asyncio.gather(*(_listed_in(resolver, name) for name in names))
    for zone, name, listed in zip(zones, names, verdicts):
        if listed:
            return zone, await _reason(resolver, name)
    return None
