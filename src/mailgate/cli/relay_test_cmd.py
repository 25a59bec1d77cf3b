"""`mailgate relay-test HOST[:PORT]`: the open-relay test of any SMTP server, ours or another's.

Owns: the arguments, progress on stderr, the text and JSON reports and the exit code.
Must not: speak SMTP or classify replies (tools/relay_test.py does).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mailgate.policy.tricks import TRICKS
from mailgate.tools.options import RELAY_TEST_HELO, RELAY_TEST_TARGET

if TYPE_CHECKING:
    from mailgate.tools.relay_test import Attempt, RelayTestReport

USAGE_ERROR = 2

EPILOG = f"""It tries {len(TRICKS)} relay forms (the 16 of nmap's smtp-open-relay script, percent hack,
bang paths, source routes, quoted local parts, IP literals, trailing dots, case and IDN forms),
each on its own connection: greeting, EHLO, MAIL FROM, RCPT TO, then RSET and QUIT.
It NEVER sends DATA: no message reaches anyone, whatever the server answers.
A 2xx reply to RCPT means the server relays that form; a plain address inside the --domain
tree (e.g. a subdomain) accepted with 2xx is reported "local", not as relaying.

examples:
  mailgate relay-test mx.example.com
  mailgate relay-test 192.0.2.10:2525 --domain example.com
  mailgate relay-test mx.example.com --to postmaster@example.net --verbose
  mailgate relay-test 127.0.0.1:25 --source-address 127.0.0.2 --json > report.json

exit codes:
  0  CLOSED        every form was refused permanently (5xx) or was local
  1  OPEN          at least one form was accepted; they are named
  2  usage error
  3  INCONCLUSIVE  the server could not be reached, or answered some forms only with 4xx
                   (greylisting, "454 Relay access denied") or not at all"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "relay-test", help="test whether an SMTP server is an open relay (never sends a message)",
        description="Open-relay test of HOST[:PORT] (port 25 by default).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("server", metavar="HOST[:PORT]", help="server to test; IPv6 as [addr]:port")
    parser.add_argument("--to", dest="rcpt_to", metavar="ADDRESS",
                        help=f"outside recipient; its domain is the target of every form "
                             f"(default relaytest@{RELAY_TEST_TARGET})")
    parser.add_argument("--from", dest="mail_from", metavar="ADDRESS",
                        help="sender for one extra form tried first, with --to")
    parser.add_argument("--domain", metavar="DOMAIN",
                        help="a domain the server hosts, for the hosted-domain forms; without it, "
                             "the parent domain of its EHLO name whose postmaster it accepts, else "
                             "the EHLO name itself (the verdict says which)")
    parser.add_argument("--helo", default=RELAY_TEST_HELO, help=f"EHLO name (default {RELAY_TEST_HELO})")
    parser.add_argument("--source-address", metavar="IP", help="local address to connect from")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per reply (default 30)")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (port 465)")
    parser.add_argument("--json", action="store_true", help="the full report, transcripts included, as JSON")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="progress on stderr even when it is not a terminal; every transcript")
    parser.set_defaults(handler=relay_test_command)


def relay_test_command(args: argparse.Namespace) -> int:
    import asyncio

    from mailgate.config.types import parse_host_port
    from mailgate.tools.relay_test import RelayTestSettings, run_relay_test

    try:
        host, port = parse_host_port(args.server, 25)
    except ValueError as exc:
        print(f"mailgate relay-test: {args.server}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if args.timeout <= 0:
        print("mailgate relay-test: --timeout must be positive", file=sys.stderr)
        return USAGE_ERROR
    settings = RelayTestSettings(
        host=host, port=port, mail_from=args.mail_from, rcpt_to=args.rcpt_to, hosted=args.domain,
        helo=args.helo, source_address=args.source_address, timeout=args.timeout,
        implicit_tls=args.implicit_tls,
    )
    show_progress = args.verbose or sys.stderr.isatty()
    report = asyncio.run(run_relay_test(settings, _progress if show_progress else None))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(render(report, transcripts=args.verbose))
    return report.verdict.exit_code


def _progress(done: int, total: int, attempt: Attempt) -> None:
    print(f"[{done}/{total}] {attempt.form.name}: {attempt.outcome.value}", file=sys.stderr, flush=True)


def render(report: RelayTestReport, *, transcripts: bool = False) -> str:
    from mailgate.tools.relay_test import HOSTED_GUESSED, Outcome

    lines = [f"relay test of {report.host}:{report.port}"]
    if report.problem:
        lines += [f"  cannot test: {report.problem}", "", f"verdict: {report.verdict.value}"]
        return "\n".join(lines)
    lines.append(
        f"  server {report.server_name} at {report.server_address}; target domain {report.target}; "
        f"hosted domain {report.hosted} (from the {report.hosted_from})"
    )
    lines.append("")
    width = max(len(attempt.form.name) for attempt in report.attempts)
    for attempt in report.attempts:
        lines.append(
            f"  {attempt.form.name:<{width}}  {attempt.outcome.value:<8}  {attempt.stage:<8}  "
            f"RCPT TO:{attempt.form.rcpt_to}  -> {attempt.reply}"
        )
    counts = {outcome: sum(a.outcome is outcome for a in report.attempts) for outcome in Outcome}
    lines.append("")
    lines.append("  " + ", ".join(f"{count} {outcome.value}" for outcome, count in counts.items()))
    shown = report.accepted if not transcripts else report.attempts
    for attempt in shown:
        lines.append("")
        lines.append(f"--- transcript: {attempt.form.name} ({attempt.form.note})")
        lines.extend(f"  {line}" for line in attempt.transcript)
    lines.append("")
    verdict = report.verdict.value
    if report.accepted:
        verdict += ": accepted " + ", ".join(attempt.form.name for attempt in report.accepted)
    lines.append(f"verdict: {verdict}")
    if report.hosted_from == HOSTED_GUESSED:
        lines.append(f"  note: the hosted-domain forms used {report.hosted}, the server's EHLO name; tricks "
                     "against the domain it really hosts were not tried: rerun with --domain DOMAIN")
    return "\n".join(lines)
