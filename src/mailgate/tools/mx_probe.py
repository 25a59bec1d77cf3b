"""`mailgate mx`: what a domain's MX records say, how mailgate reads them, and what each host
offers when probed.

Owns: the look-up report (the MX records as published, then the hosts in the order delivery would
try them, with their addresses, through the same `dns.mx.resolve_mx` the delivery runner uses; the
implicit MX (RFC 5321 §5.1) and the null MX (RFC 7505) explained), and the probe of one host: the
banner, EHLO extensions, STARTTLS and the certificate (subject, issuer, expiry, name match with
`tools.certs`), each step bounded by a time-out. It never sends MAIL.
Must not: print (the CLI renders), shuffle for display (equal preferences are listed by name), or
verify the chain: the probe connects whatever the certificate and reports on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.core.address import AddressError, normalise_domain
from mailgate.dns.mx import MxHost, NullMx, resolve_mx
from mailgate.dns.resolver import DnsNoSuchDomain, DnsTemporaryError, Resolver
from mailgate.smtp.client import parse_ehlo
from mailgate.tools.certs import CertificateInfo, describe, load_certificates
from mailgate.tools.conversation import (
    DEFAULT_TIMEOUT, Conversation, ConversationError, insecure_client_context,
)

# Outcomes of a look-up, for the table and `--json`.
MX = "mx"
IMPLICIT = "implicit"
NULL = "null"
NO_SUCH_DOMAIN = "nxdomain"
TEMPORARY = "temporary"

EXPLANATIONS = {
    MX: "Delivery tries the hosts in order of preference; equal preferences are tried in random order (RFC 5321 §5.1).",
    IMPLICIT: "No MX records: the domain itself is the mail host, with preference 0 (implicit MX, RFC 5321 §5.1).",
    NULL: "Null MX: the domain declares that it accepts no mail; delivery fails at once with 556 5.1.10 (RFC 7505).",
    NO_SUCH_DOMAIN: "The domain does not exist (NXDOMAIN): delivery fails permanently.",
    TEMPORARY: "The look-up failed temporarily: delivery would be retried later.",
}


class _ByName:
    """Orders equal preferences by name: a stable display instead of delivery's shuffle."""

    @staticmethod
    def shuffle(items: list) -> None:
        items.sort(key=lambda host: host.name)


@dataclass
class MxLookup:
    domain: str
    outcome: str
    explanation: str
    records: list[tuple[int, str]] = field(default_factory=list)  # as published
    hosts: list[MxHost] = field(default_factory=list)  # as delivery reads them, with addresses
    error: str = ""


async def lookup(resolver: Resolver, domain: str) -> MxLookup:
    """The look-up report for `domain`; AddressError for a malformed domain."""
    name = normalise_domain(domain)
    records: list[tuple[int, str]] = []
    try:
        records = sorted(await resolver.mx(name))
        hosts = await resolve_mx(resolver, name, rng=_ByName())
    except NullMx:
        return MxLookup(name, NULL, EXPLANATIONS[NULL], records)
    except DnsNoSuchDomain as exc:
        return MxLookup(name, NO_SUCH_DOMAIN, EXPLANATIONS[NO_SUCH_DOMAIN], records, error=str(exc))
    except DnsTemporaryError as exc:
        return MxLookup(name, TEMPORARY, EXPLANATIONS[TEMPORARY], records, error=str(exc))
    outcome = IMPLICIT if hosts and hosts[0].implicit else MX
    return MxLookup(name, outcome, EXPLANATIONS[outcome], records, hosts)


@dataclass
class ProbeResult:
    host: str
    address: str
    port: int
    banner: str = ""
    ehlo_name: str = ""
    extensions: list[str] = field(default_factory=list)
    starttls_offered: bool = False
    tls: str = ""  # "TLSv1.3 TLS_AES_256_GCM_SHA384" once established
    extensions_after_tls: list[str] = field(default_factory=list)
    certificate: CertificateInfo | None = None
    error: str = ""
    transcript: list[str] = field(default_factory=list)


async def probe(
    host: str, address: str, port: int = 25, *, helo: str, timeout: float = DEFAULT_TIMEOUT,
    source_address: str | None = None,
) -> ProbeResult:
    """Banner, EHLO, STARTTLS and the certificate of one MX host at one address; errors are
    reported in `error`, never raised."""
    result = ProbeResult(host, address, port)
    try:
        conversation = await Conversation.open(
            address, port, timeout=timeout, source_address=source_address
        )
    except ConversationError as exc:
        result.error = str(exc)
        return result
    try:
        await _probe_steps(conversation, result, helo)
    except ConversationError as exc:
        result.error = str(exc)
    finally:
        await conversation.quit()
        result.transcript = conversation.transcript
    return result


async def _probe_steps(conversation: Conversation, result: ProbeResult, helo: str) -> None:
    greeting = await conversation.reply()
    result.banner = str(greeting)
    if greeting.code != 220:
        result.error = f"the server refuses sessions: {greeting}"
        return
    ehlo = await conversation.command(f"EHLO {helo}")
    if not ehlo.is_positive:
        result.error = f"EHLO refused: {ehlo}"
        return
    extensions = parse_ehlo(ehlo)
    result.ehlo_name = ehlo.text.split("\n")[0].split(" ")[0]
    result.extensions = _keywords(extensions.keywords)
    result.starttls_offered = extensions.has("STARTTLS")
    if not result.starttls_offered:
        return
    ready = await conversation.command("STARTTLS")
    if ready.code != 220:
        result.error = f"STARTTLS refused: {ready}"
        return
    # SNI with the MX host name, as a sending MTA does (RFC 7672 §8.1 for DANE; common practice).
    await conversation.start_tls(insecure_client_context(), server_hostname=result.host)
    ssl_object = conversation.ssl_object
    if ssl_object is not None:
        cipher = ssl_object.cipher()
        result.tls = f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            result.certificate = describe(load_certificates(der)[0], result.host)
    again = await conversation.command(f"EHLO {helo}")  # RFC 3207 §4.2: EHLO again after TLS
    if again.is_positive:
        result.extensions_after_tls = _keywords(parse_ehlo(again).keywords)


def _keywords(keywords: dict[str, str]) -> list[str]:
    return [f"{keyword} {params}".strip() for keyword, params in keywords.items()]


def probe_targets(report: MxLookup) -> list[tuple[str, str]]:
    """(host name, address) pairs to probe, in delivery order."""
    return [(host.name, address) for host in report.hosts for address in host.addresses]


def validate_domain(domain: str) -> str:
    """The A-label form of `domain`, or ValueError with a readable reason."""
    try:
        return normalise_domain(domain.rstrip("."))
    except AddressError as exc:
        raise ValueError(f"{domain!r} is not a valid domain: {exc}") from None
