"""DMARC (RFC 7489): policy discovery, identifier alignment and the result for one From: domain.

Owns: finding the policy record (`_dmarc.<From domain>`, else `_dmarc.<organizational domain>`,
RFC 7489 §6.6.3), reading its tags (§6.3), the organizational domain from the Public Suffix List
(§3.2; the `publicsuffixlist` package's copy, or a file the admin refreshes), relaxed and strict
alignment of the SPF and DKIM identifiers with the From: domain (§3.1), and the result with the
policy that applies (p= or sp=, pct=, §6.6.4). Must not: verify SPF or DKIM (their modules do)
or decide what to do with the message (inbound.py does).

A result is `temperror` rather than `fail` when no aligned identifier passed and one that could
have (an aligned SPF or DKIM domain) failed temporarily: the same message may pass on a retry.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from mailgate.auth.dkim_verify import DkimResult
from mailgate.auth.spf import SpfResult
from mailgate.dns.resolver import DnsNoSuchDomain, Resolver

POLICIES = ("none", "quarantine", "reject")


class OrganizationalDomains:
    """The organizational domain (RFC 7489 §3.2) by the Public Suffix List."""

    def __init__(self, list_file: str = "") -> None:
        if list_file:
            with open(list_file, "rb") as source:
                self._psl = PublicSuffixList(source)
        else:
            self._psl = PublicSuffixList()

    def of(self, domain: str) -> str:
        return self._psl.privatesuffix(domain) or domain


@dataclass(frozen=True)
class DmarcRecord:
    domain: str  # where it was found
    p: str
    sp: str
    adkim: str  # r | s
    aspf: str
    pct: int


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass | fail | none | temperror | permerror
    header_from: str
    policy: str = "none"  # the p= or sp= that applies ("none" without a record)
    disposition: str = "none"  # what the policy asks after pct=: none | quarantine | reject
    aligned_pass: bool = False  # an aligned SPF or DKIM pass, with or without a record
    reason: str = ""


def parse_record(text: str, domain: str) -> DmarcRecord | None:
    """The record, or None when `text` is not a DMARC record (RFC 7489 §6.3, §6.6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    first = text.split(";", 1)[0].replace(" ", "")
    if first != "v=DMARC1":
        return None  # §6.3: v= must come first and be exactly DMARC1
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "rua" not in tags:
            return None
        p = "none"  # §6.6.3: a bad p= with a valid rua= is read as p=none
    sp = tags.get("sp", "").lower()
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(
        domain, p, sp if sp in POLICIES else p,
        "s" if tags.get("adkim", "r").lower() == "s" else "r",
        "s" if tags.get("aspf", "r").lower() == "s" else "r", pct,
    )


async def find_record(resolver: Resolver, domain: str, organizational: str) -> DmarcRecord | None:
    """The policy for `domain`; DnsTemporaryError when it cannot be known now."""
    for name in dict.fromkeys((domain, organizational)):
        try:
            texts = await resolver.txt(f"_dmarc.{name}")
        except DnsNoSuchDomain:
            texts = []
        records = [r for r in (parse_record(t, name) for t in texts) if r is not None]
        if len(records) == 1:
            return records[0]
        if len(records) > 1:
            return None  # §6.6.3 step 3: several records, no DMARC processing
    return None


def aligned(identifier: str, header_from: str, mode: str, orgs: OrganizationalDomains) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict is the same domain; relaxed the same organizational domain."""
    identifier, header_from = identifier.lower().rstrip("."), header_from.lower().rstrip(".")
    if not identifier:
        return False
    if identifier == header_from:
        return True
    return mode == "r" and orgs.of(identifier) == orgs.of(header_from)


def evaluate(
    header_from: str, record: DmarcRecord | None, spf: SpfResult, signatures: Iterable[DkimResult],
    orgs: OrganizationalDomains, chance: float | None = None,
) -> DmarcResult:
    """The DMARC result of one From: domain. `chance` in [0, 1) stands in for pct='s dice."""
    aspf = record.aspf if record else "r"
    adkim = record.adkim if record else "r"
    spf_aligned = aligned(spf.domain, header_from, aspf, orgs)
    dkim_aligned = [s for s in signatures if aligned(s.domain, header_from, adkim, orgs)]
    passed = (spf_aligned and spf.result == "pass") or any(s.result == "pass" for s in dkim_aligned)
    temporary = (spf_aligned and spf.result == "temperror") or any(s.result == "temperror" for s in dkim_aligned)
    if record is None:
        return DmarcResult("none", header_from, aligned_pass=passed,
                           reason="" if passed else ("temperror" if temporary else "no aligned pass"))
    policy = record.p if record.domain == header_from else record.sp
    if passed:
        return DmarcResult("pass", header_from, policy, "none", True)
    if temporary:
        return DmarcResult("temperror", header_from, policy, "none", False, "an aligned check failed temporarily")
    disposition = policy
    if record.pct < 100 and (chance if chance is not None else random.random()) * 100 >= record.pct:
        # §6.6.4: outside the sampled percentage the next weaker policy applies.
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
    return DmarcResult("fail", header_from, policy, disposition, False, "no aligned SPF or DKIM pass")
