"""Inbound checks of mail from outside: SPF, DKIM and DMARC together, and what to do about them.

Owns: running the checks of one message side by side (SPF of MAIL FROM and of HELO and DKIM in
worker threads, DMARC policy discovery on the loop), the verdict from their results under the
configured policy, and the Authentication-Results field recording them. The policy, strongest
action first:
- more than one From: field (RFC 5322 §3.6 allows one; two is how DKIM and DMARC are fooled):
  550 5.7.1;
- a From: domain that publishes DMARC `p=reject` fails: `dmarc_reject_action` (550 5.7.1 by
  default), `p=quarantine`: `dmarc_quarantine_action` (held in the queue by default);
- a From: in a hosted domain without an aligned SPF or DKIM pass (CEO fraud: only the
  organisation's own servers may use its domains, and they are not "outside"): 550 5.7.1,
  whether or not the domain publishes DMARC (`protect_hosted_domains`);
- DMARC temperror where a policy would apply (a published reject/quarantine, or a hosted
  domain): 451 4.4.3, the sender retries, never a pass (`dmarc_temperror_action`);
- SPF `fail` of MAIL FROM when DMARC did not pass: `spf_fail_action` (tag by default; RFC 7489
  §10.1: rejecting on SPF alone before DMARC breaks forwarded mail that DKIM would save).
A valid ARC chain (RFC 8617) whose most recent sealer is listed in `arc_trusted_sealers` (a
mailing list or forwarder the admin trusts to have checked the original) lifts the DMARC and
hosted-domain actions (RFC 8617 §7.2, local policy); the header says so. With a sealing key, the
message leaves with our ARC set over our results (after the screener, so a stripped message
carries what we saw before stripping).
Must not: verify anything itself (spf.py, dkim_verify.py, dmarc.py do) or touch the spool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from mailgate.auth import results as ar
from mailgate.auth.arc import seal, verify_chain
from mailgate.auth.dkim_keys import DkimKey
from mailgate.auth.dkim_verify import DEFAULT_MAX_SIGNATURES, DkimResult, verify_all
from mailgate.auth.dmarc import DmarcResult, OrganizationalDomains, evaluate, find_record
from mailgate.auth.dns_cache import ThreadLookups
from mailgate.auth.headers import from_domains, head_of
from mailgate.auth.message import ACCEPT, QUARANTINE, REJECT, TAG, TEMPFAIL, InboundVerdict, Origin
from mailgate.auth.spf import DEFAULT_TIME_LIMIT, SpfResult, check_spf
from mailgate.core.reply import Reply
from mailgate.dns.resolver import DnsTemporaryError, Resolver

# Replies (RFC 3463 / RFC 7372 enhanced codes), shared with the tests.
DMARC_REJECTED = Reply(550, "5.7.1", "Message refused: DMARC policy of {domain} (reject), no aligned SPF or DKIM pass")
HOSTED_FORGED = Reply(550, "5.7.1", "Message refused: From: {domain} is our own domain, and this is not our server")
MULTIPLE_FROM = Reply(550, "5.7.1", "Message refused: more than one From: header field (RFC 5322 §3.6)")
SPF_REJECTED = Reply(550, "5.7.23", "Message refused: SPF of {domain} fails for {client}")  # RFC 7372 §3.2
DMARC_TEMPORARY = Reply(451, "4.4.3", "Sender authentication of {domain} cannot be checked now; try again later")

STRENGTH = {ACCEPT: 0, TAG: 1, QUARANTINE: 2, TEMPFAIL: 3, REJECT: 4}


@dataclass(frozen=True)
class InboundSettings:
    authserv_id: str
    spf_fail_action: str = TAG  # accept | tag | quarantine | reject
    dmarc_reject_action: str = REJECT  # reject | quarantine | tag
    dmarc_quarantine_action: str = QUARANTINE  # quarantine | tag | reject
    dmarc_temperror_action: str = TEMPFAIL  # tempfail | accept
    protect_hosted_domains: bool = True
    tag_header: str = "X-Mailgate-Tag"
    max_signatures: int = DEFAULT_MAX_SIGNATURES
    spf_time_limit: float = DEFAULT_TIME_LIMIT
    lookup_timeout: float = 10.0  # one look-up asked from a worker thread
    arc_trusted_sealers: frozenset[str] = frozenset()
    arc_seal_key: DkimKey | None = None


@dataclass
class _Outcome:
    action: str = ACCEPT
    reply: Reply | None = None
    rule: str = ""
    reason: str = ""

    def consider(self, action: str, rule: str, reason: str, reply: Reply | None = None) -> None:
        if STRENGTH[action] > STRENGTH[self.action]:
            self.action, self.rule, self.reason = action, rule, reason
            self.reply = reply if action in (REJECT, TEMPFAIL) else None


class InboundChecker:
    def __init__(self, settings: InboundSettings, resolver: Resolver, orgs: OrganizationalDomains,
                 is_hosted: Callable[[str], bool]) -> None:
        self.settings = settings
        self.resolver = resolver  # a CachingResolver
        self.orgs = orgs
        self.is_hosted = is_hosted

    async def check(self, message: bytes, origin: Origin, executor: Executor) -> InboundVerdict:
        settings = self.settings
        from_count, domains = from_domains(head_of(message))
        if from_count > 1:
            return InboundVerdict(REJECT, MULTIPLE_FROM, "from-header", "more than one From: field",
                                  "dmarc=permerror (more than one From: field)")
        loop = asyncio.get_running_loop()
        lookups = ThreadLookups(self.resolver, loop, settings.lookup_timeout)
        spf_args = (lookups, origin.client_address)
        mail_from, helo, signatures, arc = await asyncio.gather(
            loop.run_in_executor(executor, check_spf, *spf_args, "mailfrom", origin.mail_from, origin.helo,
                                 settings.spf_time_limit),
            loop.run_in_executor(executor, check_spf, *spf_args, "helo", "", origin.helo, settings.spf_time_limit),
            loop.run_in_executor(executor, verify_all, message, lookups, settings.max_signatures),
            loop.run_in_executor(executor, verify_chain, message, lookups),
        )
        dmarc = [await self._dmarc(domain, mail_from, signatures) for domain in dict.fromkeys(domains) if domain]
        trusted_chain = arc.result == "pass" and arc.sealer in settings.arc_trusted_sealers
        outcome = self._decide(origin, mail_from, [] if trusted_chain else dmarc)
        override = f"policy not applied: ARC sealed by trusted {arc.sealer}" if trusted_chain else ""
        resinfos = [
            ar.spf_resinfo(mail_from.result, "mailfrom", mail_from.subject or "<>", mail_from.explanation),
            ar.spf_resinfo(helo.result, "helo", helo.subject or "unknown", helo.explanation),
            *([ar.dkim_resinfo(s) for s in signatures] or ["dkim=none"]),
            *([ar.dmarc_resinfo(d, override if d.result != "pass" else "") for d in dmarc]
              or ["dmarc=none (no From: domain)"]),
            ar.arc_resinfo(arc.result, arc.instance, arc.sealer, origin.client_address),
        ]
        extra = ((settings.tag_header, outcome.reason),) if outcome.action == TAG else ()
        return InboundVerdict(outcome.action, outcome.reply, outcome.rule, outcome.reason,
                              ";\r\n\t".join(resinfos), extra)

    async def _dmarc(self, domain: str, spf: SpfResult, signatures: list[DkimResult]) -> DmarcResult:
        try:
            record = await find_record(self.resolver, domain, self.orgs.of(domain))
        except DnsTemporaryError as exc:
            return DmarcResult("temperror", domain, reason=f"policy lookup: {exc}")
        return evaluate(domain, record, spf, signatures, self.orgs)

    def _decide(self, origin: Origin, spf: SpfResult, dmarc: list[DmarcResult]) -> _Outcome:
        settings, outcome = self.settings, _Outcome()
        for result in dmarc:
            domain = result.header_from
            hosted = settings.protect_hosted_domains and (self.is_hosted(domain) or self.is_hosted(self.orgs.of(domain)))
            if result.result == "fail" and result.disposition in ("reject", "quarantine"):
                action = settings.dmarc_reject_action if result.disposition == "reject" else settings.dmarc_quarantine_action
                outcome.consider(action, "dmarc", f"dmarc=fail (p={result.policy}) header.from={domain}",
                                 _format(DMARC_REJECTED, domain=domain))
            if result.result == "temperror" and (hosted or result.policy in ("reject", "quarantine")):
                if settings.dmarc_temperror_action == TEMPFAIL:
                    outcome.consider(TEMPFAIL, "dmarc", f"dmarc=temperror header.from={domain}",
                                     _format(DMARC_TEMPORARY, domain=domain))
            if hosted and not result.aligned_pass and result.result != "temperror":
                if result.reason == "temperror":  # no record, and the checks could not finish
                    if settings.dmarc_temperror_action == TEMPFAIL:
                        outcome.consider(TEMPFAIL, "hosted-from", f"hosted From: {domain}, checks failed temporarily",
                                         _format(DMARC_TEMPORARY, domain=domain))
                else:
                    outcome.consider(REJECT, "hosted-from", f"forged From: {domain} (hosted domain) from outside",
                                     _format(HOSTED_FORGED, domain=domain))
        dmarc_passed = any(result.result == "pass" for result in dmarc)
        if spf.result == "fail" and not dmarc_passed and settings.spf_fail_action != ACCEPT:
            outcome.consider(settings.spf_fail_action, "spf", f"spf=fail smtp.mailfrom={spf.subject}",
                             _format(SPF_REJECTED, domain=spf.domain, client=origin.client_address))
        return outcome

    async def finish(self, message: bytes, verdict: InboundVerdict, executor: Executor) -> bytes:
        """The message with forged copies of our results removed, ours (and a tag) on top, and
        our ARC set above them when sealing is on."""
        settings = self.settings
        cleaned = ar.remove_ours(message, settings.authserv_id)
        top = ar.header_field(settings.authserv_id, [verdict.results] if verdict.results else [])
        for name, value in verdict.extra_headers:
            top += f"{name}: {value}\r\n".encode("utf-8", "replace")
        annotated = top + cleaned
        if settings.arc_seal_key is None:
            return annotated
        loop = asyncio.get_running_loop()
        arc_set = await loop.run_in_executor(executor, seal, annotated, settings.arc_seal_key, settings.authserv_id)
        return arc_set + annotated


def _format(reply: Reply, **values: str) -> Reply:
    return Reply(reply.code, reply.enhanced, reply.text.format(**values))
