"""`mailgate explain`: what the server would answer to a hypothetical transaction, and why.

Owns: walking one hypothetical session through the same code the server runs, in the session's
order (server/session.py): the client rules (`RelayPolicy.check_client`), the DNSBL check
(`dns.dnsbl.dnsbl_listed`) when zones are configured, the listener's AUTH requirement, MAIL FROM
parsing with its SIZE limit (`smtp.commands.parse_mail`), the sender rules, then for each
recipient RCPT parsing (`smtp.commands.parse_rcpt`), the recipient limit, the recipient rules and,
for a hosted recipient the rules permit, the domain's recipient sources (recipients/: each source
asked shows in the chain with its answer and whether its cache gave it); and collecting, per
recipient, the reply, the rule that decided and the chain of rules consulted.
Must not: decide anything itself (every decision comes from the modules named above), print, or
read the configuration (the CLI builds the policy exactly as app.py does).

A refusal ends the walk where the server would end or refuse it: a refused connection or MAIL
gives every recipient that reply, named after the stage that refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

from mailgate.core.address import Address
from mailgate.core.reply import AUTH_REQUIRED, TOO_MANY_RECIPIENTS, Reply
from mailgate.dns.dnsbl import dnsbl_listed
from mailgate.dns.resolver import Resolver
from mailgate.policy.relay import Client, Decision, RelayPolicy
from mailgate.recipients.source import RecipientValidation
from mailgate.smtp.commands import CommandError, parse_mail, parse_rcpt


@dataclass(frozen=True)
class Hypothetical:
    client_ip: str
    mail_from: str  # "" is the null sender <>
    recipients: tuple[str, ...]
    helo: str = ""
    user: str | None = None  # assumed authenticated (inside TLS) as this user
    size: int | None = None  # declared with SIZE= (RFC 1870)


@dataclass(frozen=True)
class SessionLimits:
    """What the chosen listener and the server apply besides the relay policy."""

    hostname: str
    auth: str  # none | offered | required (the listener's effective AUTH mode)
    max_message_size: int
    max_recipients: int


@dataclass
class Step:
    stage: str  # connection | dnsbl | auth | mail | rcpt
    subject: str
    reply: str
    rule: str
    permitted: bool
    chain: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Explanation:
    client: str
    steps: list[Step] = field(default_factory=list)  # session-wide checks, in order
    recipients: list[Step] = field(default_factory=list)  # one per recipient
    notes: list[str] = field(default_factory=list)

    @property
    def all_accepted(self) -> bool:
        return bool(self.recipients) and all(step.permitted for step in self.recipients)

    def to_dict(self) -> dict:
        data = asdict(self)
        for step in data["steps"] + data["recipients"]:
            step["chain"] = [{"rule": rule, "verdict": verdict} for rule, verdict in step["chain"]]
        data["all_accepted"] = self.all_accepted
        return data


def _from_decision(stage: str, subject: str, decision: Decision) -> Step:
    return Step(stage, subject, str(decision.reply), decision.rule, decision.permitted, list(decision.chain))


def _refusal(stage: str, subject: str, reply: Reply, rule: str) -> Step:
    return Step(stage, subject, str(reply), rule, False, [(rule, "reject")])


def client_of(request: Hypothetical) -> Client:
    """The `Client` the session would build (IPv4-mapped IPv6 judged as IPv4, user lower-cased)."""
    address = ipaddress.ip_address(request.client_ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    user = request.user.lower() if request.user else None
    return Client(address, request.helo, user, tls=user is not None)


async def explain(
    policy: RelayPolicy,
    request: Hypothetical,
    limits: SessionLimits,
    *,
    resolver: Resolver | None = None,
    dnsbl_zones: tuple[str, ...] = (),
    recipient_sources: RecipientValidation | None = None,
) -> Explanation:
    """Walk the hypothetical session; ValueError if `client_ip` is not an IP address."""
    client = client_of(request)
    result = Explanation(str(client.address))
    if request.user and limits.auth == "none":
        result.notes.append("this listener does not offer AUTH; the user is assumed authenticated anyway")
    ended = await _session_checks(policy, client, request, limits, resolver, dnsbl_zones, result)
    sender = None
    if ended is None:
        ended, sender = _mail(policy, client, request, limits, result)
    if ended is not None:
        result.recipients = [
            Step(ended.stage, f"<{recipient}>", ended.reply, ended.rule, False, [(ended.rule, "reject")])
            for recipient in request.recipients
        ]
        return result
    await _recipients(policy, client, sender, request, limits, result, recipient_sources)
    return result


def _needs_smtputf8(request: Hypothetical) -> bool:
    """A client declares SMTPUTF8 when an address is not ASCII (RFC 6531 §3.4)."""
    return not (request.mail_from + "".join(request.recipients)).isascii()


async def _session_checks(
    policy: RelayPolicy, client: Client, request: Hypothetical, limits: SessionLimits,
    resolver: Resolver | None, zones: tuple[str, ...], result: Explanation,
) -> Step | None:
    """Connection-time checks, as Session._admit; the refusing step, or None."""
    step = _from_decision("connection", str(client.address), policy.check_client(client))
    result.steps.append(step)
    if not step.permitted:
        return step
    if zones and resolver is not None:
        listed = await dnsbl_listed(resolver, str(client.address), list(zones))
        if listed:
            zone, reason = listed
            # The reply server/session.py sends (RFC 5321 §3.1: 554 greeting, session ends).
            reply = Reply(554, "5.7.1", f"Client {client.address} listed by {zone}" + (f": {reason}" if reason else ""))
            step = _refusal("dnsbl", str(client.address), reply, f"dnsbl:{zone}")
            result.steps.append(step)
            return step
        result.steps.append(Step("dnsbl", str(client.address), "not listed", "dnsbl", True,
                                 [(f"dnsbl:{zone}", "dunno") for zone in zones]))
    return None


def _mail(
    policy: RelayPolicy, client: Client, request: Hypothetical, limits: SessionLimits, result: Explanation
) -> tuple[Step | None, Address | None]:
    """MAIL FROM as the protocol and Session._mail handle it: (the refusing step or None, the
    parsed sender)."""
    subject = f"<{request.mail_from}>"
    if limits.auth == "required" and client.auth_user is None:
        step = _refusal("auth", subject, AUTH_REQUIRED, "listener_auth_required")  # RFC 4954 §6
        result.steps.append(step)
        return step, None
    argument = subject + (f" SIZE={request.size}" if request.size is not None else "")
    argument += " SMTPUTF8" if _needs_smtputf8(request) else ""
    try:
        mail = parse_mail(
            argument, esmtp=True, max_message_size=limits.max_message_size, eight_bit_mime=True,
            smtputf8=True, dsn=True, auth=limits.auth != "none",
        )
    except CommandError as error:
        rule = "max_message_size" if error.reply.code == 552 else "mail_syntax"
        step = _refusal("mail", subject, error.reply, rule)
        result.steps.append(step)
        return step, None
    step = _from_decision("mail", subject, policy.check_sender(client, mail.sender))
    result.steps.append(step)
    return (None if step.permitted else step), mail.sender


async def _recipients(
    policy: RelayPolicy, client: Client, sender: Address | None, request: Hypothetical,
    limits: SessionLimits, result: Explanation, sources: RecipientValidation | None,
) -> None:
    smtputf8 = _needs_smtputf8(request)
    accepted = 0
    for recipient in request.recipients:
        subject = f"<{recipient}>"
        if accepted >= limits.max_recipients:
            # Session._rcpt: RFC 5321 §4.5.3.1.8, 452 beyond the limit.
            result.recipients.append(_refusal("rcpt", subject, TOO_MANY_RECIPIENTS, "max_recipients"))
            continue
        try:
            parsed = parse_rcpt(subject, esmtp=True, smtputf8=smtputf8, dsn=True,
                                postmaster_domain=limits.hostname)
        except CommandError as error:
            result.recipients.append(_refusal("rcpt", subject, error.reply, "rcpt_syntax"))
            continue
        step = _from_decision("rcpt", subject, policy.check_recipient(client, sender, parsed.address))
        if step.permitted and sources is not None:
            await _ask_sources(policy, sources, parsed.address, step)
        result.recipients.append(step)
        accepted += step.permitted


async def _ask_sources(policy: RelayPolicy, sources: RecipientValidation, address: Address, step: Step) -> None:
    """As Session._rcpt: the hosted domain's sources after the rules permitted; each answer joins
    the chain, and a refusal from them decides."""
    hosted = policy.hosted_name(address)
    verdict = await sources.check(hosted, str(address)) if hosted else None
    if verdict is None:
        return
    for lookup in verdict.lookups:
        answer = lookup.status.value + (" (cache)" if lookup.cached else "") + (f": {lookup.detail}" if lookup.detail else "")
        step.chain.append((f"recipient_source:{lookup.source}", answer))
    step.rule = verdict.rule
    if verdict.reply is not None:
        step.reply, step.permitted = str(verdict.reply), False
