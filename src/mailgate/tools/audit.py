"""The start-up self-audit (`server.self_audit`): the relay-trick table against our own listeners.

Owns: choosing, per listener, the address to connect to and an untrusted loopback source
(127.0.0.2), running `tools.relay_test` against it, and reducing the reports to the forms that
were accepted. app.py calls it after the listeners are bound and before "ready", and refuses to
run when the list is not empty (SPEC R3).
Must not: decide whether to refuse start-up (app.py does), or judge a configuration statically
(policy/audit.py does that before anything is bound).

Source and destination per listener address:
  0.0.0.0 or any IPv4       connect to the listener (0.0.0.0: 127.0.0.1) from 127.0.0.2, a loopback
                            address (RFC 1122 §3.2.1.3: all of 127.0.0.0/8) that is not the usual
                            trusted 127.0.0.1; a listener bound to 127.0.0.2 is tried from 127.0.0.3.
  ::                        a dual-stack socket also accepts IPv4: 127.0.0.1 from 127.0.0.2; if the
                            socket is IPv6-only, the listener is skipped.
  ::1 or another IPv6       skipped: IPv6 has one loopback address (RFC 4291 §2.5.3), so there is no
                            second, untrusted source on this host.
Skipped or inconclusive listeners are logged as warnings, never reported as accepted forms: the
audit proves relaying, it cannot prove its absence where it could not test. Known limit: with
DNSBL zones configured, 127.0.0.2 is the conventional "listed" test address (RFC 5782 §5), so the
listener greets it with 554 and the audit is inconclusive there.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import NamedTuple

from mailgate.tools.relay_test import (
    Outcome, RelayTestReport, RelayTestSettings, Verdict, run_relay_test,
)

log = logging.getLogger("mailgate.audit")

UNTRUSTED_SOURCE = "127.0.0.2"
ALTERNATE_SOURCE = "127.0.0.3"  # when the listener itself is bound to 127.0.0.2
AUDIT_SOURCES = frozenset({UNTRUSTED_SOURCE, ALTERNATE_SOURCE})


class AuditSummary(NamedTuple):
    """One listener's result, for the transaction log: verdict, forms tried, source, why."""

    listener: str
    verdict: str
    forms: int
    source: str
    detail: str
AUDIT_TIMEOUT = 10.0  # seconds per reply; our own listener answers at once or is broken


class AuditTarget(NamedTuple):
    """A bound listener: its configured host, its bound port, and whether it is implicit TLS."""

    host: str
    port: int
    implicit_tls: bool = False


def connection_plan(host: str) -> tuple[str, str] | None:
    """(connect-to, source) for a listener bound to `host`, or None when it cannot be tested."""
    address = ipaddress.ip_address(host.strip("[]"))
    if address.version == 6:
        return ("127.0.0.1", UNTRUSTED_SOURCE) if address.is_unspecified else None
    if address.is_unspecified:
        return "127.0.0.1", UNTRUSTED_SOURCE
    source = ALTERNATE_SOURCE if str(address) == UNTRUSTED_SOURCE else UNTRUSTED_SOURCE
    return str(address), source


async def audit_listener(
    target: AuditTarget, hosted_domain: str | None, summarise: Callable[[AuditSummary], None] = lambda _: None,
) -> RelayTestReport | None:
    """The relay-test report for one listener, or None when it was skipped; `summarise` gets
    the one summary of it either way."""
    listener = f"{target.host}:{target.port}"
    plan = connection_plan(target.host)
    if plan is None:
        log.warning("self-audit: %s skipped (INCONCLUSIVE): no second IPv6 loopback address", listener)
        summarise(AuditSummary(listener, Verdict.INCONCLUSIVE.value, 0, "", "no second IPv6 loopback address"))
        return None
    connect_to, source = plan
    settings = RelayTestSettings(
        host=connect_to, port=target.port, hosted=hosted_domain, source_address=source,
        timeout=AUDIT_TIMEOUT, implicit_tls=target.implicit_tls,
    )
    report = await run_relay_test(settings)
    if report.problem and ":" in target.host:
        log.warning("self-audit: %s skipped (INCONCLUSIVE): IPv6-only socket: %s", listener, report.problem)
        summarise(AuditSummary(listener, Verdict.INCONCLUSIVE.value, 0, source, f"IPv6-only socket: {report.problem}"))
        return None
    detail = ""
    if report.verdict is Verdict.INCONCLUSIVE:
        reasons = sorted({attempt.reply for attempt in report.attempts if attempt.outcome is not Outcome.REFUSED})
        detail = report.problem or "; ".join(reasons[:3])
        log.warning("self-audit: %s INCONCLUSIVE from %s: %s", listener, source, detail)
    else:
        log.info("self-audit: %s %s (%d forms from %s)", listener, report.verdict.value,
                 len(report.attempts), source)
    summarise(AuditSummary(listener, report.verdict.value, len(report.attempts), source, detail))
    return report


async def self_audit(
    listeners: list[tuple[str, int]], hosted_domain: str | None,
    summarise: Callable[[AuditSummary], None] = lambda _: None,
) -> list[str]:
    """Every form any listener accepted from an untrusted loopback source, as
    "LISTENER form-name: MAIL FROM:... RCPT TO:..." lines; [] when none relays.

    Items of `listeners` are (host, port) or `AuditTarget` (host, port, implicit_tls)."""
    accepted: list[str] = []
    for item in listeners:
        target = AuditTarget(*item)
        report = await audit_listener(target, hosted_domain, summarise)
        if report is None:
            continue
        for attempt in report.accepted:
            form = attempt.form
            accepted.append(
                f"{target.host}:{target.port} {form.name}: MAIL FROM:{form.mail_from} "
                f"RCPT TO:{form.rcpt_to} -> {attempt.reply}"
            )
    return accepted
