"""From the validated configuration to each component's settings.

Owns: translating `Config` into the settings objects of the relay policy, routing, listeners,
delivery runner, rate limits, screener and authenticator, the settings every session shares
(`reception_settings`, applied again on reload), the delivery transport, disk guard, resolver
and observation settings. app.py composes the components from these; `mailgate explain` uses the
same translations. The queue's (store, retry schedule, bouncer, control socket) are in
queue_config.py, light enough for the queue commands; the start-up errors in startup_errors.py.
Must not: start anything (no sockets, threads or files beyond reading a certificate or the smart
host password).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mailgate.auth.authenticator import Authenticator
from mailgate.auth.dkim_keys import RSA, DkimKey, DkimKeyError, load_key
from mailgate.auth.dkim_sign import DkimSigner, SigningKey
from mailgate.auth.dmarc import OrganizationalDomains
from mailgate.auth.dns_cache import CachingResolver
from mailgate.auth.inbound import InboundChecker, InboundSettings
from mailgate.config.loader import Config, effective_auth, effective_tls
from mailgate.config.types import parse_host_port
from mailgate.console.settings import ConsoleSettings
from mailgate.core.address import AddressError, normalise_domain
from mailgate.delivery.maildir import MaildirTransport
from mailgate.delivery.request import RoutedTransport
from mailgate.delivery.routing import HopSpec, HostedRoute, RoutingSettings
from mailgate.delivery.runner import RunnerSettings
from mailgate.delivery.transport import SmtpTransport
from mailgate.dns.resolver import Resolver
from mailgate.observe.observation import ObservationSettings
from mailgate.policy.limits import MessageRateLimits, RateLimiter
from mailgate.policy.shared_limits import RateTable, RateTables, SharedRateLimiter
from mailgate.policy.relay import HostedDomain, PolicySettings, RelayPolicy
from mailgate.queue_config import queue_node_name
from mailgate.recipients.cache import LookupCache
from mailgate.recipients.callahead import CallAheadSource, ProbeTarget
from mailgate.recipients.ldap_source import LdapSettings, LdapSource
from mailgate.recipients.mapfile import MapFileError, MapFileSource
from mailgate.recipients.source import RecipientChain, RecipientSource, RecipientValidation
from mailgate.recipients.static import StaticSource
from mailgate.screen import Screener, ScreenConfigError
from mailgate.server.context import ListenerProfile
from mailgate.server.diskguard import DiskGuard
from mailgate.server.interfaces import IPAddress, interface_addresses
from mailgate.server.listener import ListenerSettings
from mailgate.server.line_rules import LineRules
from mailgate.server.tls import TlsConfigError, server_context
from mailgate.startup_errors import StartupError


def console_settings(config: Config) -> ConsoleSettings:
    """`[console]` -> the console's settings, with its HTTPS context when cert_file is set."""
    console = config.console
    host, port = parse_host_port(console.address)
    tls_context = None
    if console.cert_file:
        try:
            tls_context = server_context(console.cert_file, console.key_file, "console")
        except TlsConfigError as exc:
            raise StartupError(str(exc)) from None
    return ConsoleSettings(host, port, tls_context, console.session_lifetime, console.login_failures)


def policy_settings(
    config: Config, host_addresses: Callable[[], tuple[IPAddress, ...]] = interface_addresses
) -> PolicySettings:
    hosted = {}
    for domain in config.domain:
        name = domain.name.strip()
        # With recipient_sources, local_parts is the `static` source, asked in its turn.
        parts = frozenset(domain.local_parts) if domain.local_parts and not domain.recipient_sources else None
        hosted[name] = HostedDomain(name, parts)
    relay = config.relay
    return PolicySettings(
        hosted_domains=hosted,
        trusted_networks=relay.trusted_networks,
        authenticated_relay=relay.authenticated_relay,
        restrict_auth_senders=relay.restrict_auth_senders,
        sender_blocklist=relay.sender_blocklist,
        recipient_blocklist=relay.recipient_blocklist,
        client_blocklist=relay.client_blocklist,
        allow_routing_local_parts=relay.allow_routing_local_parts,
        own_addresses=own_addresses(config, host_addresses),
    )


def own_addresses(config: Config, host_addresses: Callable[[], tuple[IPAddress, ...]]) -> tuple[IPAddress, ...]:
    """The addresses that name this relay in a domain literal: each listener's, and every
    interface's when a listener is bound to 0.0.0.0 or :: (it answers on all of them)."""
    own: dict[IPAddress, None] = {}
    for listener in config.listener:
        address = ipaddress.ip_address(listener.address[0])
        if address.is_unspecified:
            own.update(dict.fromkeys(host_addresses()))
        else:
            own[address] = None
    return tuple(own)


def routing_settings(config: Config) -> RoutingSettings:
    hosted = {}
    for domain in config.domain:
        hops = []
        for hop in domain.next_hop:
            if hop.startswith("maildir:"):
                hops.append(HopSpec(maildir=hop[len("maildir:"):]))
            else:
                host, port = parse_host_port(hop, 25)
                hops.append(HopSpec(host=host, port=port))
        hosted[normalise_domain(domain.name.strip().lstrip("."))] = HostedRoute(
            tuple(hops), domain.tls, domain.ca_file or None, domain.bind_address, domain.bind_address6
        )
    delivery = config.delivery
    smart_host = None
    smart_auth = None
    if delivery.smart_host:
        host, port = parse_host_port(delivery.smart_host, 25)
        smart_host = HopSpec(host=host, port=port)
        if delivery.smart_host_user:
            password = Path(delivery.smart_host_password_file).read_text().strip()
            smart_auth = (delivery.smart_host_user, password)
    return RoutingSettings(
        hosted=hosted,
        helo_name=delivery.helo_name or config.server.hostname,
        mx_port=delivery.mx_port,
        mx_tls=delivery.tls,
        mx_ca_file=delivery.ca_file or None,
        smart_host=smart_host,
        smart_host_tls=delivery.smart_host_tls,
        smart_host_auth=smart_auth,
        bind_address=delivery.bind_address,
        bind_address6=delivery.bind_address6,
    )



def runner_settings(config: Config) -> RunnerSettings:
    delivery = config.delivery
    return RunnerSettings(workers=delivery.workers)


def rate_limits(config: Config, tables: RateTables | None = None) -> MessageRateLimits | None:
    """The message rate limits, or None when both are off. With `tables` (shared memory made
    before the workers fork) they count for the whole server; without, for this process."""
    limits = config.limits

    def limiter(limit: int, table: RateTable | None) -> RateLimiter | SharedRateLimiter | None:
        if not limit:
            return None
        return SharedRateLimiter(table, limit, limits.window) if table is not None else RateLimiter(limit, limits.window)

    per_client = limiter(limits.messages_per_client, tables.per_client if tables else None)
    per_user = limiter(limits.messages_per_user, tables.per_user if tables else None)
    # `is not None`: a RateLimiter has __len__, so one tracking no key yet is falsy.
    return MessageRateLimits(per_client, per_user) if per_client is not None or per_user is not None else None


def listener_settings(listener: SimpleNamespace, profile: ListenerProfile) -> ListenerSettings:
    host, port = listener.address
    return ListenerSettings(
        name=listener.name,
        host=host,
        port=port,
        implicit_tls=profile.tls_context if profile.tls_mode == "implicit" else None,
        max_connections=listener.max_connections,
        max_connections_per_client=listener.max_connections_per_client,
        proxy_from=listener.proxy_from if listener.proxy_protocol else None,
        proxy_timeout=listener.proxy_timeout,
        handshake_timeout=listener.tls_handshake_timeout,
    )

def listener_profiles(config: Config) -> list[ListenerProfile]:
    """Per-listener settings with their TLS contexts; StartupError lists every certificate problem."""
    profiles, problems = [], []
    for index, listener in enumerate(config.listener):
        tls_mode = effective_tls(listener)
        context = None
        if tls_mode != "none":
            try:
                context = server_context(listener.cert_file, listener.key_file, f"listener[{index}]")
            except TlsConfigError as exc:
                problems.append(str(exc))
        profiles.append(
            ListenerProfile(
                name=listener.name,
                profile=listener.profile,
                tls_mode=tls_mode,
                tls_context=context,
                auth=effective_auth(listener),
                max_message_size=listener.max_message_size or config.server.max_message_size,
                command_timeout=listener.command_timeout,
                data_timeout=listener.data_timeout,
                data_deadline=listener.data_deadline,
                handshake_timeout=listener.tls_handshake_timeout,
                error_budget=listener.error_budget,
            )
        )
    if problems:
        raise StartupError("\n".join(problems))
    return profiles


def build_screener(config: Config) -> Screener | None:
    """The screener, or None when no rule, clamd or rspamd is configured (no parsing at all)."""
    if not config.screen_rule and not config.antivirus.clamd and not config.spam.rspamd_url:
        return None
    try:
        return Screener.from_config(config.screen_rule, config.antivirus, config.spam, config.screen)
    except ScreenConfigError as exc:
        raise StartupError("\n".join(exc.errors)) from None


def build_authenticator(config: Config, resolver: Resolver, is_hosted: Callable[[str], bool]) -> Authenticator | None:
    """DKIM signing and the inbound checks, or None when neither is configured; StartupError
    names each [[dkim_key]] entry or [authentication] key that cannot be used."""
    signer = build_signer(config)
    inbound = build_inbound(config, resolver, is_hosted)
    if signer is None and inbound is None:
        return None
    return Authenticator(signer, inbound)


def build_inbound(config: Config, resolver: Resolver, is_hosted: Callable[[str], bool]) -> InboundChecker | None:
    section = config.authentication
    if not section.inbound_checks:
        return None
    orgs = organizational_domains(config)
    # [authentication] keys that InboundSettings takes under the same name and as they are
    same = ("spf_fail_action", "dmarc_reject_action", "dmarc_quarantine_action", "dmarc_temperror_action",
            "protect_hosted_domains", "tag_header", "max_signatures", "spf_time_limit")
    settings = InboundSettings(
        authserv_id=section.authserv_id or config.server.hostname,
        lookup_timeout=config.dns.timeout * 2,
        arc_trusted_sealers=frozenset(d.strip().lower().rstrip(".") for d in section.arc_trusted_sealers),
        arc_seal_key=arc_seal_key(config),
        **{name: getattr(section, name) for name in same},
    )
    return InboundChecker(settings, CachingResolver(resolver, section.dns_cache_ttl), orgs, is_hosted)


def arc_seal_key(config: Config) -> DkimKey | None:
    section = config.authentication
    if not section.arc_seal_key_file:
        return None
    problems = [f"authentication.{key}: needed with arc_seal_key_file" for key in ("arc_seal_domain", "arc_seal_selector")
                if not getattr(section, key).strip()]
    if problems:
        raise StartupError("\n".join(problems))
    try:
        key = load_key(section.arc_seal_key_file, normalise_domain(section.arc_seal_domain.strip()),
                       section.arc_seal_selector.strip())
    except AddressError as exc:
        raise StartupError(f"authentication.arc_seal_domain: {exc}") from None
    except DkimKeyError as exc:
        raise StartupError(f"authentication.arc_seal_key_file: {exc}") from None
    if key.key_type != RSA:
        raise StartupError("authentication.arc_seal_key_file: ARC seals with an RSA key (rsa-sha256)")
    return key


def organizational_domains(config: Config) -> OrganizationalDomains:
    path = config.authentication.public_suffix_list
    try:
        return OrganizationalDomains(path)
    except OSError as exc:
        raise StartupError(f"authentication.public_suffix_list: {path}: {exc.strerror or exc}") from None


def build_signer(config: Config) -> DkimSigner | None:
    keys, problems, active = [], [], set()
    for index, entry in enumerate(config.dkim_key):
        where = f"dkim_key[{index}]"
        try:
            domain = normalise_domain(entry.domain.strip())
            key = load_key(entry.key_file, domain, entry.selector.strip())
        except AddressError as exc:
            problems.append(f"{where}.domain: {exc}")
            continue
        except DkimKeyError as exc:
            problems.append(f"{where}.key_file: {exc}")
            continue
        if not entry.active:
            continue
        if (domain, key.key_type) in active:
            problems.append(f"{where}.active: a second active {key.key_type} key for {domain}; one per type")
            continue
        active.add((domain, key.key_type))
        keys.append(SigningKey(key, entry.subdomains))
    if problems:
        raise StartupError("\n".join(problems))
    if not keys:
        return None
    return DkimSigner(keys, config.dkim.sign_headers, config.dkim.oversign_headers)


def hosted_key(name: str) -> str:
    """A hosted domain as the relay policy names it: A-label, "." first for a subdomain wildcard."""
    name = name.strip()
    wildcard = name.startswith(".")
    return ("." if wildcard else "") + normalise_domain(name.lstrip("."))


def recipient_validation(config: Config) -> RecipientValidation | None:
    """Each hosted domain's chain of recipient sources, or None when no domain has one."""
    if not any(domain.recipient_sources for domain in config.domain):
        return None
    routing = routing_settings(config)
    shared: dict[str, RecipientSource] = {}
    for index, source in enumerate(config.recipient_source):
        try:
            shared[source.name] = _recipient_source(source, routing)
        except (MapFileError, OSError) as exc:
            raise StartupError(f"recipient_source[{index}]: {exc}") from None
    chains = {}
    for domain in config.domain:
        if domain.recipient_sources:
            static = StaticSource(f"static:{domain.name.strip()}", domain.local_parts)
            sources = [static if name == "static" else shared[name] for name in domain.recipient_sources]
            chains[hosted_key(domain.name)] = RecipientChain(sources)
    return RecipientValidation(chains)


def _recipient_source(source, routing: RoutingSettings) -> RecipientSource:
    if source.type == "file":
        return MapFileSource(source.name, source.path)
    cache = LookupCache(source.positive_ttl, source.negative_ttl, source.cache_size)
    if source.type == "ldap":
        settings = LdapSettings(
            servers=tuple(source.servers), search_base=source.search_base, filter=source.filter,
            start_tls=source.start_tls, ca_file=source.ca_file or None, bind_dn=source.bind_dn,
            bind_password_file=source.bind_password_file, timeout=source.timeout, pool_size=source.pool_size,
        )
        return LdapSource(source.name, settings, cache)
    targets = {
        name.lstrip("."): ProbeTarget(
            tuple((hop.host, hop.port) for hop in route.hops if not hop.maildir), route.tls, route.ca_file
        )
        for name, route in routing.hosted.items()
    }
    return CallAheadSource(source.name, targets, routing.helo_name, source.timeout, cache)


def postmaster_domain(config: Config, policy: RelayPolicy) -> str:
    """Where `RCPT TO:<Postmaster>` (no domain, RFC 5321 §4.5.1) goes: the server's hostname when
    it is hosted, else the first hosted domain (never a wildcard), else the hostname (then only
    clients that may relay reach it)."""
    hostname = config.server.hostname
    if policy.is_hosted(hostname):
        return hostname
    return next((domain.name.strip() for domain in config.domain if not domain.name.strip().startswith(".")), hostname)


def reception_settings(config: Config, users: Any, resolver: Resolver, is_hosted: Callable[[str], bool]) -> dict[str, Any]:
    """The `Reception` fields that come from the configuration: app.py builds the Reception with
    them and a reload applies them again (`Reception.reload`). StartupError names a bad key.
    `users`: the user store (auth.store), whose allowed senders the relay policy checks."""
    policy = RelayPolicy(policy_settings(config), allowed_senders=users.allowed_senders)
    server = config.server
    return {
        "policy": policy,
        "postmaster_domain": postmaster_domain(config, policy),
        "max_recipients": server.max_recipients,
        "received_limit": server.received_limit,
        "received_shows_user": server.received_shows_user,
        "lines": LineRules.from_config(server),
        "dnsbl_zones": tuple(config.dns.dnsbl_zones),
        "screener": build_screener(config),
        # Built anew on each reload: new DKIM keys rotate without a restart.
        "authenticator": build_authenticator(config, resolver, is_hosted),
    }


def resolver_settings(config: Config) -> tuple[list[str] | None, int, float]:
    """(nameservers or None for the system's, port, timeout) for dns.resolver.DnsPythonResolver."""
    dns = config.dns
    return list(dns.nameservers) or None, dns.port, dns.timeout


def delivery_transport(config: Config) -> RoutedTransport:
    delivery = config.delivery
    smtp = SmtpTransport(
        connect_timeout=delivery.connect_timeout, idle_timeout=delivery.connection_idle,
        max_connections=delivery.max_connections, max_per_destination=delivery.max_per_destination,
    )
    return RoutedTransport(smtp, MaildirTransport())


def disk_guard(config: Config) -> DiskGuard:
    server = config.server
    return DiskGuard(
        server.spool_dir, server.disk_soft_free, server.disk_hard_free, server.disk_soft_free_inodes,
        server.disk_hard_free_inodes, server.disk_check_interval,
    )


def observation_settings(config: Config, worker_index: int = 0) -> ObservationSettings:
    """Each worker serves /metrics on the configured port plus its index."""
    endpoint = None
    if config.metrics.address:
        host, port = parse_host_port(config.metrics.address)
        endpoint = (host, port + worker_index)
    log = config.log
    return ObservationSettings(
        hostname=config.server.hostname, w3c_dir=log.w3c_dir, json_file=log.json_file,
        retention_days=log.retention_days, max_pending=log.queue_limit, endpoint=endpoint,
        node=queue_node_name(config),
    )


def audit_domain(config: Config) -> str | None:
    """The hosted domain the self-audit sends to: the first that is not a subdomain wildcard."""
    return next((normalise_domain(d.name.strip()) for d in config.domain if not d.name.strip().startswith(".")), None)


def reloaded_recipients(config: Config, running: Config, current: RecipientValidation | None) -> RecipientValidation | None:
    """Unchanged recipient settings keep their sources (and warm caches), which re-read their
    map files and forget cached directory answers; changed ones are built anew."""
    def settings(c: Config) -> tuple:
        return (repr(c.recipient_source), [(d.name, d.recipient_sources, d.local_parts, d.next_hop) for d in c.domain])
    if current is not None and settings(config) == settings(running):
        current.reload()
        return current
    return recipient_validation(config)


def reload_profiles(running: list[ListenerProfile], new: list[ListenerProfile], config: Config) -> None:
    """Each running profile takes its new settings in place (listeners keep their sockets and
    sessions read profiles anew). A TLS context stays the same object, with the certificate read
    again: implicit-TLS listeners were started with it, so the renewed certificate reaches their
    new handshakes too (SPEC §5)."""
    for profile, renewed, listener in zip(running, new, config.listener):
        if profile.tls_context is not None and renewed.tls_context is not None:
            profile.tls_context.load_cert_chain(listener.cert_file, listener.key_file)
            renewed = dataclasses.replace(renewed, tls_context=profile.tls_context)
        profile.reload(renewed)
