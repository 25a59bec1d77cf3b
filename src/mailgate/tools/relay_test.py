"""The open-relay test of any SMTP server: every relay trick, a transcript each, and a verdict.

Owns: learning the server's name (EHLO), address (the connected socket) and, without a given
domain, a domain it hosts (the parent of its name whose postmaster it accepts), rendering the trick
table of `policy.tricks` for it, trying each form on its own connection (greeting, EHLO or HELO,
MAIL, RCPT, then RSET and QUIT: it NEVER sends DATA, so no message reaches anyone), classifying
each attempt and the verdict. Used by `mailgate relay-test` and the start-up self-audit.
Must not: print (the CLI renders reports), know what mailgate itself would answer, or judge
which forms "should" be accepted: a 2xx to RCPT is relaying, whatever the form.

Classification of one attempt:
  ACCEPTED  RCPT answered 2xx (RFC 5321 §4.2.1 positive completion): the server relays that form.
  LOCAL     RCPT answered 2xx for a plain address (no routing characters, no source route) in the
            hosted domain or one of its subdomains: delivery inside the admin's own domain tree
            (Postfix relays subdomains of relay_domains by default), not relaying to a third party.
  REFUSED   MAIL or RCPT answered 5xx: permanently refused.
  TEMPFAIL  4xx to greeting, MAIL or RCPT: no answer now (greylisting, Postfix's 454 "Relay access
            denied" under defer_unauth_destination, rate limits).
  UNTESTED  the form could not be tried: connection refused or lost, time-out, 5xx greeting (the
            server refuses us, RFC 5321 §3.1), EHLO and HELO both refused.
Verdict: OPEN if any form was ACCEPTED; else CLOSED if every form was REFUSED or LOCAL; else
INCONCLUSIVE.
Each form has its own connection: a server counting bad commands (RFC 5321 §4.1.1.x error budgets)
would otherwise disconnect half-way and hide the later forms.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum

from mailgate.core.address import AddressError, normalise_domain, parse_path
from mailgate.core.reply import Reply
from mailgate.policy.tricks import RenderedTrick, render_all
from mailgate.tools.conversation import (
    DEFAULT_TIMEOUT, Conversation, ConversationError, insecure_client_context,
)
from mailgate.tools.options import RELAY_TEST_HELO, RELAY_TEST_TARGET

CUSTOM_FORM = "given_addresses"


class Outcome(str, Enum):
    ACCEPTED = "accepted"
    LOCAL = "local"
    REFUSED = "refused"
    TEMPFAIL = "tempfail"
    UNTESTED = "untested"


class Verdict(str, Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"
    INCONCLUSIVE = "INCONCLUSIVE"

    @property
    def exit_code(self) -> int:
        """Documented in `mailgate relay-test --help`: 0 closed, 1 open, 3 inconclusive."""
        return {Verdict.CLOSED: 0, Verdict.OPEN: 1, Verdict.INCONCLUSIVE: 3}[self]


@dataclass(frozen=True)
class RelayTestSettings:
    host: str
    port: int = 25
    target: str = RELAY_TEST_TARGET  # the outside domain the server must not relay to
    mail_from: str | None = None  # with rcpt_to: one extra form, tried first
    rcpt_to: str | None = None
    hosted: str | None = None  # a domain the server hosts; default: learnt from its answers
    helo: str = RELAY_TEST_HELO
    source_address: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    implicit_tls: bool = False


@dataclass
class Attempt:
    form: RenderedTrick
    outcome: Outcome
    stage: str  # connect | greeting | hello | mail | rcpt
    reply: str  # the deciding reply as text, or the error
    transcript: list[str] = field(default_factory=list)


@dataclass
class RelayTestReport:
    host: str
    port: int
    server_address: str = ""
    server_name: str = ""
    target: str = ""
    hosted: str = ""
    hosted_from: str = ""  # "--domain" or "EHLO name": a guess the verdict must own up to
    attempts: list[Attempt] = field(default_factory=list)
    problem: str = ""  # why nothing could be tried (discovery failed)

    @property
    def verdict(self) -> Verdict:
        return verdict_of([attempt.outcome for attempt in self.attempts])

    @property
    def accepted(self) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.outcome is Outcome.ACCEPTED]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


def verdict_of(outcomes: list[Outcome]) -> Verdict:
    if Outcome.ACCEPTED in outcomes:
        return Verdict.OPEN
    if outcomes and all(outcome in (Outcome.REFUSED, Outcome.LOCAL) for outcome in outcomes):
        return Verdict.CLOSED
    return Verdict.INCONCLUSIVE


def classify_reply(reply: Reply) -> Outcome:
    """The outcome a refusal reply at greeting, MAIL or RCPT gives (module docstring)."""
    if reply.is_positive:
        return Outcome.ACCEPTED
    return Outcome.TEMPFAIL if reply.is_transient else Outcome.REFUSED


Progress = Callable[[int, int, Attempt], None]
HOSTED_GIVEN, HOSTED_ANSWERED, HOSTED_GUESSED = "--domain", "server's answers", "EHLO name"


async def run_relay_test(
    settings: RelayTestSettings, progress: Progress | None = None
) -> RelayTestReport:
    """Try every form against `settings.host`; `progress(done, total, attempt)` after each."""
    report = RelayTestReport(settings.host, settings.port, target=_target(settings))
    try:
        report.server_address, report.server_name = await _discover(settings)
    except ConversationError as exc:
        report.problem = str(exc)
        return report
    if settings.hosted:
        report.hosted, report.hosted_from = settings.hosted, HOSTED_GIVEN
    else:
        answered = await _hosted_from_answers(settings, report.server_name, report.target)
        report.hosted = answered or report.server_name
        report.hosted_from = HOSTED_ANSWERED if answered else HOSTED_GUESSED
    forms = forms_for(settings, report)
    for index, form in enumerate(forms, start=1):
        attempt = await try_form(settings, form, report.hosted)
        report.attempts.append(attempt)
        if progress is not None:
            progress(index, len(forms), attempt)
    return report


def _target(settings: RelayTestSettings) -> str:
    if settings.rcpt_to and "@" in settings.rcpt_to:
        return settings.rcpt_to.rsplit("@", 1)[1].strip("<>")
    return settings.target


def forms_for(settings: RelayTestSettings, report: RelayTestReport) -> list[RenderedTrick]:
    """Every trick of the table for this server, the --from/--to pair first when given."""
    forms = render_all(
        target=report.target, relay_host=report.server_name or settings.host,
        relay_ip=report.server_address, hosted=report.hosted,
    )
    if settings.mail_from or settings.rcpt_to:
        sender = settings.mail_from if settings.mail_from is not None else f"relaytest@{report.target}"
        recipient = settings.rcpt_to or f"relaytest@{report.target}"
        custom = RenderedTrick(
            CUSTOM_FORM, _bracket(sender), _bracket(recipient),
            not (sender + recipient).isascii(), "the --from/--to pair",
        )
        forms.insert(0, custom)
    return forms


def _bracket(path: str) -> str:
    return path if path.startswith("<") else f"<{path}>"


def _tls(settings: RelayTestSettings) -> ssl.SSLContext | None:
    return insecure_client_context() if settings.implicit_tls else None


async def _open(settings: RelayTestSettings) -> Conversation:
    return await Conversation.open(
        settings.host, settings.port, timeout=settings.timeout,
        source_address=settings.source_address, implicit_tls=_tls(settings),
    )


async def _discover(settings: RelayTestSettings) -> tuple[str, str]:
    """(server IP, server name): the name from the EHLO reply, as nmap reads it, else the banner."""
    conversation = await _open(settings)
    try:
        greeting = await conversation.reply()
        name = _first_word(greeting.text)
        if greeting.code == 220:
            ehlo = await conversation.command(f"EHLO {settings.helo}")
            if ehlo.is_positive and _first_word(ehlo.text):
                name = _first_word(ehlo.text)
        address = conversation.peer_address
    finally:
        await conversation.quit()
    return address, _plausible_name(name, address)


def parent_domains(name: str) -> list[str]:
    """`mx1.mail.example.com` -> [`mail.example.com`, `example.com`]: where the server's own name
    suggests its hosted domain might be, nearest first (never a top-level domain alone)."""
    labels = name.rstrip(".").split(".")
    if name.startswith("[") or len(labels) < 3:
        return []
    return [".".join(labels[index:]) for index in range(1, len(labels) - 1)]


async def _hosted_from_answers(settings: RelayTestSettings, server_name: str, target: str) -> str | None:
    """The first parent domain of the server's name whose postmaster it accepts while refusing
    postmaster at the outside target (one connection, MAIL FROM:<>, two RCPTs, RSET: never DATA).
    Every server must accept postmaster of the domains it hosts (RFC 5321 §4.5.1)."""
    for candidate in parent_domains(server_name):
        try:
            conversation = await _open(settings)
        except ConversationError:
            return None
        try:
            if (await conversation.reply()).code != 220:
                return None
            if not (await conversation.command(f"EHLO {settings.helo}")).is_positive:
                return None
            if not (await conversation.command("MAIL FROM:<>")).is_positive:
                return None
            hosted = (await conversation.command(f"RCPT TO:<postmaster@{candidate}>")).is_positive
            outside = (await conversation.command(f"RCPT TO:<postmaster@{target}>")).is_positive
            await conversation.command("RSET")
        except ConversationError:
            return None
        finally:
            await conversation.quit()
        if hosted and not outside:
            return candidate
    return None


def _first_word(text: str) -> str:
    words = text.split("\n")[0].split()
    return words[0] if words else ""


def _plausible_name(name: str, address: str) -> str:
    """A usable host name for the templates; the address itself when the server gave none."""
    if name and all(char.isascii() and (char.isalnum() or char in "-._") for char in name):
        return name.rstrip(".")
    literal = ipaddress.ip_address(address)
    return f"[{literal}]" if literal.version == 4 else f"[IPv6:{literal}]"


async def try_form(settings: RelayTestSettings, form: RenderedTrick, hosted: str | None = None) -> Attempt:
    """One form on its own connection; never sends DATA (RSET after RCPT, then QUIT). `hosted`
    is the domain whose tree counts as local (Outcome.LOCAL)."""
    try:
        conversation = await _open(settings)
    except ConversationError as exc:
        return Attempt(form, Outcome.UNTESTED, "connect", str(exc))
    try:
        return await _dialogue(settings, form, hosted, conversation)
    except ConversationError as exc:
        conversation.note(str(exc))
        return Attempt(form, Outcome.UNTESTED, "connection", str(exc), conversation.transcript)
    finally:
        await conversation.quit()


async def _dialogue(
    settings: RelayTestSettings, form: RenderedTrick, hosted: str | None, conversation: Conversation
) -> Attempt:
    def attempt(outcome: Outcome, stage: str, reply: Reply) -> Attempt:
        return Attempt(form, outcome, stage, str(reply), conversation.transcript)

    greeting = await conversation.reply()
    if greeting.code != 220:
        outcome = Outcome.TEMPFAIL if greeting.is_transient else Outcome.UNTESTED
        return attempt(outcome, "greeting", greeting)
    hello = await conversation.command(f"EHLO {settings.helo}")
    if not hello.is_positive:
        hello = await conversation.command(f"HELO {settings.helo}")  # RFC 5321 §3.2 fallback
        if not hello.is_positive:
            return attempt(Outcome.UNTESTED, "hello", hello)
    parameter = " SMTPUTF8" if form.smtputf8 else ""  # RFC 6531 §3.4
    mail = await conversation.command(f"MAIL FROM:{form.mail_from}{parameter}")
    if not mail.is_positive:
        return attempt(classify_reply(mail), "mail", mail)
    rcpt = await conversation.command(f"RCPT TO:{form.rcpt_to}")
    await conversation.command("RSET")  # never DATA: nothing is sent to anyone
    outcome = classify_reply(rcpt)
    if outcome is Outcome.ACCEPTED and inside_hosted_tree(form.rcpt_to, hosted):
        outcome = Outcome.LOCAL
    return attempt(outcome, "rcpt", rcpt)


def inside_hosted_tree(path: str, hosted: str | None) -> bool:
    """A plain mailbox (strictly parsed) at `hosted` or a subdomain of it: see Outcome.LOCAL."""
    if not hosted:
        return False
    try:
        address, _ = parse_path(path, allow_null=False, smtputf8=True)
        domain = normalise_domain(hosted)
    except AddressError:
        return False
    if address is None or address.literal or address.had_source_route or address.has_routing_characters:
        return False
    return address.domain == domain or address.domain.endswith("." + domain)

