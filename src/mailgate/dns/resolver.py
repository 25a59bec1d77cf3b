"""The DNS resolver seam: one small interface, the dnspython implementation and a static fake.

Owns: the `Resolver` protocol every DNS user in mailgate calls (MX, addresses, TXT, A, AAAA, PTR); the two
errors a lookup can end in (temporary, or the name does not exist); `DnsPythonResolver`, which asks
real servers through `dns.asyncresolver` (configurable nameservers and port, for split DNS and for
tests); `StaticResolver`, a data-driven fake with no I/O; and `static_answer`, the one reading of the
zone-data dictionary shared by the fake and the test DNS server, so both answer identically.
Must not: decide what an answer means for delivery (MX ordering, implicit MX and null MX live in
`dns.mx`; DNSBL meaning in `dns.dnsbl`), cache answers (routes are re-resolved on every retry), or
build wire format by hand (dnspython does all of that).

Conventions of every implementation:
- Names go in as A-labels (or ASCII), with or without a final dot; names come out lower case without
  the final dot, except the root, which is "." (the null MX target, RFC 7505 §3).
- An existing name without records of the type (NOERROR/NODATA) gives [], never an error.
- `addresses(host)` returns the AAAA addresses first, then the A addresses (RFC 6724 §10.3 default
  preference for IPv6); the caller may reorder. If one family fails temporarily but the other gives
  addresses, those addresses are returned (they are usable now); if no address was found and a family
  failed temporarily, the lookup is temporary (`DnsTemporaryError`).
- TXT records come out one string per record, the record's character-strings concatenated
  (RFC 7208 §3.3 reading), decoded as UTF-8 with replacement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver


class DnsTemporaryError(Exception):
    """The answer is not known now: SERVFAIL, REFUSED, time-out, no server answered."""


class DnsNoSuchDomain(Exception):
    """The name does not exist (NXDOMAIN, RFC 1035 §4.1.1 RCODE 3): a permanent answer."""


class Resolver(Protocol):
    def describe_servers(self) -> str:
        """The name servers asked, for messages: `127.0.0.1 port 5353` or `192.0.2.53, 192.0.2.54`."""
        servers = ", ".join(str(server) for server in self._resolver.nameservers) or "no name server"
        return servers + (f" port {self._resolver.port}" if self._resolver.port != 53 else "")

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs in answer order; [] when the name has no MX."""
        ...

    async def addresses(self, host: str) -> list[str]:
        """IPv6 addresses, then IPv4 addresses, as text; [] when the name has neither."""
        ...

    async def txt(self, name: str) -> list[str]:
        """One string per TXT record; [] when the name has none."""
        ...

    async def a(self, name: str) -> list[str]:
        """IPv4 addresses as text; [] when the name has none."""
        ...

    async def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses as text; [] when the name has none (SPF's ip6 and a/mx mechanisms)."""
        ...

    async def ptr(self, name: str) -> list[str]:
        """PTR targets of a reverse name (…in-addr.arpa); [] when it has none."""
        ...


Lookup = Callable[[str, str], Awaitable[list[Any]]]


def _canonical(name: str) -> str:
    """Lower case, no final dot; the root stays "."."""
    if name in (".", ""):
        return "."
    return name.rstrip(".").lower()


async def addresses_from_families(lookup: Lookup, host: str) -> list[str]:
    """AAAA then A for `host`, combining the two outcomes as the module docstring describes."""
    results = await asyncio.gather(lookup(host, "AAAA"), lookup(host, "A"), return_exceptions=True)
    found: list[str] = []
    temporary: DnsTemporaryError | None = None
    for result in results:
        if isinstance(result, DnsNoSuchDomain):
            raise result
        if isinstance(result, DnsTemporaryError):
            temporary = result
        elif isinstance(result, BaseException):
            raise result
        else:
            found.extend(str(value) for value in result)
    if not found and temporary is not None:
        raise temporary
    return found


class DnsPythonResolver:
    """Real lookups through `dns.asyncresolver`; no cache, no search list.

    `nameservers=None` reads the system configuration (/etc/resolv.conf); `port` applies to every
    nameserver; `timeout` bounds one lookup in total, across servers, retries and TCP fallback.
    Truncated UDP answers are retried over TCP by dnspython (RFC 7766 §5).
    """

    # DNS Flag Day 2020: EDNS(0) with a 1232-byte UDP payload avoids IP fragmentation.
    EDNS_PAYLOAD = 1232

    def __init__(
        self, nameservers: list[str] | None = None, port: int = 53, timeout: float = 5.0
    ) -> None:
        self.configure(nameservers, port, timeout)

    def configure(self, nameservers: list[str] | None, port: int, timeout: float) -> None:
        """New settings (a reload) for the next lookups; lookups under way finish with the old."""
        self._resolver = self._new_resolver(nameservers, port, timeout)

    def _new_resolver(self, nameservers: list[str] | None, port: int, timeout: float) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            resolver.nameservers = list(nameservers)
        resolver.port = port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.use_edns(0, 0, self.EDNS_PAYLOAD)
        return resolver

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            # A name that cannot be encoded (empty or long label, RFC 1035 §2.3.4) never exists.
            raise DnsNoSuchDomain(f"{name}: invalid name ({exc})") from None
        try:
            answer = await self._resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise DnsNoSuchDomain(name) from None
        except dns.exception.Timeout:
            # dnspython's own text reads "Server ... answered The DNS operation timed out".
            raise DnsTemporaryError(f"{name} {rdtype}: no answer from {self.describe_servers()} within "
                                    f"{self._resolver.lifetime:g} s") from None
        except (dns.exception.DNSException, OSError) as exc:
            # NoNameservers (SERVFAIL/REFUSED from all), LifetimeTimeout, YXDOMAIN, socket errors.
            raise DnsTemporaryError(f"{name} {rdtype}: {exc}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    def describe_servers(self) -> str:
        """The name servers asked, for messages: `127.0.0.1 port 5353` or `192.0.2.53, 192.0.2.54`."""
        servers = ", ".join(str(server) for server in self._resolver.nameservers) or "no name server"
        return servers + (f" port {self._resolver.port}" if self._resolver.port != 53 else "")

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        records = await self._query(domain, "MX")
        return [(record.preference, _canonical(record.exchange.to_text())) for record in records]

    async def addresses(self, host: str) -> list[str]:
        return await addresses_from_families(self._query, host)

    async def txt(self, name: str) -> list[str]:
        records = await self._query(name, "TXT")
        return [b"".join(record.strings).decode("utf-8", "replace") for record in records]

    async def a(self, name: str) -> list[str]:
        return [record.address for record in await self._query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [record.address for record in await self._query(name, "AAAA")]

    async def ptr(self, name: str) -> list[str]:
        return [_canonical(record.target.to_text()) for record in await self._query(name, "PTR")]


# --- Zone data: the format shared by StaticResolver and tests/support/dns_server.py -------------
#
#   {"example.com": {"MX": [(10, "mx.example.com")], "TXT": ["v=spf1 -all"]},
#    "mx.example.com": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
#    "part.test": {"A": ["192.0.2.9"], "AAAA": "SERVFAIL"},      # one type failing
#    "bad.test": "SERVFAIL", "gone.test": "NXDOMAIN", "slow.test": "TIMEOUT"}
#
# A name absent from the data does not exist (NXDOMAIN), unless it is an ancestor of a listed name
# (an empty non-terminal, RFC 8020 §2), which exists without records (NODATA).

Failure = Literal["NXDOMAIN", "SERVFAIL", "TIMEOUT"]
FAILURES: tuple[str, ...] = ("NXDOMAIN", "SERVFAIL", "TIMEOUT")
ZoneData = Mapping[str, Any]


def static_answer(records: ZoneData, name: str, rdtype: str) -> list[Any] | Failure:
    """The records of `rdtype` at `name` in zone data, or the failure configured for it."""
    wanted = _canonical(name)
    entries = {_canonical(key): value for key, value in records.items()}
    entry = entries.get(wanted)
    if entry is None:
        suffix = "." + wanted
        return [] if any(key.endswith(suffix) for key in entries) else "NXDOMAIN"
    if isinstance(entry, str):
        if entry not in FAILURES:
            raise ValueError(f"zone data for {name}: unknown failure {entry!r}")
        return entry  # type: ignore[return-value]
    value = entry.get(rdtype.upper(), [])
    if isinstance(value, str):
        if value not in ("SERVFAIL", "TIMEOUT"):
            raise ValueError(f"zone data for {name} {rdtype}: unknown failure {value!r}")
        return value  # type: ignore[return-value]
    return list(value)


class StaticResolver:
    """A resolver answering from zone data (see above), with no I/O and no waiting.

    SERVFAIL and TIMEOUT both raise `DnsTemporaryError` at once; NXDOMAIN raises `DnsNoSuchDomain`.
    `queries` records every (name, type) asked, for tests that check what was looked up.
    """

    def __init__(self, records: ZoneData) -> None:
        self._records = dict(records)
        self.queries: list[tuple[str, str]] = []

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        self.queries.append((_canonical(name), rdtype))
        answer = static_answer(self._records, name, rdtype)
        if answer == "NXDOMAIN":
            raise DnsNoSuchDomain(name)
        if answer in ("SERVFAIL", "TIMEOUT"):
            raise DnsTemporaryError(f"{name} {rdtype}: {answer}")
        return list(answer)

    def describe_servers(self) -> str:
        """The name servers asked, for messages: `127.0.0.1 port 5353` or `192.0.2.53, 192.0.2.54`."""
        servers = ", ".join(str(server) for server in self._resolver.nameservers) or "no name server"
        return servers + (f" port {self._resolver.port}" if self._resolver.port != 53 else "")

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        records = await self._query(domain, "MX")
        return [(int(preference), _canonical(exchange)) for preference, exchange in records]

    async def addresses(self, host: str) -> list[str]:
        return await addresses_from_families(self._query, host)

    async def txt(self, name: str) -> list[str]:
        return [str(text) for text in await self._query(name, "TXT")]

    async def a(self, name: str) -> list[str]:
        return [str(address) for address in await self._query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [str(address) for address in await self._query(name, "AAAA")]

    async def ptr(self, name: str) -> list[str]:
        return [_canonical(str(target)) for target in await self._query(name, "PTR")]
