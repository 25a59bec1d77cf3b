"""Routing: where a recipient's domain goes next, resolved afresh at every attempt.

Owns: the choice between a hosted domain's next hops (in order of preference, each with its TLS
policy), the smart host, and direct MX delivery (RFC 5321 §5.1 through dns/mx.py), and turning
DNS failures into permanent or temporary refusals. Routes are never cached across attempts, so a
configuration or DNS change applies to mail already queued (issue "Delivery").
Must not: open connections or touch the queue.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailgate.core.reply import NO_SUCH_DOMAIN, NULL_MX, Reply
from mailgate.delivery.request import Candidate, HopPolicy, Route
from mailgate.dns.mx import NullMx, resolve_mx
from mailgate.dns.resolver import DnsNoSuchDomain, DnsTemporaryError, Resolver

# RFC 3463 §3.5: 4.4.3 "Directory server failure" for DNS trouble that may pass.
DNS_TEMPORARY = Reply(451, "4.4.3", "Temporary DNS failure resolving {domain}")
NO_ROUTE = Reply(451, "4.4.4", "No usable address for {domain}")


class RouteError(Exception):
    """Routing failed; `reply` says whether it is permanent (5yz) or temporary (4yz)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True)
class HopSpec:
    """One configured next hop: `host[:port]` or a Maildir."""

    host: str = ""
    port: int = 25
    maildir: str = ""


@dataclass(frozen=True)
class HostedRoute:
    hops: tuple[HopSpec, ...]
    tls: str = "may"
    ca_file: str | None = None
    bind_address: str = ""  # empty: RoutingSettings.bind_address
    bind_address6: str = ""


@dataclass(frozen=True)
class RoutingSettings:
    hosted: dict[str, HostedRoute]
    helo_name: str
    mx_port: int = 25
    mx_tls: str = "may"
    mx_ca_file: str | None = None
    smart_host: HopSpec | None = None
    smart_host_tls: str = "may"
    smart_host_auth: tuple[str, str] | None = None
    bind_address: str = ""  # the local IPv4 address outbound connections come from; "": any
    bind_address6: str = ""


class Router:
    def __init__(self, settings: RoutingSettings, resolver: Resolver) -> None:
        self._settings = settings
        self._resolver = resolver

    def update(self, settings: RoutingSettings) -> None:
        """Take a reloaded configuration; queued mail uses it from its next attempt on."""
        self._settings = settings

    async def route(self, domain: str) -> Route:
        settings = self._settings
        hosted = settings.hosted.get(domain)
        if hosted is not None and hosted.hops:
            return await self._hosted_route(domain, hosted)
        if hosted is None and settings.smart_host is not None:
            policy = HopPolicy(
                tls=settings.smart_host_tls,
                auth=settings.smart_host_auth,
                ca_file=settings.mx_ca_file,
                helo_name=settings.helo_name,
                **self._source_addresses(None),
            )
            candidates = await self._candidates_for(settings.smart_host, domain)
            return Route(f"smarthost:{settings.smart_host.host}", tuple(candidates), policy)
        tls, ca_file = (hosted.tls, hosted.ca_file) if hosted else (settings.mx_tls, settings.mx_ca_file)
        return await self._mx_route(domain, HopPolicy(
            tls=tls, ca_file=ca_file, helo_name=settings.helo_name, **self._source_addresses(hosted)))

    def _source_addresses(self, hosted: HostedRoute | None) -> dict[str, str | None]:
        """HopPolicy's local addresses: the hosted domain's own, else delivery's (None: any)."""
        settings = self._settings
        v4 = (hosted.bind_address if hosted else "") or settings.bind_address
        v6 = (hosted.bind_address6 if hosted else "") or settings.bind_address6
        return {"source_address": v4 or None, "source_address6": v6 or None}

    async def _hosted_route(self, domain: str, hosted: HostedRoute) -> Route:
        first = hosted.hops[0]
        if first.maildir:
            return Route(f"maildir:{first.maildir}", maildir=first.maildir)
        candidates: list[Candidate] = []
        temporary: RouteError | None = None
        for hop in hosted.hops:
            if hop.maildir:
                continue
            try:
                candidates.extend(await self._candidates_for(hop, domain))
            except RouteError as exc:
                temporary = exc
        if not candidates:
            raise temporary or RouteError(_format(NO_ROUTE, domain))
        policy = HopPolicy(tls=hosted.tls, ca_file=hosted.ca_file, helo_name=self._settings.helo_name,
                           **self._source_addresses(hosted))
        return Route(f"hosted:{domain}", tuple(candidates), policy)

    async def _mx_route(self, domain: str, policy: HopPolicy) -> Route:
        if domain.startswith("["):
            # RFC 5321 §4.1.3: an address literal names the host itself, no MX look-up.
            address = domain[1:-1].removeprefix("IPv6:")
            return Route(f"literal:{address}", (Candidate(address, address, self._settings.mx_port),), policy)
        try:
            hosts = await resolve_mx(self._resolver, domain)
        except NullMx:
            raise RouteError(NULL_MX) from None
        except DnsNoSuchDomain:
            raise RouteError(NO_SUCH_DOMAIN) from None
        except DnsTemporaryError:
            raise RouteError(_format(DNS_TEMPORARY, domain)) from None
        candidates = [
            Candidate(host.name, address, self._settings.mx_port)
            for host in hosts
            for address in host.addresses
        ]
        if not candidates:
            raise RouteError(_format(NO_ROUTE, domain))
        return Route(f"mx:{domain}", tuple(candidates), policy)

    async def _candidates_for(self, hop: HopSpec, domain: str) -> list[Candidate]:
        try:
            ipaddress.ip_address(hop.host)
            return [Candidate(hop.host, hop.host, hop.port)]
        except ValueError:
            pass
        try:
            addresses = await self._resolver.addresses(hop.host)
        except (DnsTemporaryError, DnsNoSuchDomain):
            raise RouteError(_format(DNS_TEMPORARY, hop.host)) from None
        if not addresses:
            raise RouteError(_format(NO_ROUTE, hop.host))
        return [Candidate(hop.host, address, hop.port) for address in addresses]


def _format(reply: Reply, domain: str) -> Reply:
    return reply.with_text(reply.text.format(domain=domain))
