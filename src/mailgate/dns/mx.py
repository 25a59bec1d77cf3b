"""MX resolution for outbound delivery (RFC 5321 §5.1, RFC 7505).

Owns: turning a recipient domain into the ordered list of hosts to try, each with its addresses:
MX records sorted by preference with equal preferences shuffled (RFC 5321 §5.1, load spreading),
the implicit MX from the domain's own addresses when it has no MX (RFC 5321 §5.1), the null MX
(RFC 7505 §3), and which DNS outcomes are permanent or temporary for the domain as a whole.
Must not: connect to anything, know about next hops or smart hosts (delivery routing does), drop MX
hosts that name this relay itself (RFC 5321 §5.1 loop rule: the caller knows our names), or cache.

Rules, in order:
- The domain does not exist (NXDOMAIN)                -> `DnsNoSuchDomain` (permanent).
- The MX lookup fails (SERVFAIL, time-out)            -> `DnsTemporaryError`.
- The only MX target is the root "." (any preference) -> `NullMx` (permanent, 556 5.1.10). A "."
  published next to real MX hosts (forbidden by RFC 7505 §3) is ignored, and the real hosts used.
- No MX records                                       -> one implicit host: the domain itself at
  preference 0, with its AAAA and A addresses (`implicit=True`).
- Each MX target's addresses are looked up concurrently. A target that does not exist or has no
  address is skipped. A target whose lookup failed temporarily is kept with `addresses == []`, so the
  caller can log it, but only when another host has addresses; a name listed twice keeps its lowest
  preference.
- No host with any address                            -> `DnsTemporaryError` (DNS may be mid-change;
  the queue's maximum lifetime bounds the retries).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Protocol

from mailgate.core.address import normalise_domain
from mailgate.core.reply import NULL_MX, Reply
from mailgate.dns.resolver import DnsNoSuchDomain, DnsTemporaryError, Resolver

# RFC 7505 §3: the null MX is a single MX whose exchange is the root domain.
ROOT = "."
# RFC 5321 §5.1: with no MX, the domain is its own implicit MX "with a preference of 0".
IMPLICIT_PREFERENCE = 0


class Shuffler(Protocol):
    def shuffle(self, x: list[Any]) -> None: ...


@dataclass(frozen=True)
class MxHost:
    preference: int
    name: str
    addresses: list[str]
    implicit: bool


class NullMx(Exception):
    """The domain publishes a null MX: it accepts no mail (RFC 7505 §3); fail permanently."""

    reply: Reply = NULL_MX

    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain} publishes a null MX (RFC 7505)")
        self.domain = domain


async def resolve_mx(resolver: Resolver, domain: str, *, rng: Shuffler = random) -> list[MxHost]:
    """The hosts to try for `domain`, in order; see the module docstring for every outcome.

    `domain` may be a U-label or A-label form; it is normalised with `normalise_domain`
    (AddressError for a malformed domain, a caller error).
    """
    domain = normalise_domain(domain)
    records = await resolver.mx(domain)
    if not records:
        return await _implicit_mx(resolver, domain)
    targets = _lowest_preference_per_name(records)
    if not targets:
        raise NullMx(domain)
    hosts = await _with_addresses(resolver, targets)
    if not any(host.addresses for host in hosts):
        raise DnsTemporaryError(f"{domain}: no MX host has an address")
    return _ordered(hosts, rng)


async def _implicit_mx(resolver: Resolver, domain: str) -> list[MxHost]:
    addresses = await resolver.addresses(domain)
    if not addresses:
        raise DnsTemporaryError(f"{domain}: no MX and no address (implicit MX, RFC 5321 §5.1)")
    return [MxHost(IMPLICIT_PREFERENCE, domain, addresses, implicit=True)]


def _lowest_preference_per_name(records: list[tuple[int, str]]) -> dict[str, int]:
    """Target name -> lowest preference, the root "." left out."""
    targets: dict[str, int] = {}
    for preference, name in records:
        name = name.rstrip(".").lower() or ROOT
        if name == ROOT:
            continue
        targets[name] = min(preference, targets.get(name, preference))
    return targets


async def _with_addresses(resolver: Resolver, targets: dict[str, int]) -> list[MxHost]:
    names = list(targets)
    results = await asyncio.gather(
        *(resolver.addresses(name) for name in names), return_exceptions=True
    )
    hosts: list[MxHost] = []
    for name, result in zip(names, results):
        if isinstance(result, DnsTemporaryError):
            hosts.append(MxHost(targets[name], name, [], implicit=False))
        elif isinstance(result, DnsNoSuchDomain):
            continue
        elif isinstance(result, BaseException):
            raise result
        elif result:
            hosts.append(MxHost(targets[name], name, list(result), implicit=False))
    return hosts


def _ordered(hosts: list[MxHost], rng: Shuffler) -> list[MxHost]:
    """By preference; hosts of equal preference in random order (RFC 5321 §5.1)."""
    ordered: list[MxHost] = []
    by_preference = sorted(hosts, key=lambda host: (host.preference, host.name))
    for _, group in groupby(by_preference, key=lambda host: host.preference):
        same = list(group)
        rng.shuffle(same)
        ordered.extend(same)
    return ordered
