"""`mailgate explain`: the server's answer to a hypothetical transaction, rule by rule.

Owns: the arguments, building the policy, resolver and limits from the configuration exactly as
the server does (`app.policy_settings`, the users file for sender ownership, `dns` settings for
DNSBL, the listener's AUTH mode and size limit), and the text and JSON output.
Must not: decide anything (tools/explain.py walks the real policy code).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mailgate.cli.config_option import add_configured_parser, with_config

if TYPE_CHECKING:
    from mailgate.config.loader import Config
    from mailgate.tools.explain import Explanation, Hypothetical, Step

EPILOG = """examples:
  mailgate explain --client 203.0.113.5 --from a@example.org --to b@example.com
  mailgate explain --config /etc/mailgate/mailgate.toml --client 10.0.0.7 \\
      --from app@corp.example --to x@example.net --to y@corp.example --size 2000000
  mailgate explain --client 198.51.100.9 --user alice --listener submission \\
      --from alice@corp.example --to bob@example.net --json

Per recipient it prints the reply, the rule that decided and the chain of rules consulted, in
order (permit / reject / dunno = no opinion / noted). DNSBL zones from the configuration are
queried unless --no-dnsbl; a hosted recipient the rules permit is looked up in its domain's
recipient sources (shown in the chain, with "(cache)" when a cache answered) unless
--no-recipient-sources. --user assumes that AUTH succeeded (inside TLS) as that user.

exit codes: 0 every recipient would be accepted, 1 at least one would be refused,
  2 usage or configuration error"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_configured_parser(
        commands, "explain", epilog=EPILOG, help="what the policy would answer to a hypothetical transaction, and why",
        description="Run the real relay policy on a hypothetical transaction.",
    )
    parser.add_argument("--client", required=True, metavar="IP", help="the client's IP address")
    parser.add_argument("--helo", default="", help="the client's EHLO name")
    parser.add_argument("--user", help="assume the client authenticated as USER")
    parser.add_argument("--from", dest="mail_from", required=True, metavar="ADDRESS",
                        help='envelope sender ("" for the null sender <>)')
    parser.add_argument("--to", dest="recipients", action="append", required=True, metavar="ADDRESS",
                        help="envelope recipient (repeatable)")
    parser.add_argument("--size", type=int, help="message size declared with SIZE= (octets)")
    parser.add_argument("--listener", help="listener name (default: the first one)")
    parser.add_argument("--no-dnsbl", action="store_true", help="skip the DNSBL look-ups")
    parser.add_argument("--no-recipient-sources", action="store_true",
                        help="do not ask the hosted domains' recipient sources (LDAP, call-ahead, map files)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=explain_command)


class ExplainUsageError(Exception):
    """One line for the operator (a listener, users file or --client that does not work)."""


@with_config("explain")
def explain_command(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    from mailgate.tools.explain import Hypothetical

    request = Hypothetical(
        client_ip=args.client, mail_from=args.mail_from.strip("<>"),
        recipients=tuple(r.strip("<>") for r in args.recipients), helo=args.helo, user=args.user,
        size=args.size,
    )
    try:
        result = asyncio.run(explain_with_config(config, request, args.listener, dnsbl=not args.no_dnsbl,
                                                 recipient_sources=not args.no_recipient_sources))
    except ExplainUsageError as exc:
        print(f"mailgate explain: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(render(result))
    return 0 if result.all_accepted else 1


async def explain_with_config(config, request: Hypothetical, listener_name: str | None = None, *, dnsbl: bool = True,
                        recipient_sources: bool = True) -> Explanation:
    """The explanation `mailgate explain` prints (the web console's form calls it too);
    ExplainUsageError for a listener, users file, recipient source or client that does not work."""
    from mailgate.app_config import StartupError, policy_settings, recipient_validation
    from mailgate.auth.store import FileUserStore, UserStoreError
    from mailgate.config.loader import effective_auth
    from mailgate.dns.resolver import DnsPythonResolver
    from mailgate.policy.relay import RelayPolicy
    from mailgate.tools.explain import SessionLimits, explain

    listeners = [l for l in config.listener if listener_name in (None, l.name)]
    if not listeners:
        names = ", ".join(l.name for l in config.listener)
        raise ExplainUsageError(f"no listener named {listener_name!r} (have: {names})")
    listener = listeners[0]
    try:
        users = FileUserStore(config.server.users_file)
    except UserStoreError as exc:
        raise ExplainUsageError(f"server.users_file: {exc}") from None
    policy = RelayPolicy(policy_settings(config), allowed_senders=users.allowed_senders)
    limits = SessionLimits(
        hostname=config.server.hostname,
        auth=effective_auth(listener),
        max_message_size=listener.max_message_size or config.server.max_message_size,
        max_recipients=config.server.max_recipients,
    )
    zones = tuple(config.dns.dnsbl_zones) if dnsbl else ()
    resolver = DnsPythonResolver(list(config.dns.nameservers) or None, config.dns.port, config.dns.timeout) if zones else None
    try:
        sources = recipient_validation(config) if recipient_sources else None
    except StartupError as exc:
        raise ExplainUsageError(str(exc)) from None
    try:
        result = await explain(policy, request, limits, resolver=resolver, dnsbl_zones=zones,
                               recipient_sources=sources)
    except ValueError as exc:
        raise ExplainUsageError(f"--client {request.client_ip}: {exc}") from None
    finally:
        if sources is not None:
            sources.close()
    if request.user and request.user.lower() not in {name for name, _ in users.list()}:
        result.notes.append(f"user {request.user!r} is not in {config.server.users_file}: AUTH would fail (535 5.7.8)")
    result.notes.insert(0, f"configuration: {config.source}; listener {listener.name} ({listener.profile})")
    return result


def _chain(step: Step) -> str:
    return " -> ".join(f"{rule}:{verdict}" for rule, verdict in step.chain)


def render(result: Explanation) -> str:
    lines = [f"# {note}" for note in result.notes]
    lines.append(f"client {result.client}")
    for step in result.steps:
        state = "ok" if step.permitted else "REFUSED"
        lines.append(f"  {step.stage:<10} {step.subject}: {state}, {step.reply}  [rule {step.rule}]")
        lines.append(f"  {'':<10} chain: {_chain(step)}")
    for step in result.recipients:
        state = "accepted" if step.permitted else "REFUSED"
        lines.append(f"RCPT TO:{step.subject}")
        lines.append(f"  {state}: {step.reply}")
        lines.append(f"  decided by: {step.rule} (at {step.stage})")
        lines.append(f"  chain: {_chain(step)}")
    return "\n".join(lines)
