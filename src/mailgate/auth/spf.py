"""SPF (RFC 7208) for the MAIL FROM and HELO identities, with pyspf.

Owns: running pyspf's evaluation (the reference implementation of RFC 7208, with its test suite:
macros §7, the ten-look-up and two-void-look-up limits of §4.6.4, MX and PTR limits) against
mailgate's resolver, and the result as RFC 8601 reports it. pyspf asks DNS through one module
function; here that function asks the `ThreadLookups` of the thread running the check, so every
look-up goes through the resolver seam on the event loop, and a temporary DNS failure is SPF's
temperror (RFC 7208 §2.6.6), never a pass. Must not: decide what a result means for the
message (inbound.py does) or run on the event loop (pyspf is synchronous: a worker thread).
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass

import spf

from mailgate.auth.dns_cache import ThreadLookups
from mailgate.dns.resolver import DnsTemporaryError

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
# RFC 7208 §4.6.4: "at least 20 seconds" for the whole evaluation.
DEFAULT_TIME_LIMIT = 20.0

_local = threading.local()


@dataclass(frozen=True)
class SpfResult:
    result: str  # one of RESULTS
    identity: str  # mailfrom | helo
    subject: str  # what was checked: the MAIL FROM address or the HELO name
    domain: str  # the domain checked (for DMARC alignment)
    explanation: str = ""


def _lookup(name: str, qtype: str, strict: bool = True, timeout: float = 0) -> list:
    """pyspf's DNS hook: ((name, type), value) pairs from the resolver seam."""
    lookups: ThreadLookups | None = getattr(_local, "lookups", None)
    if lookups is None:
        raise spf.TempError("DNS: no resolver for this thread")
    kind = {"A": "a", "AAAA": "aaaa", "MX": "mx", "PTR": "ptr", "TXT": "txt"}.get(qtype)
    if kind is None:
        return []  # type SPF (99) is gone (RFC 7208 §3.1); TXT only
    try:
        answers = lookups.lookup(kind, name)
    except DnsTemporaryError as exc:
        raise spf.TempError(f"DNS {exc}") from None
    if qtype == "TXT":
        return [((name, qtype), (text.encode("utf-8"),)) for text in answers]
    return [((name, qtype), value) for value in answers]


spf.DNSLookup = _lookup  # the module's single DNS entry point


def _domain_identity(helo: str) -> bool:
    """A HELO name SPF can check: a domain with a dot, not an address literal (RFC 7208 §2.3)."""
    if not helo or "." not in helo or helo.startswith("["):
        return False
    try:
        ipaddress.ip_address(helo)
        return False
    except ValueError:
        return True


def check_spf(lookups: ThreadLookups, client_ip: str, identity: str, mail_from: str, helo: str,
              time_limit: float = DEFAULT_TIME_LIMIT) -> SpfResult:
    """The SPF result of one identity; runs in a worker thread."""
    if identity == "helo" or not mail_from:
        # RFC 7208 §2.3/§2.4: the HELO identity, and for the null sender "postmaster@" + HELO.
        subject, sender = helo, f"postmaster@{helo}"
        if not _domain_identity(helo):
            return SpfResult("none", identity, subject, "", "HELO is not a domain name")
    else:
        subject, sender = mail_from, mail_from
    domain = sender.rpartition("@")[2].lower()
    _local.lookups = lookups
    try:
        query = spf.query(i=client_ip, s=sender, h=helo or "unknown", querytime=time_limit)
        result, _, explanation = query.check()
    finally:
        _local.lookups = None
    result = {"error": "temperror", "unknown": "permerror", "ambiguous": "permerror"}.get(result, result)
    return SpfResult(result if result in RESULTS else "permerror", identity, subject, domain, explanation)
